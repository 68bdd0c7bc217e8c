"""Everything checked before a run writes its first byte: config, prompt, prior, resume target, output folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dreamnfsd.utils.errors import UserError


@dataclass
class RunPlan:
    run_dir: Path
    prompt_from_checkpoint: str | None = None  # set when ``resume=`` was given without a prompt


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from dreamnfsd.config import slugify

    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", lambda p: slugify(str(p)))


def _one_line(err: BaseException) -> str:
    """Hydra and OmegaConf spread a message over lines and chain causes; keep the informative part on one line."""
    parts = []
    while err is not None:
        text = " ".join(str(err).split())
        if text and text not in parts:
            parts.append(text)
        err = err.__cause__
    return " — ".join(parts)


def compose(overrides: list[str], config_dir: Path):
    """Compose ``configs/`` with command-line overrides. Raises :class:`UserError` for unknown keys or bad values."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dreamnfsd.config import register_configs

    register_configs()
    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UserError(f"config: {_one_line(e)}") from e


def to_run_config(dcfg):
    """DictConfig -> typed :class:`~dreamnfsd.config.RunConfig`, with the missing-prompt case made readable."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if OmegaConf.is_missing(dcfg, "prompt"):
        raise UserError('prompt: missing; pass one, e.g. dreamnfsd prompt="a red cube"')
    try:
        return OmegaConf.to_object(dcfg)
    except OmegaConfBaseException as e:
        raise UserError(f"config: {_one_line(e)}") from e


def _check_resume(resume: str, prompt: str | None, steps: int) -> tuple[Path, str]:
    from dreamnfsd.train.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of

    ckpt = resolve_checkpoint(resume)
    state = load_checkpoint(ckpt)
    if prompt is not None and state["prompt"] != prompt:
        raise UserError(
            f"resume: {ckpt} belongs to a run of {state['prompt']!r}, not {prompt!r}; "
            "drop prompt= or point resume at this prompt's run"
        )
    run_dir = run_dir_of(ckpt)
    status_file = run_dir / "run.json"
    if status_file.is_file():
        status = json.loads(status_file.read_text())
        if status.get("status") == "completed" and state["step"] >= steps:
            raise UserError(
                f"resume: {run_dir} already finished ({state['step']} steps) and its outputs are kept; raise "
                "train.steps to train further, or re-export with dreamnfsd-export"
            )
    return run_dir, state["prompt"]


def _fresh_run_dir(root: Path, slug: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = root / slug / stamp, 1
    while candidate.exists():  # two runs started in the same second must not share a folder
        candidate, n = root / slug / f"{stamp}-{n}", n + 1
    return candidate


def preflight(overrides: list[str], config_dir: Path) -> RunPlan:
    """Compose and check a single run's config and decide its folder, writing nothing."""
    from omegaconf import OmegaConf

    from dreamnfsd.config import slugify, validate
    from dreamnfsd.guidance.priors import check_prior

    dcfg = compose(overrides, config_dir)
    prompt_from_checkpoint = None
    if dcfg.get("resume"):
        given = None if OmegaConf.is_missing(dcfg, "prompt") else str(dcfg.prompt)
        run_dir, prompt = _check_resume(str(dcfg.resume), given, int(dcfg.train.steps))
        if given is None:
            prompt_from_checkpoint = prompt
            dcfg.prompt = prompt
    cfg = to_run_config(dcfg)
    validate(cfg)
    check_prior(cfg.prior, cfg.prompt)
    if cfg.resume:
        return RunPlan(run_dir, prompt_from_checkpoint)
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir).expanduser()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(
                f"output_dir: {run_dir} exists and is not empty; choose a new folder, "
                f"or resume={run_dir} to continue it"
            )
        return RunPlan(run_dir)
    return RunPlan(_fresh_run_dir(Path(cfg.output_root).expanduser(), slugify(cfg.prompt)))
