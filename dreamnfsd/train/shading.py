"""DreamFusion's shading schedule, lights near the camera (point or directional), and training backgrounds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.train.config import TrainConfig

SHADINGS = ("albedo", "lambertian", "textureless")
LIGHTS = ("point", "directional")
DIRECTIONAL_DISTANCE = 1e4  # a directional light's distance, in camera distances


def choose_shading(step: int, cfg: TrainConfig, generator: torch.Generator) -> str:
    """Albedo only during the warm-up (the shape has no normals worth shading yet); afterwards a random draw."""
    u = float(torch.rand((), generator=generator))  # drawn every step so the RNG stream does not depend on the step
    if step < cfg.shading_warmup_steps or u < cfg.albedo_ratio:
        return "albedo"
    return "textureless" if u < cfg.albedo_ratio + cfg.textureless_ratio else "lambertian"


def light_positions(cameras: CameraBatch, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """Each view's light (B, 3), for ``cfg.light``:

    - point: near the camera, along its direction at a random multiple of its distance, jittered;
    - directional: the jittered camera direction at DIRECTIONAL_DISTANCE camera distances, where its direction
      changes by under 1e-4 rad across the scene box (the renderer takes light positions).

    Both draw the same random numbers, so the choice does not shift the run's random stream.
    """
    b = len(cameras)
    eye = cameras.c2w[:, :3, 3]
    dist = eye.norm(dim=-1, keepdim=True)
    lo, hi = cfg.light_distance_range
    scale = lo + (hi - lo) * torch.rand(b, 1, generator=generator).to(eye)
    jitter = cfg.light_jitter * torch.randn(b, 3, generator=generator).to(eye)
    if cfg.light == "directional":
        return F.normalize(eye + jitter * dist, dim=-1) * (DIRECTIONAL_DISTANCE * dist)
    return eye * scale + jitter * dist


def jittered_backgrounds(color: Tensor, batch_size: int, jitter: float, generator: torch.Generator) -> Tensor:
    """Per-view background colours ``color * f``, f a random grey in [1 - jitter, 1]. color (3,) -> (B, 3)."""
    factor = 1.0 - jitter * torch.rand(batch_size, 1, generator=generator)
    return factor.to(color) * color
