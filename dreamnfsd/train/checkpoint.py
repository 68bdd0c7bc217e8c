"""Crash-safe checkpoints: atomic writes (:mod:`dreamnfsd.utils.files`) and careful loading."""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.files import atomic_write_bytes, remove_stale_temp_files

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d{6,})\.pt$")
REQUIRED_KEYS = ("step", "prompt", "config", "scene", "optimizer")


def save_checkpoint(state: dict, run_dir: Path, step: int, keep: int = 2) -> Path:
    """Serialise ``state`` to ``run_dir/checkpoints/step_XXXXXX.pt`` atomically and prune all but ``keep`` newest."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(run_dir) / CHECKPOINT_DIR / f"step_{step:06d}.pt"
    remove_stale_temp_files(path.parent)
    atomic_write_bytes(buffer.getvalue(), path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run folder, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(resume: str) -> Path:
    """Turn ``resume=`` (a run folder or a checkpoint file) into a checkpoint path, or raise :class:`UserError`."""
    path = Path(resume).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"resume: {path} has no checkpoints/step_*.pt; point resume at a run folder of dreamnfsd")
        return found[-1]
    raise UserError(f"resume: {path} does not exist; pass a run folder (outputs/<prompt>/<time>) or a checkpoint file")


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder that holds ``checkpoint`` (``<run>/checkpoints/step_X.pt``)."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, turning corruption into a clear :class:`UserError`."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for truncated or foreign files
        m = _NAME.match(Path(path).name)
        # list_checkpoints returns only names that match _NAME, so step_of never sees another name.
        step_of = lambda p: int(_NAME.fullmatch(p.name).group(1))  # type: ignore[union-attr]  # noqa: E731
        earlier = [p for p in list_checkpoints(run_dir_of(path)) if m is None or step_of(p) < int(m.group(1))]
        fix = (
            f"resume from the one before with resume={earlier[-1]}"
            if earlier
            else "start a new run (no earlier checkpoint is left)"
        )
        raise UserError(f"resume: {path} is corrupt or truncated ({type(e).__name__}); {fix}") from e
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else ["everything"]
    if missing:
        raise UserError(
            f"resume: {path} is not a dreamnfsd checkpoint (no {', '.join(missing)}); pass a file from "
            "a run's checkpoints/ folder"
        )
    return state
