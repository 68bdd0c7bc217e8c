"""Surfaces of trained fields: marching cubes at the field's own level, the outer shell, smooth vertex normals,
optional decimation, vertex colours from albedo.

- An SDF field's surface is its zero level set (inside is f < 0).
- A density field has no level of its own. ``threshold="auto"`` measures one: along rays from the turntable's
  cameras it finds where the transmittance falls to 1/2 (the point a rendered silhouette switches on) and takes the
  median density there, so the mesh sits where the renders put the surface.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.threads import query_in_parts


class EmptySurfaceError(UserError):
    """The chosen iso-level cuts no surface from the field."""


def lattice_bytes(resolution: int) -> int:
    """Memory :func:`extract_mesh` needs for its lattice: points, values, the padded copy and marching cubes'
    working arrays, about 48 bytes a lattice point."""
    return 48 * (resolution + 2) ** 3


@torch.no_grad()
def lattice_values(
    fn: Callable[[Tensor], Tensor],
    resolution: int,
    bound: float,
    device: torch.device,
    chunk: int = 65536,
    out_device: torch.device | str = "cpu",
) -> Tensor:
    """Evaluate ``fn`` (N, 3) -> (N, C) on ``device`` at a ``resolution``^3 lattice spanning [-bound, bound]^3,
    indexed [x, y, z]. Returns (C, R, R, R) on ``out_device`` (the CPU for marching cubes; the field's device for
    a caller that goes on computing there, which saves a round trip)."""
    axis = torch.linspace(-bound, bound, resolution)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    out = torch.cat([query_in_parts(fn, p.to(device)).float().to(out_device) for p in pts.split(chunk)])
    return out.t().reshape(-1, resolution, resolution, resolution)


def sample_grid(
    fn: Callable[[Tensor], Tensor], resolution: int, bound: float, device: torch.device, chunk: int = 65536
) -> Tensor:
    """Evaluate ``fn`` (N,3) -> (N,) on ``device`` at a ``resolution``^3 lattice spanning [-bound, bound]^3. Returns
    (R, R, R) on the CPU. The device is not guessed from ``fn``: a lambda around a CUDA field looks like the CPU."""
    return lattice_values(lambda x: fn(x)[:, None], resolution, bound, device, chunk)[0]


def device_of(fn) -> torch.device:
    """The device of the module a bound method ``fn`` belongs to (CPU for plain functions)."""
    owner = getattr(fn, "__self__", None)
    params = list(owner.parameters()) if isinstance(owner, torch.nn.Module) else []
    return params[0].device if params else torch.device("cpu")


@torch.no_grad()
def optical_depth_along_rays(
    density_fn: Callable[[Tensor], Tensor], origins: Tensor, dirs: Tensor, bound: float, n_steps: int = 256
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Density and accumulated optical depth at ``n_steps`` evenly spaced points along rays through the scene box.

    Args:
        origins, dirs: (N, 3) rays, dirs unit length. bound: the scene box half-size.
    Returns:
        points (N, S, 3), inside (N, S) bool (the point lies in the box; density 0 elsewhere), sigma (N, S) and
        tau (N, S), the optical depth up to and including each point (transmittance exp(-tau)).
    """
    t_near = (origins.norm(dim=-1) - math.sqrt(3.0) * bound).clamp(min=0.0)
    step = 2.0 * math.sqrt(3.0) * bound / n_steps
    t = t_near[:, None] + (torch.arange(n_steps, dtype=origins.dtype, device=origins.device) + 0.5) * step
    pts = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    inside = (pts.abs() <= bound).all(-1)
    sigma = torch.zeros_like(t)
    flat = pts[inside]
    sigma[inside] = (
        torch.cat([query_in_parts(density_fn, c) for c in flat.split(65536)]) if len(flat) else flat.new_zeros(0)
    )
    return pts, inside, sigma, (sigma * step).cumsum(1)


def half_transmittance_density(
    density_fn: Callable[[Tensor], Tensor], origins: Tensor, dirs: Tensor, bound: float, n_steps: int = 256
) -> float:
    """Median density at the points where rays' transmittance falls to 1/2 (rays that never get there are left
    out): the density level at which a density field's renders place its surface.

    Args:
        origins, dirs: (N, 3) rays, dirs unit length. bound: the scene box half-size.
    Returns:
        the level, or NaN when no ray becomes half opaque.
    """
    _, _, sigma, tau = optical_depth_along_rays(density_fn, origins, dirs, bound, n_steps)
    crossed = tau >= math.log(2.0)
    hit = crossed.any(1)
    if not hit.any():
        return math.nan
    first = crossed.float().argmax(1)[hit]
    return float(sigma[hit].gather(1, first[:, None]).median())


def level_rays(camera, export, device: torch.device) -> tuple[Tensor, Tensor]:
    """Rays (N, 3) x 2 along which a density field's surface level is measured: 8 turntable views at 32 px, at the
    mean training camera distance and field of view (``camera``: a CameraSamplerConfig; ``export``: ExportConfig)."""
    from dreamnfsd.cameras import turntable_cameras

    distance, fov = float(sum(camera.distance_range) / 2), float(sum(camera.fov_range) / 2)
    cams = turntable_cameras(8, export.video_elevation, distance, fov, 32, 32, device)
    origins, dirs = cams.rays()
    return origins.reshape(-1, 3), dirs.reshape(-1, 3)


def keep_outer_shells(mesh, min_fraction: float):
    """Drop pieces that are cavities (negative volume: a closed surface facing inwards) or fog (fewer faces than
    ``min_fraction`` of the largest piece). Returns a ``trimesh.Trimesh``."""
    import trimesh

    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    largest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_fraction * largest and not (p.is_watertight and p.volume < 0)]
    return trimesh.util.concatenate(kept or [max(parts, key=lambda p: len(p.faces))])


def marching_cubes(values: Tensor, level: float, bound: float):
    """Surface where ``values`` (R, R, R) (larger inside) crosses ``level``, faces wound outwards (positive
    volume). Returns (vertices (V, 3) world, faces (F, 3))."""
    import mcubes

    resolution = values.shape[0]
    # Padding with "outside" closes surfaces that touch the box instead of leaving them open.
    pad = min(float(values.min()), level) - 1.0
    padded = np.pad(values.numpy(), 1, mode="constant", constant_values=pad)
    vertices, faces = mcubes.marching_cubes(padded, level)
    vertices = (vertices - 1.0) / (resolution - 1) * 2.0 * bound - bound
    # PyMCubes winds faces outwards (towards lower values) already; the old export reversed them (negative volume).
    return vertices, faces


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to at most ``max_faces`` faces (fast-simplification); unchanged if already under."""
    if len(faces) <= max_faces:
        return vertices, faces
    import fast_simplification

    v, f = fast_simplification.simplify(
        vertices.astype(np.float32), faces.astype(np.int64), target_reduction=1.0 - max_faces / len(faces)
    )
    return np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)


def _batched(fn: Callable[[Tensor], Tensor], pts: np.ndarray, device: torch.device) -> Tensor:
    x = torch.from_numpy(np.asarray(pts, dtype=np.float32))
    return torch.cat([fn(x[i : i + 65536].to(device)).float().cpu() for i in range(0, len(x), 65536)])


def extract_mesh(
    field,
    resolution: int,
    threshold: float | str = "auto",
    min_component_fraction: float = 0.05,
    max_faces: int = 0,
    level_rays: tuple[Tensor, Tensor] | None = None,
):
    """The field's surface as a ``trimesh.Trimesh`` with smooth vertex normals and RGBA vertex colours.

    Args:
        field: a trained :class:`~dreamnfsd.models.field.HashGridField` (its ``bound`` from its config).
        resolution: marching-cubes lattice points per axis over the scene box.
        threshold: "auto" (an SDF's zero level; a density field's measured half-transmittance level, which needs
            ``level_rays`` (origins, dirs) (N, 3) each) or a number in the field's own units.
        min_component_fraction: pieces with fewer faces than this share of the largest are dropped.
        max_faces: decimate to at most this many faces (0: keep all).
    Raises:
        EmptySurfaceError if the level cuts no surface.
    """
    import trimesh

    bound = float(field.cfg.bound)
    device = next(field.parameters()).device
    with torch.no_grad():
        if field.cfg.kind == "sdf":
            values = sample_grid(lambda x: -field.sdf(x), resolution, bound, device)
            level = 0.0 if threshold == "auto" else -float(threshold)
        else:
            values = sample_grid(field.density, resolution, bound, device)
            if threshold != "auto":
                level = float(threshold)
            elif level_rays is None:
                raise ValueError("a density field's automatic level needs level_rays")
            else:
                level = half_transmittance_density(field.density, *level_rays, bound)
    vmax = float(values.max())
    if not vmax > level:  # also catches a NaN level (no ray became half opaque)
        what = "SDF" if field.cfg.kind == "sdf" else "density"
        raise EmptySurfaceError(
            f"export.threshold: no surface at {what} level {level:.4g} (the field's maximum is {vmax:.4g}); "
            "train longer or pass another export.threshold"
        )
    vertices, faces = marching_cubes(values, level, bound)
    if len(faces) == 0:
        raise EmptySurfaceError(f"export.threshold: marching cubes found no faces at {level:.4g}; change it")
    mesh = keep_outer_shells(trimesh.Trimesh(vertices=vertices, faces=faces, process=True), min_component_fraction)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    if max_faces > 0:
        vertices, faces = decimate(vertices, faces, max_faces)
    with torch.no_grad():
        normals = _batched(field.normals, vertices, device).numpy()
        rgb = _batched(lambda x: field(x)["albedo"], vertices, device)
    colors = (rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_normals=normals, vertex_colors=colors, process=False)
