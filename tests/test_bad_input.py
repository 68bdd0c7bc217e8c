"""Bad input: one line naming the field and the fix, exit code 2, no traceback, and not one file written or changed.

Most cases call :func:`dreamnfsd.app.cli.main` in-process (the checks run before Hydra starts, so nothing else happens);
a few run the real command in a subprocess: the exit code as a shell sees it, ``--debug``, and an empty Hugging Face
cache (``HF_HOME`` is read when huggingface_hub is imported).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest
import torch

from dreamnfsd.app.cli import main
from dreamnfsd.train.checkpoint import save_checkpoint
from tests.conftest import run_cli, tiny_run_overrides

PROMPT = "a red cube"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_pixel_prior):
    """A tmp tree with an output root, a finished-looking run of PROMPT, broken checkpoints and broken priors."""
    root = tmp_path_factory.mktemp("bad_input")
    out = root / "outputs"
    out.mkdir()
    base = tiny_run_overrides(tiny_pixel_prior, out)

    run = out / "a-red-cube" / "20250101-000000"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in [f"prompt={PROMPT}", *base]))
    from omegaconf import OmegaConf

    from dreamnfsd.app.compose import compose

    config = OmegaConf.to_container(compose([f"prompt={PROMPT}", *base]), resolve=True)
    state = {"step": 4, "prompt": PROMPT, "config": config, "scene": {}, "optimizer": {}}
    save_checkpoint(state, run, 4)
    real = io.BytesIO()
    torch.save({**state, "scene": {"w": torch.zeros(4096)}}, real)

    # A run trained on CUDA with tiny-cuda-nn: its field state holds tcnn's flat parameter vector, and says so.
    tcnn_run = out / "a-red-cube" / "20250101-000001"
    shutil.copytree(run / ".hydra", tcnn_run / ".hydra")
    tcnn_field = {"encoding._extra_state": {"backend": "tcnn"}, "encoding.tcnn.params": torch.zeros(4096)}
    save_checkpoint({**state, "scene": {"field": tcnn_field}}, tcnn_run, 4)

    truncated = out / "truncated"
    (truncated / "checkpoints").mkdir(parents=True)
    (truncated / "checkpoints" / "step_000008.pt").write_bytes(real.getvalue()[: len(real.getvalue()) // 2])
    garbage = out / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)

    nonempty = out / "taken"
    nonempty.mkdir()
    (nonempty / "notes.txt").write_text("mine")
    a_file = out / "a_file"
    a_file.write_text("x")

    empty_prior = root / "empty_prior"
    empty_prior.mkdir()
    no_weights = root / "no_weights"
    shutil.copytree(tiny_pixel_prior, no_weights)
    for w in (no_weights / "unet").glob("*.safetensors"):
        w.unlink()
    vocab = root / "vocab_prior"
    shutil.copytree(tiny_pixel_prior, vocab)
    spec = (
        (vocab / "dreamnfsd_prior.json").read_text().replace('"vocabulary": null', '"vocabulary": ["a", "red", "cube"]')
    )
    (vocab / "dreamnfsd_prior.json").write_text(spec)
    return {
        "root": root,
        "out": out,
        "base": base,
        "run": run,
        "tcnn_run": tcnn_run,
        "truncated": truncated,
        "garbage": garbage,
        "nonempty": nonempty,
        "a_file": a_file,
        "empty_prior": empty_prior,
        "no_weights": no_weights,
        "vocab": vocab,
        "missing": root / "no_such_folder",
    }


def _cases(w) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments after the base overrides, words the one-line message must contain)."""
    p = [f"prompt={PROMPT}"]
    return {
        "empty prompt": (["prompt="], ["prompt:", 'prompt="a red cube"']),
        "whitespace prompt": (["prompt=   "], ["prompt:", "empty"]),
        "missing prompt": ([], ["prompt:", "missing"]),
        "unknown key": ([*p, "train.foo=1"], ["train.foo"]),
        "unknown group option": ([*p, "guidance=foo"], ["guidance/foo", "nfsd", "sds"]),
        "resolution not a number": ([*p, "camera.height=abc"], ["camera.height", "abc"]),
        "resolution zero": ([*p, "camera.height=0"], ["camera.height", "must be in [1, 8192]", "camera.height=64"]),
        "resolution negative": ([*p, "camera.width=-16"], ["camera.width", "must be in"]),
        "steps not a number": ([*p, "train.steps=many"], ["train.steps"]),
        "steps zero": ([*p, "train.steps=0"], ["train.steps", "must be in [1,"]),
        "lr not a number": ([*p, "train.lr_mlp=fast"], ["train.lr_mlp"]),
        "lr negative": ([*p, "train.lr_mlp=-1"], ["train.lr_mlp", "must be in (0, 10]"]),
        "lr zero": ([*p, "train.lr_encoding=0"], ["train.lr_encoding", "must be in (0, 10]"]),
        "t range inverted": ([*p, "guidance.t_range=[0.9,0.1]"], ["guidance.t_range", "0 < t_min < t_max < 1"]),
        "t range above 1": ([*p, "guidance.t_range=[0.1,1.5]"], ["guidance.t_range", "0 < t_min < t_max < 1"]),
        "t range at 0": ([*p, "guidance.t_range=[0,0.5]"], ["guidance.t_range", "0 < t_min < t_max < 1"]),
        "t range one value": ([*p, "guidance.t_range=[0.5]"], ["guidance.t_range", "two numbers"]),
        "guidance scale zero": ([*p, "guidance.guidance_scale=0"], ["guidance.guidance_scale", "(0, 1000]"]),
        "guidance scale negative": (
            [*p, "guidance=sds", "guidance.guidance_scale=-5"],
            ["guidance.guidance_scale", "(0, 1000]"],
        ),
        "prior folder missing": ([*p, f"prior.model={w['missing']}"], ["prior.model", "does not exist"]),
        "prior folder empty": ([*p, f"prior.model={w['empty_prior']}"], ["prior.model", "missing: unet/"]),
        "prior weights missing": ([*p, f"prior.model={w['no_weights']}"], ["prior.model", "unet/"]),
        "word unknown to prior": (["prompt=a blue cube", f"prior.model={w['vocab']}"], ["prompt", "'blue'"]),
        "resume nothing": ([f"resume={w['root'] / 'nothing_here'}"], ["resume:", "does not exist"]),
        "resume another prompt": (["prompt=a blue sphere", f"resume={w['run']}"], ["resume:", "'a red cube'"]),
        "resume truncated": ([f"resume={w['truncated']}"], ["resume:", "corrupt or truncated"]),
        "resume not a checkpoint": ([f"resume={w['garbage']}"], ["resume:", "corrupt or truncated"]),
        "resume folder without checkpoints": ([f"resume={w['nonempty']}"], ["resume:", "no checkpoints"]),
        "resume a tcnn checkpoint without CUDA": (
            [f"resume={w['tcnn_run']}"],
            ["field.encoding.backend", "holds tcnn", "tiny-cuda-nn"],
        ),
        "NFSD without a negative prompt": ([*p, "guidance.negative_prompt="], ["guidance.negative_prompt", "NFSD"]),
        "tcnn backend without CUDA": ([*p, "field.encoding.backend=tcnn"], ["field.encoding.backend=tcnn", "CUDA"]),
        "resume with another model shape": ([f"resume={w['run']}", "field.hidden_dim=64"], ["resume:", "field"]),
        "output_dir not empty": ([*p, f"output_dir={w['nonempty']}"], ["output_dir", "not empty"]),
        "output_root under a file": ([*p, f"output_root={w['a_file'] / 'sub'}"], ["output_root", "not a folder"]),
        "device unknown": ([*p, "device=tpu"], ["device", "cpu"]),
        "two curvature forms": (
            [*p, "field.sdf.curvature_l1=true", "field.sdf.curvature_huber=20"],
            ["field.sdf.curvature_huber", "curvature_l1", "set one"],
        ),
        "curvature huber negative": ([*p, "field.sdf.curvature_huber=-1"], ["field.sdf.curvature_huber", "must be in"]),
        "on_nan unknown": ([*p, "train.on_nan=ignore"], ["train.on_nan", "rollback"]),
        "max_consecutive_skips zero": ([*p, "train.max_consecutive_skips=0"], ["train.max_consecutive_skips"]),
        "ckpt_every negative": ([*p, "train.ckpt_every=-1"], ["train.ckpt_every"]),
        "background jitter above 1": ([*p, "train.background_jitter=1.5"], ["train.background_jitter", "[0, 1]"]),
        "pixel jitter above 1": ([*p, "camera.pixel_jitter=2"], ["camera.pixel_jitter", "[0, 1]"]),
        "absurd image size": ([*p, "camera.height=5000", "camera.width=5000"], ["camera.", "GiB", "largest that fits"]),
        "absurd mesh lattice": ([*p, "export.mesh_resolution=4000"], ["export.mesh_resolution", "largest that fits"]),
        "encoding without levels": ([*p, "field.encoding.n_levels=0"], ["field.encoding.n_levels", "[1, 32]"]),
        "renderer without steps": ([*p, "renderer.num_steps=0"], ["renderer.num_steps", "[1, 8192]"]),
        "unknown field kind": ([*p, "field.kind=voxels"], ["field.kind", "density, sdf"]),
        "coarse stage as long as the run": ([*p, "train.coarse_share=1"], ["train.coarse_share", "[0, 1)"]),
        "output_root not creatable": ([*p, "output_root=/dev/null/outputs"], ["output_root", "not a folder"]),
        "background jitter on an mlp background": (
            [*p, "train.background_jitter=0.3", "background=mlp"],
            ["train.background_jitter", "background.kind=constant"],
        ),
    }


CASE_NAMES = list(
    _cases(
        {
            k: Path("/x")
            for k in (
                "run",
                "tcnn_run",
                "truncated",
                "garbage",
                "nonempty",
                "a_file",
                "empty_prior",
                "no_weights",
                "vocab",
                "missing",
                "root",
            )
        }
    )
)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_one_line_exit_2_nothing_written(name, world, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args, words = _cases(world)[name]
    before = snapshot(world["root"])
    rc = main([*world["base"], *args])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("dreamnfsd: error: "), captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert snapshot(world["root"]) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_cuda(world, capsys):
    rc = main([*world["base"], f"prompt={PROMPT}", "device=cuda"])
    assert rc == 2 and "device: 'cuda' asked for but CUDA is not available" in capsys.readouterr().err


def test_subprocess_hub_model_not_cached_offline(world, tmp_path):
    """The real command, an empty HF cache and HF_HUB_OFFLINE=1: one line naming prior.model, exit 2, no files."""
    before = snapshot(world["root"])
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home"), "HYDRA_FULL_ERROR": ""}
    proc = run_cli([f"prompt={PROMPT}", f"output_root={world['out']}", "prior=stable_diffusion"], env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert (
        lines == [lines[0]]
        and "prior.model: 'stabilityai/stable-diffusion-2-1-base' is not in the Hugging Face cache" in lines[0]
        and "HF_HUB_OFFLINE=1" in lines[0]
    ), proc.stderr
    assert proc.stdout == ""
    assert snapshot(world["root"]) == before
    assert not (tmp_path / "empty_hf_home").exists() or not any((tmp_path / "empty_hf_home").rglob("*.safetensors"))


@pytest.mark.parametrize("how", ["--debug", "HYDRA_FULL_ERROR=1"])
def test_debug_shows_the_traceback(world, how, monkeypatch):
    before = snapshot(world["root"])
    args = [*world["base"], f"prompt={PROMPT}", "camera.height=0"]
    if how == "--debug":  # the real command: the traceback reaches the terminal, exit code 1
        proc = run_cli([*args, "--debug"], env={"HYDRA_FULL_ERROR": ""}, timeout=120)
        assert proc.returncode == 1
        assert "Traceback (most recent call last)" in proc.stderr and "UserError: camera.height" in proc.stderr
    else:
        from dreamnfsd.utils.errors import UserError

        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
        with pytest.raises(UserError, match="camera.height"):
            main(args)
    assert snapshot(world["root"]) == before


def test_no_traceback_in_a_real_shell(world):
    """The same error without --debug through the real entry point: one line, code 2 seen by the shell."""
    proc = run_cli(
        [*world["base"], f"prompt={PROMPT}", "guidance.t_range=[0.9,0.1]"], env={"HYDRA_FULL_ERROR": ""}, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dreamnfsd: error: guidance.t_range: must satisfy 0 < t_min < t_max < 1, got [0.9, 0.1] "
        "(e.g. guidance.t_range=[0.02,0.98])"
    ]
    assert os.environ.get("HYDRA_FULL_ERROR") != "1"


# --- every setting of the schema -----------------------------------------------------------------------------------


def _leaves(cls, prefix: str = ""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from _leaves(t, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", t


def test_every_setting_has_a_range_or_its_words():
    import typing

    from dreamnfsd.app.schema import CHOICES, PAIR_EXAMPLES, RANGES
    from dreamnfsd.train.config import RunConfig

    numbers, words, pairs, flags = set(), set(), set(), set()
    for key, t in _leaves(RunConfig):
        if typing.get_origin(t) is tuple:
            pairs.add(key)
            continue
        base = set(typing.get_args(t)) - {type(None)} or {t}
        if base == {bool}:
            flags.add(key)
        elif base <= {int, float}:
            numbers.add(key)
        else:
            assert base == {str}, (key, t)
            words.add(key)
    assert numbers == set(RANGES), numbers ^ set(RANGES)
    assert words == set(CHOICES), words ^ set(CHOICES)
    assert pairs == set(PAIR_EXAMPLES) | {"background.color"}


def _bad_values(key: str):
    """Values outside the key's range: just below, just above, zero, minus one and absurdly large (where outside)."""
    from dreamnfsd.app.schema import RANGES, default_of

    r = RANGES[key]
    is_int = isinstance(default_of(key), int) or key in ("field.encoding.n_levels",)
    candidates = [r.lo - 1, r.hi * 10 + 1, 0, -1, 10**12, r.lo if r.lo_open else None, r.hi if r.hi_open else None]
    out = []
    for v in candidates:
        if v is None or r.contains(v):
            continue
        v = int(v) if is_int and float(v).is_integer() else float(v)
        if v not in out:
            out.append(v)
    return out


def _range_keys():
    from dreamnfsd.app.schema import RANGES

    return sorted(RANGES)


@pytest.mark.parametrize("key", _range_keys())
def test_out_of_range_values_of_every_setting_fail_before_anything_is_written(key, world, monkeypatch):
    """Zero, negative and absurdly large values (those outside each setting's range): one line naming the field,
    with a value that works, from the checks that run before any file is written."""
    from dreamnfsd.app.preflight import preflight
    from dreamnfsd.utils.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(world["root"])
    values = _bad_values(key)
    assert values, key
    for value in values:
        with pytest.raises(UserError) as excinfo:
            preflight([*world["base"], f"prompt={PROMPT}", f"{key}={value}"], load=False)
        message = str(excinfo.value)
        assert "\n" not in message and message.startswith(f"{key}:"), (value, message)
        assert f"{key}=" in message, message  # a value that works
    assert snapshot(world["root"]) == before


def test_memory_check_names_the_largest_value_that_fits():
    import re

    from dreamnfsd.app.compose import compose, to_run_config
    from dreamnfsd.app.schema import check_memory, memory_needs
    from dreamnfsd.utils.errors import UserError

    cfg = to_run_config(compose(["prompt=a red cube", "prior=builtin", "export.mesh_resolution=900"]))
    budget = 8 << 30
    with pytest.raises(UserError) as excinfo:
        check_memory(cfg, "cpu", available=budget)
    message = str(excinfo.value)
    assert message.startswith("export.mesh_resolution: 900 needs about") and "8.0 GiB free" in message, message
    fits = int(re.search(r"largest that fits is about (\d+)", message).group(1))
    for value, ok in ((fits, True), (fits + 1, False)):
        cfg.export.mesh_resolution = value
        need = next(b for keys, _, b in memory_needs(cfg) if keys == ("export.mesh_resolution",))
        assert (need <= budget) == ok
    check_memory(to_run_config(compose(["prompt=a red cube", "prior=builtin"])), "cpu", available=budget)
