"""The coarse stage of an SDF run: a density field first, then the SDF started from that field's surface.

An SDF starts as a sphere, and a surface can only open a hole by tearing through itself; a density field starts
from empty space and carves holes as easily as outlines. With ``train.coarse_share`` > 0 (``field.kind=sdf``
only) the first steps train a density field; then its solid (the density above the half-transmittance level its
renders place the surface at, largest piece, cavities filled) becomes a signed-distance grid, the SDF field is
fitted to it, and training goes on with the SDF (Magic3D's and Fantasia3D's coarse-to-fine split, with an SDF as
the fine representation).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from dreamnfsd.export.mesh import half_transmittance_density, lattice_values, level_rays
from dreamnfsd.models.field import HashGridField
from dreamnfsd.models.sdf_field import SDFField
from dreamnfsd.train.config import RunConfig


def coarse_steps(cfg: RunConfig) -> int:
    """How many of the run's first steps train the coarse density field (0 for a density run)."""
    return round(cfg.train.coarse_share * cfg.train.steps) if cfg.field.kind == "sdf" else 0


def in_coarse_stage(cfg: RunConfig, step: int) -> bool:
    """Whether training step ``step`` (0-based; a checkpoint's step counts those done) trains the coarse field."""
    return step < coarse_steps(cfg)


def checkpoint_field_kind(field_state: dict) -> str:
    """The kind of field a saved field state holds: an SDF field saves its NeuS sharpness, a density field not."""
    return "sdf" if "sharpness" in field_state else "density"


def stage_config(cfg: RunConfig, step: int) -> RunConfig:
    """The run config of the field trained at ``step``: ``cfg``, or during the coarse stage a copy of it with a
    density field (everything else shared)."""
    return with_field_kind(cfg, "density" if in_coarse_stage(cfg, step) else cfg.field.kind)


def with_field_kind(cfg: RunConfig, kind: str) -> RunConfig:
    """``cfg`` itself when its field is of ``kind``, else a copy with that field kind (everything else shared)."""
    if cfg.field.kind == kind:
        return cfg
    other = copy.deepcopy(cfg)
    other.field.kind = kind
    return other


def stage_progress(cfg: RunConfig, step: int) -> float:
    """Progress in [0, 1] through the current stage, for the field's own schedules (the SDF's sharpness starts
    its ramp when the SDF starts)."""
    coarse = coarse_steps(cfg)
    start, end = (0, coarse) if in_coarse_stage(cfg, step) else (coarse, cfg.train.steps)
    return (step - start) / max(end - start - 1, 1)


def solid_from_density(field: HashGridField, level: float, resolution: int) -> np.ndarray:
    """(R, R, R) bool over the scene box, indexed [x, y, z]: density above ``level``, only the largest connected
    piece, its cavities filled. All False when nothing is above the level."""
    device = next(field.parameters()).device
    density = lattice_values(lambda x: field.density(x)[:, None], resolution, float(field.cfg.bound), device)
    solid = (density[0] > level).numpy()
    labels, n = ndimage.label(solid)
    if n == 0:
        return solid
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def signed_distance_grid(solid: np.ndarray, bound: float, smooth: float = 1.0) -> Tensor:
    """Signed distance (R, R, R), negative inside, in world units, from a solid on the lattice of
    :func:`~dreamnfsd.export.mesh.sample_grid` (R points per axis over [-bound, bound]). The surface is taken
    halfway between an inside and an outside lattice point, so each side is shifted by half a spacing; ``smooth``
    is the standard deviation, in lattice spacings, of a Gaussian filter over the result."""
    spacing = 2.0 * bound / (solid.shape[0] - 1)
    outside = ndimage.distance_transform_edt(~solid) if solid.any() else np.full(solid.shape, solid.shape[0], float)
    inside = ndimage.distance_transform_edt(solid)
    sdf = np.where(solid, -(inside - 0.5), outside - 0.5) * spacing
    # A voxel solid's surface is a staircase; smoothing over about a spacing keeps the SDF from learning its steps.
    return torch.from_numpy(ndimage.gaussian_filter(sdf, smooth).astype(np.float32))


def grid_lookup(grid: Tensor, x: Tensor, bound: float) -> Tensor:
    """Trilinear values of a lattice grid (R, R, R) [x, y, z] at world points x (N, 3) -> (N,)."""
    # grid_sample's (x, y, z) index the last three dims in reverse (W, H, D); the lattice is [x, y, z].
    pts = (x / bound).flip(-1).view(1, -1, 1, 1, 3)
    return torch.nn.functional.grid_sample(grid[None, None], pts, align_corners=True, mode="bilinear").view(-1)


def fit_sdf(
    sdf_field: SDFField,
    target: Tensor,
    iters: int,
    generator: torch.Generator,
    n_points: int = 8192,
    lr: float = 1e-2,
) -> float:
    """Fit ``sdf_field``'s SDF (an :class:`~dreamnfsd.models.sdf_field.SDFField`) to a signed-distance grid
    ``target`` (R, R, R) on the export lattice, with Adam on random points (half uniform in the box, half within 0.1
    of the surface, where the distance matters). Returns the last mean absolute error.

    Only the SDF: the albedo MLP output starts again from grey, since the density field's colours (dark fringes at
    its soft silhouettes) were seen to carry over as dark specks on the solid's edges."""
    bound = float(sdf_field.cfg.bound)
    device = next(sdf_field.parameters()).device
    target = target.to(device)
    opt = torch.optim.Adam(sdf_field.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
    err = float("nan")
    for _ in range(iters):
        x = (torch.rand(4 * n_points, 3, generator=generator) * 2.0 - 1.0).to(device) * bound
        d = grid_lookup(target, x, bound)
        near = (d.abs() < 0.1).nonzero()[: n_points // 2, 0]
        keep = torch.cat([torch.arange(n_points - len(near), device=device), near])
        sdf_err = (sdf_field.sdf(x[keep]) - d[keep]).abs()
        loss = sdf_err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        err = float(sdf_err.detach().mean())
    return err


def sdf_from_density(
    density_field: HashGridField, sdf_field: SDFField, cfg: RunConfig, generator: torch.Generator
) -> dict:
    """Start ``sdf_field`` from ``density_field``'s surface (in place). Returns facts for the log:
    {"level", "solid_share", "fit_error"}."""
    device = next(density_field.parameters()).device
    bound = float(density_field.cfg.bound)
    res = cfg.train.coarse_resolution
    level = half_transmittance_density(density_field.density, *level_rays(cfg.camera, cfg.export, device), bound)
    solid = solid_from_density(density_field, level, res) if level == level else np.zeros((res,) * 3, bool)
    if not solid.any():  # nothing became half opaque: keep the sphere the SDF starts as
        return {"level": level, "solid_share": 0.0, "fit_error": float("nan")}
    fit = fit_sdf(sdf_field, signed_distance_grid(solid, bound), cfg.train.coarse_fit_iters, generator)
    return {"level": level, "solid_share": float(solid.mean()), "fit_error": fit}
