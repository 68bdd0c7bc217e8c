"""The coarse stage of an SDF run: a density field first, then the SDF started from that field's surface.

An SDF starts as a sphere, and a surface can only open a hole by tearing through itself; a density field starts
from empty space and carves holes as easily as outlines. With ``train.coarse_share`` > 0 (``field.kind=sdf``
only) the first steps train a density field; then its solid (what views from all around see behind the point
where their transmittance falls to 1/2, largest piece, cavities filled) becomes a signed-distance grid, the SDF
field is fitted to it, and training goes on with the SDF (Magic3D's and Fantasia3D's coarse-to-fine split, with an
SDF as the fine representation).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from dreamnfsd.cameras import CameraBatch, CameraSamplerConfig
from dreamnfsd.export.mesh import lattice_values, optical_depth_along_rays
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


def field_progress(cfg: RunConfig, step: int) -> float:
    """Progress in [0, 1] that the field's own schedules (the SDF's sharpness) follow: through the current stage,
    or with ``train.coarse_restart_sharpness`` false through the whole run, so that an SDF fitted to the coarse
    field's surface starts as sharp as the run's progress says (a blurred surface made the guidance swell and dent
    it)."""
    if cfg.train.coarse_restart_sharpness:
        return stage_progress(cfg, step)
    return step / max(cfg.train.steps - 1, 1)


def carving_rays(camera: CameraSamplerConfig, resolution: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Rays (N, 3) x 2 of the views a solid is carved with: 16 azimuths at 4 elevations spanning the training range,
    ``resolution`` px, at the mean training distance and field of view. N = 64 * resolution^2."""
    azimuth = torch.linspace(0.0, 2.0 * math.pi, 17)[:-1]
    low, high = (float(e) for e in camera.elevation_range)
    elevation = torch.deg2rad(torch.linspace(low, high, 4))
    az, el = (a.reshape(-1) for a in torch.meshgrid(azimuth, elevation, indexing="ij"))
    distance, fov = float(sum(camera.distance_range) / 2), math.radians(float(sum(camera.fov_range) / 2))
    full = lambda v: torch.full_like(az, v)  # noqa: E731
    origins, dirs = CameraBatch.from_angles(az, el, full(distance), full(fov), resolution, resolution).rays()
    return origins.reshape(-1, 3).to(device), dirs.reshape(-1, 3).to(device)


@torch.no_grad()
def carve(density_fn, origins: Tensor, dirs: Tensor, bound: float, resolution: int, n_steps: int) -> np.ndarray:
    """(R, R, R) bool over the scene box, indexed [x, y, z]: the lattice points some ray reaches and no ray reaches
    while its transmittance is still above 1/2 (space carving at the opacity the renders show; the rays: (N, 3) x 2).

    Why not a density threshold: an unfinished density field is partly fog whose density varies, and the renders
    make a surface of the fog as a whole; a threshold keeps only its densest wisps (a cylinder's fog came out as a
    few pieces, 14% of its volume)."""
    spacing = 2.0 * bound / (resolution - 1)
    seen = torch.zeros(resolution**3, dtype=torch.bool, device=origins.device)
    free = torch.zeros_like(seen)
    for o, d in zip(origins.split(2048), dirs.split(2048)):
        pts, inside, _, tau = optical_depth_along_rays(density_fn, o, d, bound, n_steps)
        cell = ((pts + bound) / spacing).round().long().clamp(0, resolution - 1)
        flat = (cell[..., 0] * resolution + cell[..., 1]) * resolution + cell[..., 2]
        seen[flat[inside]] = True
        free[flat[inside & (tau < math.log(2.0))]] = True
    return (seen & ~free).view(resolution, resolution, resolution).cpu().numpy()


def largest_piece_filled(solid: np.ndarray) -> np.ndarray:
    """The largest connected piece of a lattice solid, its cavities filled (all False stays all False)."""
    labels, n = ndimage.label(solid)
    if n == 0:
        return solid
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def solid_from_density(field: HashGridField, camera: CameraSamplerConfig, resolution: int) -> np.ndarray:
    """(R, R, R) bool over the scene box, indexed [x, y, z]: the solid the density field's renders show from all
    around (:func:`carve` with :func:`carving_rays` at ``resolution`` px and 4 ``resolution`` steps per ray, through a
    density lattice twice as fine, for speed), its largest piece, cavities filled."""
    device = next(field.parameters()).device
    bound = float(field.cfg.bound)
    density = lattice_values(lambda x: field.density(x)[:, None], 2 * resolution, bound, device, out_device=device)[0]
    solid = carve(
        lambda x: grid_lookup(density, x, bound),
        *carving_rays(camera, resolution, device),
        bound,
        resolution,
        n_steps=4 * resolution,
    )
    return largest_piece_filled(solid)


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
    albedo: Tensor | None = None,
) -> float:
    """Fit ``sdf_field``'s SDF (an :class:`~dreamnfsd.models.sdf_field.SDFField`) to a signed-distance grid
    ``target`` (R, R, R) on the export lattice, with Adam on random points (half uniform in the box, half within 0.1
    of the surface, where the distance matters). Returns the last mean absolute error of the SDF.

    ``albedo`` (3,): fit the albedo to that one colour everywhere too; None leaves it at the network's grey. Not
    the density field's colours point by point: its dark fringes at soft silhouettes were seen to carry over as
    dark specks on the solid's edges."""
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
        out = sdf_field(x[keep])
        sdf_err = (out["sdf"] - d[keep]).abs()
        loss = sdf_err.mean()
        if albedo is not None:
            loss = loss + (out["albedo"] - albedo.to(device)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        err = float(sdf_err.detach().mean())
    return err


def surface_albedo(field: HashGridField, solid: np.ndarray) -> Tensor:
    """(3,) the median albedo of ``field`` over the boundary lattice points of ``solid`` (R, R, R) [x, y, z]."""
    bound = float(field.cfg.bound)
    boundary = solid & ~ndimage.binary_erosion(solid)
    idx = torch.from_numpy(np.argwhere(boundary)).float()
    x = (idx * (2.0 * bound / (solid.shape[0] - 1)) - bound).to(next(field.parameters()).device)
    with torch.no_grad():
        return field(x)["albedo"].median(dim=0).values.cpu()


def sdf_from_density(
    density_field: HashGridField, sdf_field: SDFField, cfg: RunConfig, generator: torch.Generator
) -> dict:
    """Start ``sdf_field`` from ``density_field``'s surface (in place). Returns facts for the log:
    {"solid_share", "fit_error"}."""
    res = cfg.train.coarse_resolution
    solid = solid_from_density(density_field, cfg.camera, res)
    if not solid.any():  # nothing became half opaque: keep the sphere the SDF starts as
        return {"solid_share": 0.0, "fit_error": float("nan")}
    bound = float(density_field.cfg.bound)
    albedo = surface_albedo(density_field, solid) if cfg.train.coarse_fit_albedo else None
    fit = fit_sdf(sdf_field, signed_distance_grid(solid, bound), cfg.train.coarse_fit_iters, generator, albedo=albedo)
    return {"solid_share": float(solid.mean()), "fit_error": fit}
