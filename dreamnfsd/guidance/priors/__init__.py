"""Diffusion priors: a frozen text-conditional noise predictor behind one interface (:class:`Prior`).

- ``stable_diffusion``: Stable Diffusion 1.x/2.x, latent space (VAE encode), any hub id or local folder;
- ``pixel``: a pixel-space UNet in the same folder layout, optionally camera-aware (ray-direction channels);
- ``builtin``: the small pixel prior shipped in ``dreamnfsd/assets/builtin_prior/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dreamnfsd.guidance.priors.base import Prior
from dreamnfsd.guidance.priors.diffusers_prior import hub_offline, resolve_dtype, resolve_model_source
from dreamnfsd.guidance.priors.pixel import PIXEL_COMPONENTS, PixelPrior, PixelPriorSpec, check_vocabulary
from dreamnfsd.guidance.priors.stable_diffusion import DEFAULT_MODEL, SD_COMPONENTS, StableDiffusionPrior
from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.threads import STARTUP_THREADS

PRIOR_KINDS = ("stable_diffusion", "pixel", "builtin")


@dataclass
class PriorConfig:
    """Which prior to load. ``model`` is a hub id or a folder (ignored for ``builtin``)."""

    kind: str = "stable_diffusion"
    model: str = DEFAULT_MODEL
    dtype: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    local_files_only: bool | None = None  # None: follow HF_HUB_OFFLINE
    # CPU threads for the denoiser; its bits do not depend on the count. 0: as many as torch had at startup
    # (OMP_NUM_THREADS, else the machine's cores), whatever train.num_threads pins the NeRF side to.
    num_threads: int = 0
    # A CPU batch runs as this many row slices at once, one thread each: a small UNet's rows split over threads
    # better than its ops. The same bits either way. 0: as many as threads and rows allow; 1: never split.
    batch_parts: int = 0


def builtin_prior_folder() -> Path:
    """Where the built-in prior ships: ``dreamnfsd/assets/builtin_prior/`` inside the installed package."""
    return Path(__file__).resolve().parents[2] / "assets" / "builtin_prior"


def _builtin_folder_checked() -> Path:
    folder = builtin_prior_folder()
    if not (folder / "unet").is_dir():
        raise UserError(
            f"prior.kind: builtin prior not found at {folder} — reinstall dreamnfsd with its assets, or use "
            f"prior.kind=stable_diffusion / prior.kind=pixel with prior.model=<folder>"
        )
    return folder


def _check_kind(cfg: PriorConfig) -> None:
    if cfg.kind not in PRIOR_KINDS:
        raise UserError(f"prior.kind: {cfg.kind!r} is not one of {', '.join(PRIOR_KINDS)} — pick one of those")


def load_prior(cfg: PriorConfig, device: torch.device | str = "cpu") -> Prior:
    """Build the prior ``cfg`` names, frozen and on ``device``. Raises ``UserError`` for fixable problems."""
    _check_kind(cfg)
    if cfg.kind == "stable_diffusion":
        prior: Prior = StableDiffusionPrior.from_pretrained(cfg.model, device, cfg.dtype, cfg.local_files_only)
    elif cfg.kind == "pixel":
        prior = PixelPrior.from_pretrained(cfg.model, device, cfg.dtype, cfg.local_files_only)
    else:
        prior = PixelPrior.from_pretrained(str(_builtin_folder_checked()), device, cfg.dtype, local_files_only=True)
    return prior.use_cpu_threads(cfg.num_threads or STARTUP_THREADS, cfg.batch_parts)


def check_prior(cfg: PriorConfig, prompt: str) -> None:
    """Preflight without loading weights: the model can be found (folder complete, or hub id cached when offline),
    the dtype is known, and a closed-vocabulary prior knows every word of ``prompt``. Raises ``UserError``."""
    _check_kind(cfg)
    resolve_dtype(cfg.dtype, "cpu")
    offline = hub_offline() if cfg.local_files_only is None else cfg.local_files_only
    if cfg.kind == "stable_diffusion":
        resolve_model_source(cfg.model, SD_COMPONENTS, offline)
        return
    if cfg.kind == "builtin":
        source, offline = str(_builtin_folder_checked()), True
    else:
        source = cfg.model
    source = resolve_model_source(source, PIXEL_COMPONENTS, offline)
    if Path(source).is_dir():
        check_vocabulary(prompt, PixelPriorSpec.read(Path(source)).vocabulary)


__all__ = [
    "PRIOR_KINDS",
    "PixelPrior",
    "PixelPriorSpec",
    "Prior",
    "PriorConfig",
    "StableDiffusionPrior",
    "builtin_prior_folder",
    "check_prior",
    "load_prior",
]
