"""An analytic test scene (a red sphere beside a blue box) rendered by exact ray intersection, and a small
photometric fitting loop. Shared by the reconstruction test (tests/test_reconstruction.py) and the render benchmark
(:mod:`dreamnfsd.benchmarks.render`).

The reference never touches the renderer under test: it intersects rays with the two primitives in closed form and
shows the nearest surface's flat colour, or a background colour that varies with the ray direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamnfsd.cameras import CameraBatch

SPHERE_CENTER = (-0.35, -0.1, 0.0)
SPHERE_RADIUS = 0.3
SPHERE_COLOR = (0.9, 0.1, 0.1)
BOX_MIN = (0.1, -0.15, -0.3)
BOX_MAX = (0.6, 0.35, 0.2)
BOX_COLOR = (0.1, 0.2, 0.9)


def background(dirs: Tensor) -> Tensor:
    """A colour gradient over view directions (..., 3) -> (..., 3). Against a constant background, fog of that
    colour would be invisible and never removed; against this one it shows from some side, so empty space is
    learnt as empty (which is also what lets the occupancy grid cull it)."""
    return 0.5 + 0.4 * dirs


def ray_sphere(o: Tensor, d: Tensor, center: Tensor, radius: float) -> Tensor:
    """Nearest positive hit distance of unit rays (N, 3) with a sphere, inf on a miss."""
    oc = o - center
    b = (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    disc = b * b - c
    t = -b - disc.clamp(min=0).sqrt()
    return torch.where((disc >= 0) & (t > 0), t, torch.full_like(t, math.inf))


def ray_box(o: Tensor, d: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Entry distance of rays (N, 3) into a box (origins outside it), inf on a miss. Written independently of
    the renderer's own AABB test on purpose."""
    with torch.no_grad():
        inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        a, b = (lo - o) * inv, (hi - o) * inv
        t_in = torch.minimum(a, b).max(-1).values
        t_out = torch.maximum(a, b).min(-1).values
    return torch.where((t_out >= t_in) & (t_in > 0), t_in, torch.full_like(t_in, math.inf))


def reference_render(origins: Tensor, dirs: Tensor) -> Tensor:
    """(..., 3) rays -> (..., 3) colours of the scene."""
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    t_s = ray_sphere(o, d, torch.tensor(SPHERE_CENTER), SPHERE_RADIUS)
    t_b = ray_box(o, d, torch.tensor(BOX_MIN), torch.tensor(BOX_MAX))
    rgb = background(d).clone()
    sphere_first = t_s < t_b
    rgb[sphere_first & torch.isfinite(t_s)] = torch.tensor(SPHERE_COLOR)
    rgb[~sphere_first & torch.isfinite(t_b)] = torch.tensor(BOX_COLOR)
    return rgb.view(*origins.shape)


def orbit_views(azimuths_deg: list[float], elevations_deg: list[float], res: int) -> CameraBatch:
    n = len(azimuths_deg)
    return CameraBatch.from_angles(
        torch.deg2rad(torch.tensor(azimuths_deg, dtype=torch.float32)),
        torch.deg2rad(torch.tensor(elevations_deg, dtype=torch.float32)),
        torch.full((n,), 3.0),
        torch.full((n,), math.radians(40.0)),
        res,
        res,
    )


def training_views(n: int, res: int) -> CameraBatch:
    """n views spread over azimuth, elevations cycling through -10..50 degrees (tops and sides)."""
    elev = [-10.0, 10.0, 30.0, 50.0]
    return orbit_views([360.0 * i / n for i in range(n)], [elev[i % len(elev)] for i in range(n)], res)


def held_out_views(res: int) -> CameraBatch:
    """Views between the training azimuths and elevations."""
    return orbit_views([22.0, 113.0, 204.0, 291.0], [20.0, 0.0, 40.0, 15.0], res)


def psnr(a: Tensor, b: Tensor) -> float:
    return float(-10.0 * torch.log10((a - b).square().mean()))


@dataclass
class FitConfig:
    steps: int = 400
    rays_per_step: int = 2048
    lr_encoding: float = 1e-2
    lr_mlp: float = 1e-2
    seed: int = 0


def fit(renderer, origins: Tensor, dirs: Tensor, targets: Tensor, cfg: FitConfig) -> list[float]:
    """L2 photometric fit of renderer.field on flat rays (N, 3) -> targets (N, 3). Returns per-step losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    field = renderer.field
    opt = torch.optim.Adam(
        [
            {"params": field.encoding_parameters(), "lr": cfg.lr_encoding},
            {"params": field.mlp_parameters(), "lr": cfg.lr_mlp},
        ],
        betas=(0.9, 0.99),
        eps=1e-15,
    )
    losses = []
    for step in range(cfg.steps):
        idx = torch.randint(0, origins.shape[0], (cfg.rays_per_step,), generator=gen)
        o, d = origins[idx][None, None], dirs[idx][None, None]
        out = renderer.render(o, d, background_color=background(d), generator=gen)
        loss = (out["rgb"][0, 0] - targets[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        renderer.update_occupancy(step, gen)
        losses.append(loss.item())
    return losses
