"""Everything checked before a run writes its first byte: config, prompt, prior, resume target, output folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dreamnfsd.app.compose import compose, one_line, to_run_config
from dreamnfsd.app.schema import check_memory
from dreamnfsd.utils.errors import UserError

# --- resume -------------------------------------------------------------------------------------------------------
# Sections whose values shape the saved tensors: a resume must build the same scene as the checkpoint.
_SHAPE_KEYS = (
    "field.encoding",
    "field.hidden_dim",
    "field.n_hidden_layers",
    "field.bound",
    "train.coarse_share",  # which field a checkpoint holds depends on it
    "grid.resolution",
    "background.kind",
    "background.n_frequencies",
    "background.hidden_dim",
    "background.n_hidden_layers",
)
_GROUPS = ("prior", "guidance", "field", "grid", "renderer", "background", "camera", "train", "export")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def original_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides a run folder was started with (Hydra's ``.hydra/overrides.yaml``), or None."""
    import yaml

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        found = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in found] if isinstance(found, list) else None


def _override_key(text: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(text).key_or_group
    except Exception:  # leave odd strings to Hydra's own error
        return text.split("=", 1)[0].lstrip("+~")


def merge_overrides(original: list[str], new: list[str]) -> list[str]:
    """``original`` then ``new``; an original override is dropped when ``new`` sets the same key, or picks another
    option of its config group (a new ``prior=builtin`` drops the original ``prior.model=...``)."""
    new_keys = {_override_key(o) for o in new}
    new_groups = {k for k in new_keys if k in _GROUPS}

    def replaced(key: str) -> bool:
        return key in new_keys or key == "resume" or any(key.startswith(g + ".") for g in new_groups)

    return [o for o in original if not replaced(_override_key(o))] + list(new)


@dataclass
class ResumeTarget:
    run_dir: Path
    checkpoint: Path | None  # None: a run folder killed before its first checkpoint; it restarts from step 0
    state: dict | None


def find_resume_target(resume: str) -> ResumeTarget:
    """``resume=`` -> the run folder and its newest (or the given) checkpoint, loaded. Raises :class:`UserError`."""
    from dreamnfsd.train.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, run_dir_of

    path = Path(resume).expanduser()
    if path.is_dir() and not list_checkpoints(path) and original_overrides(path) is not None:
        return ResumeTarget(path.resolve(), None, None)
    ckpt = resolve_checkpoint(resume)
    return ResumeTarget(run_dir_of(ckpt), ckpt, load_checkpoint(ckpt))


def _check_resume(target: ResumeTarget, dcfg, given_prompt: str | None) -> None:
    from omegaconf import OmegaConf

    state = target.state
    if state is None:
        return
    if given_prompt is not None and state["prompt"] != given_prompt:
        raise UserError(
            f"resume: {target.checkpoint} belongs to a run of {state['prompt']!r}, not {given_prompt!r}; "
            "drop prompt= or point resume at this prompt's run"
        )
    saved = _flatten(state.get("config") or {})
    now = _flatten(OmegaConf.to_container(dcfg, resolve=True))
    for key in sorted(saved):
        if key.startswith(_SHAPE_KEYS) and key in now and saved[key] != now[key]:
            raise UserError(
                f"resume: {key} is {now[key]!r} here but {saved[key]!r} in {target.checkpoint}; a resumed run keeps "
                f"its model shape — drop {key}= (or start a new run)"
            )
    steps = int(dcfg.train.steps)
    status_file = target.run_dir / "run.json"
    if status_file.is_file():
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("status") == "completed" and state["step"] >= steps:
            raise UserError(
                f"resume: {target.run_dir} already finished ({state['step']} steps) and its outputs are kept; raise "
                "train.steps to train further, or re-export with dreamnfsd-export"
            )


# --- output folder, device, prior ---------------------------------------------------------------------------------
def check_encoding(cfg, device, target: ResumeTarget | None) -> None:
    """The hash-grid backend this machine builds exists here, and a resumed checkpoint's parameters are of that
    backend (both checked before anything is written)."""
    from dreamnfsd.models.encodings import check_encoding_backend, resolve_encoding_backend

    try:
        backend = resolve_encoding_backend(cfg.field.encoding.backend, device)
    except RuntimeError as e:
        raise UserError(str(e)) from e
    if target is not None and target.state is not None:
        field_state = (target.state.get("scene") or {}).get("field") or {}
        check_encoding_backend(field_state, backend, "encoding.")


def check_writable(folder: Path, key: str) -> None:
    """``folder`` exists as a writable folder or can be created: its nearest existing ancestor is a writable folder."""
    import os

    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{key}: cannot create {folder}: {probe} is not a folder — choose another {key}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{key}: cannot write in {probe} (permission denied) — choose another {key}")


def check_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device: {name!r} asked for but CUDA is not available here; use device=cpu or device=auto")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(f"device: {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device: 'mps' asked for but MPS is not available here; use device=cpu or device=auto")
    return torch.device(name)


# A prior loaded by preflight, handed to the run in the same process (a single run loads it once, before any write).
_preloaded: dict[str, object] = {}


def _prior_key(prior_cfg, device) -> str:
    return repr((prior_cfg, str(device)))


class quiet_model_loading:
    """Silence diffusers/transformers progress bars and log lines while a prior loads: a failure then reads as our
    one-line message, and a success adds no noise."""

    def __enter__(self):
        import logging

        self._saved = []
        for name in ("diffusers", "transformers", "huggingface_hub"):
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level))
            logger.setLevel(logging.CRITICAL)
        self._bars = []
        for module in ("diffusers.utils.logging", "transformers.utils.logging"):
            try:
                lib = __import__(module, fromlist=["x"])
            except ImportError:
                continue
            self._bars.append((lib, lib.is_progress_bar_enabled()))
            lib.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        for logger, level in self._saved:
            logger.setLevel(level)
        for lib, enabled in self._bars:
            if enabled:
                lib.enable_progress_bar()


def preload_prior(prior_cfg, prompt: str, device) -> None:
    from dreamnfsd.guidance.priors import load_prior

    with quiet_model_loading():
        prior = load_prior(prior_cfg, device)
    prior.validate_prompt(prompt)
    _preloaded.clear()
    _preloaded[_prior_key(prior_cfg, device)] = prior


def take_preloaded_prior(prior_cfg, device):
    """The prior preflight loaded for this config and device (once), or None."""
    return _preloaded.pop(_prior_key(prior_cfg, device), None)


def _fresh_run_dir(root: Path, slug: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = root / slug / stamp, 1
    while candidate.exists():  # two runs started in the same second must not share a folder
        candidate, n = root / slug / f"{stamp}-{n}", n + 1
    return candidate


@dataclass
class RunPlan:
    run_dir: Path
    overrides: list[str]  # what to hand to Hydra (a resume adds the run's original overrides)
    resume: ResumeTarget | None = None


def check_config(dcfg):
    """Type and check one job's composed config without touching any file or loading weights -> RunConfig."""
    from dreamnfsd.app.schema import validate
    from dreamnfsd.guidance.priors import check_prior

    cfg = to_run_config(dcfg)
    validate(cfg)
    check_prior(cfg.prior, cfg.prompt)
    return cfg


def preflight(overrides: list[str], load: bool = True) -> RunPlan:
    """Compose and check a single run's config, decide its folder, and (``load``) load its prior, writing nothing.

    ``resume=`` starts from the run's own command-line overrides (``.hydra/overrides.yaml``) with the new ones on
    top, so ``dreamnfsd resume=<run dir>`` alone continues the same run.
    """
    from omegaconf import OmegaConf

    from dreamnfsd.app.schema import slugify

    dcfg = compose(overrides)  # unknown keys and bad types in what the user typed fail first
    target = None
    if dcfg.get("resume"):
        target = find_resume_target(str(dcfg.resume))
        given = None if OmegaConf.is_missing(dcfg, "prompt") else str(dcfg.prompt)
        original = original_overrides(target.run_dir) or []
        overrides = merge_overrides(original, overrides)
        dcfg = compose(overrides)
        if OmegaConf.is_missing(dcfg, "prompt") and target.state is not None:
            overrides = [*overrides, f"prompt={quote_override_value(target.state['prompt'])}"]
            dcfg = compose(overrides)
        _check_resume(target, dcfg, given)
    cfg = check_config(dcfg)
    device = check_device(cfg.device)
    check_memory(cfg, device)
    check_encoding(cfg, device, target)
    if target is not None:
        run_dir = target.run_dir
        check_writable(run_dir, "resume")
    elif cfg.output_dir:
        run_dir = Path(cfg.output_dir).expanduser()
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UserError(
                f"output_dir: {run_dir} exists and is not empty; choose a new folder, "
                f"or resume={run_dir} to continue it"
            )
        check_writable(run_dir, "output_dir")
    else:
        root = Path(cfg.output_root).expanduser()
        check_writable(root, "output_root")
        run_dir = _fresh_run_dir(root, slugify(cfg.prompt))
    if load:
        preload_prior(cfg.prior, cfg.prompt, device)
    return RunPlan(run_dir, overrides, target)


def quote_override_value(value: str) -> str:
    """A string as a Hydra override value, single-quoted so commas, quotes and brackets stay literal. Hydra unescapes
    only backslashes that precede a quote or end the string, so only those runs are doubled."""
    import re

    body = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{body}'"


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of a ``--multirun`` sweep's jobs, as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException as e:
        raise UserError(f"config: {one_line(e)}") from e


MAX_SWEEP_CHECKS = 256


def preflight_sweep(overrides: list[str]) -> list[tuple[list[str], str]]:
    """Check a sweep before Hydra starts it. Every job must compose (an unknown key or a bad type stops the whole
    sweep: raises :class:`UserError`); if every job also fails its value checks, nothing would run, so that raises
    too. Otherwise returns the (job overrides, error) of the jobs that will fail, after printing them."""
    import sys

    jobs = sweep_jobs(overrides)
    # Name a job by the overrides that differ between jobs (the swept values).
    varying = {i for i in range(len(jobs[0]) if jobs else 0) if len({tuple(j)[i] for j in jobs}) > 1}
    label = lambda job: " ".join(o for i, o in enumerate(job) if i in varying) or " ".join(job)
    failing = []
    for job in jobs[:MAX_SWEEP_CHECKS]:
        try:
            dcfg = compose(job)
        except UserError as e:  # unknown keys and bad types: the whole sweep is wrong
            raise UserError(f"sweep job [{label(job)}]: {e}") from e
        try:
            cfg = check_config(dcfg)
            check_memory(cfg, check_device(cfg.device))
            if dcfg.get("resume"):
                raise UserError("resume: a sweep cannot resume runs; resume each job folder on its own")
        except UserError as e:
            failing.append((job, str(e)))
    if failing and len(failing) == len(jobs):
        raise UserError(f"every job of the sweep would fail; the first: {failing[0][1]}")
    for job, message in failing:
        print(f"dreamnfsd: warning: sweep job [{label(job)}] will fail: {message}", file=sys.stderr)
    return failing
