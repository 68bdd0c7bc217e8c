"""Marching cubes on the field's density, with vertex colours from albedo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.files import REEXPORT_HINT, atomic_output


class EmptySurfaceError(UserError):
    """The chosen iso-level cuts no surface from the density grid."""


@torch.no_grad()
def sample_grid(fn: Callable[[Tensor], Tensor], resolution: int, bound: float, chunk: int = 65536) -> Tensor:
    """Evaluate ``fn`` (N,3) -> (N,) on a ``resolution``^3 lattice spanning [-bound, bound]^3. Returns (R, R, R)."""
    axis = torch.linspace(-bound, bound, resolution)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    out = torch.cat([fn(pts[i : i + chunk]).float().cpu() for i in range(0, pts.shape[0], chunk)])
    return out.reshape(resolution, resolution, resolution)


def auto_threshold(density: Tensor) -> float:
    """An iso-level for a NeRF density grid: a fixed share between the empty level and a high percentile.

    A single absolute value does not suit both a barely trained field and a converged one, whose densities
    differ by orders of magnitude; the 99.5th percentile tracks the solid interior.
    """
    high = float(torch.quantile(density.flatten()[:: max(1, density.numel() // 2_000_000)], 0.995))
    return max(0.25 * high, 1e-3)


def remove_small_components(vertices: np.ndarray, faces: np.ndarray, min_fraction: float):
    """Drop disconnected pieces with fewer faces than ``min_fraction`` of the largest piece. Returns a trimesh."""
    import trimesh

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    largest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_fraction * largest]
    return trimesh.util.concatenate(kept)


def extract_mesh(
    density_fn: Callable[[Tensor], Tensor],
    albedo_fn: Callable[[Tensor], Tensor],
    resolution: int,
    bound: float,
    threshold: float | str = "auto",
    min_component_fraction: float = 0.05,
):
    """Marching cubes at ``threshold`` on a ``resolution``^3 density grid; vertex colours from ``albedo_fn``.

    Returns a ``trimesh.Trimesh`` with RGBA vertex colours. Raises :class:`EmptySurfaceError` if no surface exists.
    """
    import mcubes

    density = sample_grid(density_fn, resolution, bound)
    level = auto_threshold(density) if threshold == "auto" else float(threshold)
    dmax = float(density.max())
    if not dmax > level:
        raise EmptySurfaceError(
            f"export.threshold: no surface at density {level:.4g} (the field's maximum is {dmax:.4g}); "
            "train longer or pass a lower export.threshold"
        )
    # Pad so that surfaces touching the box are closed rather than left open.
    padded = np.pad(density.numpy(), 1, mode="constant", constant_values=0.0)
    vertices, faces = mcubes.marching_cubes(padded, level)
    if len(faces) == 0:
        raise EmptySurfaceError(f"export.threshold: marching cubes found no faces at {level:.4g}; lower it")
    vertices = (vertices - 1.0) / (resolution - 1) * 2.0 * bound - bound
    mesh = remove_small_components(vertices, faces[:, ::-1].copy(), min_component_fraction)
    with torch.no_grad():
        pts = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
        rgb = torch.cat([albedo_fn(pts[i : i + 65536]).float().cpu() for i in range(0, len(pts), 65536)])
    colors = (rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    mesh.visual.vertex_colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    return mesh


def write_meshes(mesh, out_dir: Path, stem: str = "mesh") -> list[Path]:
    """Write ``stem``.obj, .ply and .glb under ``out_dir``, each atomically; returns the paths."""
    paths = []
    for ext in ("obj", "ply", "glb"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with atomic_output(path, REEXPORT_HINT) as tmp:
            mesh.export(tmp, file_type=ext)
        paths.append(path)
    return paths
