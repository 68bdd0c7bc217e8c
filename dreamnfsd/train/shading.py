"""DreamFusion's shading schedule, point lights near the camera, and training backgrounds."""

from __future__ import annotations

import torch
from torch import Tensor

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.train.config import TrainConfig

SHADINGS = ("albedo", "lambertian", "textureless")


def choose_shading(step: int, cfg: TrainConfig, generator: torch.Generator) -> str:
    """Albedo only during the warm-up (the shape has no normals worth shading yet); afterwards a random draw."""
    u = float(torch.rand((), generator=generator))  # drawn every step so the RNG stream does not depend on the step
    if step < cfg.shading_warmup_steps or u < cfg.albedo_ratio:
        return "albedo"
    return "textureless" if u < cfg.albedo_ratio + cfg.textureless_ratio else "lambertian"


def light_positions(cameras: CameraBatch, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """Point lights near each camera: along the camera direction at a random distance, jittered. Returns (B, 3)."""
    b = len(cameras)
    eye = cameras.c2w[:, :3, 3]
    lo, hi = cfg.light_distance_range
    scale = lo + (hi - lo) * torch.rand(b, 1, generator=generator).to(eye)
    jitter = cfg.light_jitter * torch.randn(b, 3, generator=generator).to(eye)
    return eye * scale + jitter * eye.norm(dim=-1, keepdim=True)


def jittered_backgrounds(color: Tensor, batch_size: int, jitter: float, generator: torch.Generator) -> Tensor:
    """Per-view background colours ``color * f``, f a random grey in [1 - jitter, 1]. color (3,) -> (B, 3)."""
    factor = 1.0 - jitter * torch.rand(batch_size, 1, generator=generator)
    return factor.to(color) * color
