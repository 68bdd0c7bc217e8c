"""3D geometry metrics of an exported mesh against the true primitive of the built-in domain.

Everything is measured in world units on the canonical primitive (:func:`dreamnfsd.data.primitive_sdf`), after the
rotation about the vertical axis that fits best (a generated object may be turned; that is not an error):

- volumetric IoU, the mesh's inside cut exactly along vertical lines by the parity of its crossings, so a fog of
  closed blobs, a hollow shell or a sponge scores what it encloses, not what its outline is;
- Chamfer-L1 both ways (mean distances) and its mean, the 95th percentile mesh->truth, F-score at ``tau``
  (precision: mesh samples within ``tau`` of the true surface; recall: true-surface samples within ``tau`` of the
  mesh);
- normal consistency: mean |n_mesh . n_true| at surface samples, both ways;
- mesh sanity: connected components, watertight, signed volume, surface area beside the truth's;
- size apart from shape (a diagnostic, not a target): the uniform scale about the primitive's centre that gives the
  mesh the true volume, and the F-score once the mesh is scaled by it. Faces that sit ``tau`` too far out score
  about 0.5 on F and near 1 here, so the pair tells a wrong size from a wrong shape;
- for the cube, the area share of faces whose normal lies within 10 degrees of a coordinate axis.

Mesh->truth distances are exact (|sdf| of the analytic primitive); truth->mesh distances go to dense point samples
of the mesh (their spacing, about 0.005 at 200k samples on a unit cube, is the bias).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dreamnfsd.data import primitive_sdf

# Closed-form volume and area of the canonical primitives (dimensions from dreamnfsd.data.primitives).
_SPHERE_R = 0.6
_CYL_R, _CYL_H = 0.45, 0.55
_CONE_H, _CONE_R = 0.5, 0.6
_TORUS_R, _TORUS_r = 0.52, 0.22
TRUE_VOLUME = {
    "sphere": 4.0 / 3.0 * math.pi * _SPHERE_R**3,
    "cube": 1.0,
    "cylinder": math.pi * _CYL_R**2 * 2 * _CYL_H,
    "cone": math.pi * _CONE_R**2 * 2 * _CONE_H / 3.0,
    "torus": 2 * math.pi**2 * _TORUS_R * _TORUS_r**2,
}
TRUE_AREA = {
    "sphere": 4.0 * math.pi * _SPHERE_R**2,
    "cube": 6.0,
    "cylinder": 2 * math.pi * _CYL_R * 2 * _CYL_H + 2 * math.pi * _CYL_R**2,
    "cone": math.pi * _CONE_R * math.hypot(_CONE_R, 2 * _CONE_H) + math.pi * _CONE_R**2,
    "torus": 4 * math.pi**2 * _TORUS_R * _TORUS_r,
}
# Rotations about z that map the primitive onto itself: a cube repeats every 90 degrees, the others are round.
SYMMETRY_PERIOD_DEG = {"cube": 90.0}


@dataclass(frozen=True)
class GeometrySettings:
    lines: int = 256  # vertical lines per axis for the volumetric IoU (see volumetric_iou)
    bound: float = 1.0
    n_samples: int = 200_000  # surface samples on the mesh and on the truth
    tau: float = 0.02  # F-score distance
    rotation_step_deg: float = 1.0
    axis_tolerance_deg: float = 10.0
    seed: int = 0


def analytic_mesh(shape: str):
    """A fine exact triangulation of the canonical primitive (the metrics' calibration): a ``trimesh.Trimesh``."""
    import trimesh

    if shape == "sphere":
        return trimesh.creation.icosphere(subdivisions=6, radius=_SPHERE_R)
    if shape == "cube":
        return trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    if shape == "cylinder":
        return trimesh.creation.cylinder(radius=_CYL_R, height=2 * _CYL_H, sections=512)
    if shape == "cone":
        mesh = trimesh.creation.cone(radius=_CONE_R, height=2 * _CONE_H, sections=512)
        mesh.apply_translation((0.0, 0.0, -_CONE_H))
        return mesh
    if shape == "torus":
        return trimesh.creation.torus(_TORUS_R, _TORUS_r, major_sections=256, minor_sections=128)
    raise ValueError(f"unknown shape {shape!r}")


def rotate_z(points: np.ndarray, degrees: float) -> np.ndarray:
    """Points (N, 3) turned by ``degrees`` about the vertical (z) axis."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return points @ rot.T


def true_sdf(shape: str, points: np.ndarray) -> np.ndarray:
    """Signed distance (N,) of the canonical primitive at points (N, 3)."""
    return primitive_sdf(shape, torch.from_numpy(np.asarray(points, dtype=np.float64))).numpy()


def true_normals(shape: str, points: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Unit gradients (N, 3) of the primitive's SDF at points (N, 3) (central differences)."""
    p = torch.from_numpy(np.asarray(points, dtype=np.float64))
    grads = [primitive_sdf(shape, p + e) - primitive_sdf(shape, p - e) for e in torch.eye(3, dtype=p.dtype) * eps]
    g = torch.stack(grads, -1)
    return (g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)).numpy()


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform points (n, 3) on a triangle mesh and their faces' unit normals (n, 3)."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    rng = np.random.default_rng(seed)
    face = rng.choice(len(faces), size=n, p=area2 / area2.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[face] / np.maximum(area2[face], 1e-20)[:, None]
    return pts, normals


@functools.lru_cache(maxsize=8)
def true_surface_samples(shape: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 3) on the true surface and its normals: samples of the analytic mesh, projected onto the exact
    zero level set (two Newton steps along the SDF gradient). Cached; do not modify."""
    mesh = analytic_mesh(shape)
    pts, _ = sample_surface(np.asarray(mesh.vertices), np.asarray(mesh.faces), n, seed + 1)
    for _ in range(2):
        pts = pts - true_sdf(shape, pts)[:, None] * true_normals(shape, pts)
    return pts, true_normals(shape, pts)


def true_z_interval(shape: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the vertical line through (x, y) (C,) is inside the canonical primitive: [lo, hi] (C,) each (every
    primitive cuts a vertical line in one interval; empty lines get lo = hi = 0)."""
    rho = np.hypot(x, y)
    if shape == "sphere":
        half = np.sqrt(np.clip(_SPHERE_R**2 - rho**2, 0.0, None))
        return -half, half
    if shape == "cube":
        inside = (np.abs(x) < 0.5) & (np.abs(y) < 0.5)
        return np.where(inside, -0.5, 0.0), np.where(inside, 0.5, 0.0)
    if shape == "cylinder":
        inside = rho < _CYL_R
        return np.where(inside, -_CYL_H, 0.0), np.where(inside, _CYL_H, 0.0)
    if shape == "cone":
        inside = rho < _CONE_R
        return np.where(inside, -_CONE_H, 0.0), np.where(inside, _CONE_H - 2 * _CONE_H * rho / _CONE_R, 0.0)
    if shape == "torus":
        half = np.sqrt(np.clip(_TORUS_r**2 - (rho - _TORUS_R) ** 2, 0.0, None))
        return -half, half
    raise ValueError(f"unknown shape {shape!r}")


def column_crossings(vertices: np.ndarray, faces: np.ndarray, cx: np.ndarray, cy: np.ndarray, lo: float, cell: float):
    """Heights where vertical lines cross a triangle mesh.

    Args:
        vertices (V, 3), faces (F, 3). cx, cy: (n, n) positions of the lines, line (i, j) lying in the cell
        [lo + i * cell, lo + (i + 1) * cell] x [lo + j * cell, lo + (j + 1) * cell] (a jittered grid).
    Returns:
        (n * n, K) crossing heights per line (flat index i * n + j), sorted, padded with +inf.
    """
    n = cx.shape[0]
    tri = vertices[faces]
    px, py, pz = tri[..., 0], tri[..., 1], tri[..., 2]
    i0 = np.floor((px.min(1) - lo) / cell).astype(np.int64).clip(0, n)
    i1 = np.floor((px.max(1) - lo) / cell).astype(np.int64).clip(-1, n - 1)
    j0 = np.floor((py.min(1) - lo) / cell).astype(np.int64).clip(0, n)
    j1 = np.floor((py.max(1) - lo) / cell).astype(np.int64).clip(-1, n - 1)
    ni, nj = i1 - i0 + 1, j1 - j0 + 1
    keep = (ni > 0) & (nj > 0)
    cols, heights = [], []
    # Triangles grouped by the size of their box of lines, so each group is one padded vectorised pass.
    for si, sj in {(int(a), int(b)) for a, b in zip(ni[keep], nj[keep])}:
        sel = np.nonzero(keep & (ni == si) & (nj == sj))[0]
        for chunk in np.array_split(sel, len(sel) * si * sj // 1_000_000 + 1):
            ii = np.broadcast_to(i0[chunk, None, None] + np.arange(si)[None, :, None], (len(chunk), si, sj))
            jj = np.broadcast_to(j0[chunk, None, None] + np.arange(sj)[None, None, :], (len(chunk), si, sj))
            qx, qy = cx[ii, jj], cy[ii, jj]
            x0, x1, x2 = (px[chunk, k, None, None] for k in range(3))
            y0, y1, y2 = (py[chunk, k, None, None] for k in range(3))
            det = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            flat = det == 0  # triangles seen edge-on cross no line
            det = np.where(flat, 1.0, det)
            w1 = ((qx - x0) * (y2 - y0) - (x2 - x0) * (qy - y0)) / det
            w2 = ((x1 - x0) * (qy - y0) - (qx - x0) * (y1 - y0)) / det
            hit = (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1) & ~flat
            z0, z1, z2 = (pz[chunk, k, None, None] for k in range(3))
            cols.append((ii * n + jj)[hit])
            heights.append((z0 + w1 * (z1 - z0) + w2 * (z2 - z0))[hit])
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    z = np.concatenate(heights) if heights else np.zeros(0)
    order = np.lexsort((z, col))
    col, z = col[order], z[order]
    counts = np.bincount(col, minlength=n * n)
    rank = np.arange(len(col)) - (np.cumsum(counts) - counts)[col]
    out = np.full((n * n, max(int(counts.max(initial=0)), 2)), np.inf)
    out[col, rank] = z
    return out


def volumetric_iou(
    vertices: np.ndarray, faces: np.ndarray, shape: str, lines: int = 256, bound: float = 1.0, seed: int = 0
) -> float:
    """IoU of the mesh's inside and the true primitive's, over [-bound, bound]^3.

    Vertical lines, one at a random point of each cell of a ``lines`` x ``lines`` grid, are cut exactly: the mesh's
    inside by the parity of its crossings (from below: inside between the 1st and 2nd, 3rd and 4th, ...; a line
    with an odd count, through a hole, drops its last crossing), the primitive's in closed form. So a fog of closed
    blobs, a hollow shell or a sponge scores the volume it encloses. The only sampling is the lines' positions,
    jittered so that no face of an axis-aligned box is systematically in or out.
    """
    cell = 2.0 * bound / lines
    rng = np.random.default_rng(seed)
    edges = -bound + np.arange(lines) * cell
    cx = edges[:, None] + rng.random((lines, lines)) * cell
    cy = edges[None, :] + rng.random((lines, lines)) * cell
    z = column_crossings(vertices, faces, cx, cy, -bound, cell)
    pairs = np.isfinite(z).sum(1) // 2  # an odd crossing (a hole) is dropped
    ends = z[:, 1::2]
    starts = z[:, 0::2][:, : ends.shape[1]]
    valid = np.arange(ends.shape[1])[None, :] < pairs[:, None]
    t_lo, t_hi = true_z_interval(shape, cx.reshape(-1), cy.reshape(-1))
    t_lo, t_hi = t_lo[:, None], t_hi[:, None]
    starts, ends = np.where(valid, starts, 0.0), np.where(valid, ends, 0.0)  # unused pairs: empty, not inf
    seg = ends - starts
    inter = np.clip(np.minimum(ends, t_hi) - np.maximum(starts, t_lo), 0.0, None)
    mesh_len, true_len, inter_len = seg.sum(), float((t_hi - t_lo).sum()), inter.sum()
    union = mesh_len + true_len - inter_len
    return float(inter_len / union) if union > 0 else 0.0


def best_rotation(mesh_pts: np.ndarray, shape: str, settings: GeometrySettings) -> float:
    """Rotation (degrees about z) that, applied to the mesh, minimises the symmetric Chamfer distance to the
    primitive, on a ``rotation_step_deg`` grid over the primitive's symmetry period (0 for round shapes)."""
    from scipy.spatial import cKDTree

    period = SYMMETRY_PERIOD_DEG.get(shape)
    if period is None:
        return 0.0
    sub = mesh_pts[:: max(1, len(mesh_pts) // 4000)]
    truth, _ = true_surface_samples(shape, settings.n_samples, settings.seed)
    truth_sub = truth[:: max(1, len(truth) // 4000)]
    best = (math.inf, 0.0)
    for deg in np.arange(0.0, period, settings.rotation_step_deg):
        turned = rotate_z(sub, -deg)
        d_truth = cKDTree(turned).query(truth_sub)[0].mean()
        best = min(best, (float(np.abs(true_sdf(shape, turned)).mean() + d_truth), float(deg)))
    return best[1]


def axis_aligned_share(vertices: np.ndarray, faces: np.ndarray, tolerance_deg: float) -> float:
    """Area share of faces whose normal lies within ``tolerance_deg`` of one of +-x, +-y, +-z."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    n = cross / np.maximum(area, 1e-20)[:, None]
    aligned = np.abs(n).max(1) >= math.cos(math.radians(tolerance_deg))
    return float(area[aligned].sum() / max(area.sum(), 1e-20))


def precision_recall(pts: np.ndarray, truth: np.ndarray, shape: str, tau: float):
    """Mesh samples ``pts`` (N, 3) against true-surface samples ``truth`` (M, 3), both in the primitive's frame:
    (precision, recall, F-score at ``tau``, |sdf| of each mesh sample (N,), distance of each truth sample to the
    nearest mesh sample (M,), the index of that sample (M,))."""
    from scipy.spatial import cKDTree

    d_mesh = np.abs(true_sdf(shape, pts))
    d_truth, nearest = cKDTree(pts).query(truth)
    precision, recall = float((d_mesh < tau).mean()), float((d_truth < tau).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, fscore, d_mesh, d_truth, nearest


def mesh_geometry_metrics(mesh, shape: str, settings: GeometrySettings | None = None) -> dict:
    """All 3D metrics of a ``trimesh.Trimesh`` (or anything with vertices and faces) against ``shape``.

    Returns a flat dict of floats/ints/bools: iou, chamfer_mesh_to_truth, chamfer_truth_to_mesh, chamfer, p95
    (mesh->truth), precision, recall, fscore, normal_consistency, components, watertight, volume (signed),
    area, area_ratio (area / true area), rotation_deg, volume_scale and fscore_true_volume (None unless the signed
    volume is positive), and for the cube axis_aligned_share.
    """
    import trimesh

    s = settings or GeometrySettings()
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    samples, normals = sample_surface(vertices, faces, s.n_samples, s.seed)
    rotation = best_rotation(samples, shape, s)
    vertices, pts, normals = rotate_z(vertices, -rotation), rotate_z(samples, -rotation), rotate_z(normals, -rotation)
    truth, truth_normals = true_surface_samples(shape, s.n_samples, s.seed)
    precision, recall, fscore, d_mesh, d_truth, nearest = precision_recall(pts, truth, shape, s.tau)
    nc_mesh = np.abs((normals * true_normals(shape, pts)).sum(1)).mean()
    nc_truth = np.abs((truth_normals * normals[nearest]).sum(1)).mean()
    tm = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    out = {
        "iou": volumetric_iou(vertices, faces, shape, s.lines, s.bound, s.seed),
        "chamfer_mesh_to_truth": float(d_mesh.mean()),
        "chamfer_truth_to_mesh": float(d_truth.mean()),
        "chamfer": float(0.5 * (d_mesh.mean() + d_truth.mean())),
        "p95_mesh_to_truth": float(np.percentile(d_mesh, 95)),
        "precision": precision,
        "recall": recall,
        "fscore": fscore,
        "normal_consistency": float(0.5 * (nc_mesh + nc_truth)),
        "components": len(tm.split(only_watertight=False)),
        "watertight": bool(tm.is_watertight),
        "volume": float(tm.volume),
        "true_volume": TRUE_VOLUME[shape],
        "area": float(tm.area),
        "true_area": TRUE_AREA[shape],
        "area_ratio": float(tm.area / TRUE_AREA[shape]),
        "rotation_deg": rotation,
        "volume_scale": None,
        "fscore_true_volume": None,
    }
    if out["volume"] > 0:  # the primitives are centred on the origin, so scaling about it keeps the object in place
        k = (TRUE_VOLUME[shape] / out["volume"]) ** (1.0 / 3.0)
        # The rotation is fitted again: the one that suits a wrong size need not suit the right one.
        scaled = samples * k
        scaled = rotate_z(scaled, -best_rotation(scaled, shape, s))
        out["volume_scale"] = float(k)
        out["fscore_true_volume"] = precision_recall(scaled, truth, shape, s.tau)[2]
    if shape == "cube":
        out["axis_aligned_share"] = axis_aligned_share(vertices, faces, s.axis_tolerance_deg)
    return out


def image_geometry_errors(
    normal: Tensor, depth: Tensor, mask: Tensor, true_normal: Tensor, true_depth: Tensor, true_mask: Tensor
) -> dict:
    """Mean angular error (degrees) of rendered normals and mean relative depth error, over pixels both masks cover.

    Args:
        normal (V, H, W, 3) (any length; normalised here), depth (V, H, W), mask (V, H, W) bool: the render's;
        true_normal, true_depth, true_mask: the same of the truth, from the same cameras.
    Returns:
        {"normal_angle_deg", "depth_rel_error", "pixels"}; NaN errors when no pixel is covered by both.
    """
    both = mask & true_mask
    count = int(both.sum())
    if count == 0:
        return {"normal_angle_deg": math.nan, "depth_rel_error": math.nan, "pixels": 0}
    n = torch.nn.functional.normalize(normal[both], dim=-1)
    cos = (n * torch.nn.functional.normalize(true_normal[both], dim=-1)).sum(-1).clamp(-1, 1)
    rel = (depth[both] - true_depth[both]).abs() / true_depth[both]
    return {
        "normal_angle_deg": float(torch.rad2deg(torch.acos(cos)).mean()),
        "depth_rel_error": float(rel.mean()),
        "pixels": count,
    }
