"""Sweeps: ``dreamnfsd --multirun`` with Hydra's joblib launcher and submitit's local executor on a tiny prior, the
sweep summary, a failing job that does not stop the others, the up-front sweep check, the SLURM launcher config and
the README's prompt-list-from-a-file command."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dreamnfsd.app.cli import main
from dreamnfsd.app.compose import config_dir
from dreamnfsd.app.preflight import sweep_jobs
from tests.conftest import run_cli, tiny_run_overrides

# Three albedo-only steps, one checkpoint, a small mesh, no video.
SMALL = [
    "train.steps=3",
    "train.ckpt_every=3",
    "train.val_every=0",
    "train.shading_warmup_steps=1000",
    "train.lambda_orientation=0",
    "export.video=false",
    "export.mesh_resolution=24",
]


@pytest.fixture(scope="module")
def vocab_prior(tiny_pixel_prior, tmp_path_factory) -> Path:
    """The tiny prior with a closed vocabulary that lacks "green": jobs prompting "green" fail in preflight."""
    folder = tmp_path_factory.mktemp("vocab") / "prior"
    shutil.copytree(tiny_pixel_prior, folder)
    spec = json.loads((folder / "dreamnfsd_prior.json").read_text())
    spec["vocabulary"] = ["a", "red", "blue", "cube", "sphere"]
    (folder / "dreamnfsd_prior.json").write_text(json.dumps(spec))
    return folder


def _only_sweep(root: Path) -> Path:
    (sweep,) = list((root / "sweeps").iterdir())
    return sweep


def _check_completed(row: dict) -> None:
    assert row["status"] == "completed" and row["step"] == row["steps"] == 3, row
    assert row["wall_time_s"] > 0 and Path(row["run_dir"]).is_dir()
    assert Path(row["outputs"]["obj"]).is_file() and Path(row["outputs"]["obj"]).parent == Path(row["run_dir"])
    assert json.loads((Path(row["run_dir"]) / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_joblib_sweep_runs_every_job_and_a_failing_one_does_not_stop_the_others(vocab_prior, tmp_path):
    proc = run_cli(
        [
            "--multirun",
            "prompt=a red cube,a green sphere",
            "seed=0,1",
            "guidance=sds",
            *tiny_run_overrides(vocab_prior, tmp_path),
            *SMALL,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
        ],
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job or more did not complete
    assert "sweep job [prompt=a\\ green\\ sphere seed=0] will fail: prompt: unknown word(s) 'green'" in proc.stderr
    sweep = _only_sweep(tmp_path)
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(r["prompt"], r["seed"], r["guidance"]) for r in rows] == [
        ("a red cube", 0, "sds"),
        ("a red cube", 1, "sds"),
        ("a green sphere", 0, "sds"),
        ("a green sphere", 1, "sds"),
    ]
    for row in rows[:2]:
        _check_completed(row)
    assert len({r["run_dir"] for r in rows}) == 4  # each job its own folder
    for row in rows[2:]:
        assert row["status"] == "failed" and row["error"].startswith("prompt: unknown word(s) 'green'"), row
    md = (sweep / "summary.md").read_text()
    assert "2 of 4 jobs completed (2 completed, 2 failed)." in md
    assert md.count("| completed |") == 2 and md.count("| failed |") == 2 and "mesh.obj" in md
    assert f"summary in {sweep}/summary.md" in proc.stdout


@pytest.mark.slow
def test_submitit_local_sweep(tiny_pixel_prior, tmp_path):
    proc = run_cli(
        [
            "--multirun",
            "prompt=a blue sphere",
            "train.lr_mlp=0.001,-1",
            *tiny_run_overrides(tiny_pixel_prior, tmp_path),
            *SMALL,
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
        ],
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = _only_sweep(tmp_path)
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["completed", "failed"]
    _check_completed(rows[0])
    assert rows[1]["error"] == "train.lr_mlp: must be in (0, 10], got -1.0; e.g. train.lr_mlp=0.001"
    assert "1 of 2 jobs completed" in (sweep / "summary.md").read_text()


def test_a_sweep_with_an_unknown_key_or_no_runnable_job_is_refused_up_front(tiny_pixel_prior, tmp_path, capsys):
    base = [*tiny_run_overrides(tiny_pixel_prior, tmp_path), "hydra/launcher=joblib"]
    assert main(["--multirun", *base, "prompt=a red cube", "seed=0,1", "train.foo=1"]) == 2
    assert "dreamnfsd: error: sweep job [seed=0]: config: Could not override 'train.foo'" in capsys.readouterr().err
    assert main(["--multirun", *base, "prompt=a red cube", "camera.height=32,abc"]) == 2
    assert "sweep job [camera.height=abc]: config: Error merging override camera.height=abc" in capsys.readouterr().err
    assert main(["--multirun", *base, "prompt=a red cube", "train.lr_mlp=-1,0"]) == 2
    assert "every job of the sweep would fail; the first: train.lr_mlp" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def _values(job: list[str]) -> tuple:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return tuple(OverridesParser.create().parse_override(o).value() for o in job)


def test_the_briefs_sweep_expands_to_eight_jobs():
    jobs = sweep_jobs(['prompt="a red cube","a blue sphere"', "seed=0,1", "guidance=sds,nfsd"])
    assert sorted(_values(j) for j in jobs) == sorted(
        (p, s, g) for p in ("a red cube", "a blue sphere") for s in (0, 1) for g in ("sds", "nfsd")
    )


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from dreamnfsd.app.compose import register_resolvers
    from dreamnfsd.app.schema import register_configs

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["prompt=a red cube", "hydra/launcher=slurm_gpu"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.timeout_min > 0
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"  # the plugin is installed


def test_readme_prompt_file_command_expands_to_one_job_per_line(tmp_path):
    """README: ``dreamnfsd --multirun "prompt=$(paste -sd, prompts.txt)" ...`` — run the shell part for real."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert '"prompt=$(paste -sd, prompts.txt)"' in readme
    (tmp_path / "prompts.txt").write_text('a red cube\n"a cube, red"\n"a cat\'s toy"\na blue sphere\n')
    arg = subprocess.run(
        ["bash", "-c", 'printf %s "prompt=$(paste -sd, prompts.txt)"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    prompts = [_values(job)[0] for job in sweep_jobs([arg, "seed=0"])]
    assert prompts == ["a red cube", "a cube, red", "a cat's toy", "a blue sphere"]
