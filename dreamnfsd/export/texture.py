"""Textured mesh assets: a UV atlas (xatlas), the field's albedo baked into a texture, and .glb/.obj/.ply files.

Conventions:

- UVs follow OBJ/OpenGL and trimesh: u to the right, v up. The image is stored top row first (as PIL and PNG store
  it), so texel (row r, column c) has its centre at u = (c + 0.5) / size, v = 1 - (r + 0.5) / size. trimesh turns v
  over when it writes glTF (whose texture origin is the image's top-left) and back when it reads it, so one image
  serves both the .glb and the .obj.
- Albedo goes into the 8-bit PNG as is: the renders show albedo values directly, so they are display (sRGB) values,
  which is what glTF's baseColorTexture and OBJ's map_Kd hold.
- Baking fills every texel: texels whose centre lies in a UV triangle, or within ``RING`` texels of one (all that
  bilinear lookups at full resolution read), get the albedo of their closest point on the surface; the rest are
  filled from their neighbours (dilation, then pull-push), so bilinear filtering and mip-maps show no dark seams.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreamnfsd.export.mesh import device_of
from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.files import REEXPORT_HINT, atomic_output, atomic_write_bytes

# Texels within this distance (in texels) of a triangle are baked from the surface. A bilinear lookup at a point
# inside a triangle reads texels whose centres are less than one texel away on each axis, i.e. up to sqrt(2).
RING = 1.5
# Candidate texels tested per vectorised rasterisation step: bounds the memory (a few hundred bytes each, so about
# 100 MB) at any mesh size and texture size.
_CANDIDATES_PER_STEP = 1 << 19


class TextureExportError(RuntimeError):
    """A textured file came out without its texture (or with a wrong one); never written in that state."""


class TextureFitError(UserError):
    """The mesh's UV charts do not fit the texture even one texel apart: the texture is too small for the mesh."""


def default_padding(texture_size: int) -> int:
    """Texels kept free between charts: 1/128 of the side (8 at 1024), at least 4, so that mip levels down to 1/4
    of the size (texels spanning 4) still keep neighbouring charts' colours apart."""
    return max(4, texture_size // 128)


# ---------------------------------------------------------------------------------------------------------- unwrap


def unwrap_indexed(
    vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024, padding: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UV atlas for a ``texture_size`` square texture, as a re-indexing of the input.

    Args:
        vertices: (V, 3) float. faces: (F, 3) int.
        padding: texels between charts (default :func:`default_padding`).
    Returns:
        vmapping (V',) int64: the input vertex each output vertex copies (seams split vertices, so V' >= V);
        new_faces (F, 3) int64 into the output vertices, same face order; uvs (V', 2) float64 in [0, 1].
    Raises:
        TextureFitError if the charts do not fit the square even 1 texel apart (a rough mesh, a small texture).
    """
    import xatlas

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"unwrap: need (V, 3) vertices and (F>0, 3) faces, got {vertices.shape} and {faces.shape}")
    padding = default_padding(texture_size) if padding is None else int(padding)

    # Charts: xatlas cuts the surface into charts and flattens each one (the slow step). Packed with no resolution
    # it makes one atlas of a size of its own choosing (rarely square), so its UVs only serve as chart shapes.
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    charts = xatlas.ChartOptions()
    # Charts no larger than 1/16 of the surface: a few big round charts (a sphere's caps) leave much of a square
    # empty, smaller ones pack tighter (an icosphere at 1024: texel centres inside triangles from 41% to 48%) and
    # flatten with less stretch. The extra seams cost nothing visible, as baking fills around every chart.
    charts.max_chart_area = float(_surface_area(vertices, faces)) / 16.0
    atlas.generate(charts, _pack_options(0, padding, 0.0))
    vmap1, faces1, uv1 = (np.asarray(a) for a in atlas.get_mesh(0))
    charts_px = uv1.astype(np.float64) * [atlas.width, atlas.height]

    # Packing: re-pack those charts into one texture_size square at the largest scale that fits (packing alone is
    # fast). A scale that overflows the square makes xatlas open a second atlas, which we cannot use.
    side = max(atlas.width, atlas.height)
    scale, packed = texture_size / side, None
    while packed is None:
        packed = _pack_uv_charts(charts_px, faces1, texture_size, padding, scale)
        if packed is None:
            scale *= 0.9
            if scale * side < 1.0:
                if padding <= 1:
                    raise TextureFitError(
                        f"export.texture_size: the mesh's {atlas.chart_count} UV charts do not fit a {texture_size}^2"
                        " texture even 1 texel apart; use a larger one, e.g. export.texture_size=1024"
                    )
                # Many charts in a small texture (a rough mesh at export.texture_size=128): the gaps alone overflow
                # the square, so narrower gaps (more bleeding at small mip levels) rather than no texture.
                padding, scale = padding // 2, texture_size / side
    # Then grow the scale towards the area bound (charts filling the whole square) while they still fit.
    hi = texture_size / math.sqrt(max(atlas.width * atlas.height * atlas.utilization, 1e-12))
    lo = scale
    for _ in range(5):
        if hi <= lo * 1.01:
            break
        mid = math.sqrt(lo * hi)
        trial = _pack_uv_charts(charts_px, faces1, texture_size, padding, mid)
        if trial is None:
            hi = mid
        else:
            lo, packed = mid, trial
    vmap2, new_faces, uvs = packed
    return vmap1.astype(np.int64)[vmap2], new_faces, uvs


def unwrap(
    vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024, padding: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrapped copy of a mesh: (new_vertices (V', 3), new_faces (F, 3), uvs (V', 2) in [0, 1]); vertices are
    split along chart seams. See :func:`unwrap_indexed`."""
    vmapping, new_faces, uvs = unwrap_indexed(vertices, faces, texture_size, padding)
    return np.asarray(vertices, dtype=np.float64)[vmapping], new_faces, uvs


def _surface_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    tri = vertices[faces]
    return 0.5 * float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())


def _pack_options(texture_size: int, padding: int, texels_per_unit: float):
    import xatlas

    options = xatlas.PackOptions()
    options.resolution = texture_size
    options.texels_per_unit = texels_per_unit
    options.padding = padding
    # Keeps a further texel around each chart for bilinear lookups, and packs by the default greedy search, whose
    # random choices come from a fixed seed: the same mesh gives the same atlas (tests/test_texture.py checks).
    options.bilinear = True
    options.bruteForce = False
    return options


def _pack_uv_charts(
    charts_px: np.ndarray, faces: np.ndarray, texture_size: int, padding: int, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pack the UV islands of (V, 2) ``charts_px`` (texels) at ``scale`` into one square; None if they need two.
    Returns (vmapping (V',) into charts_px, faces (F, 3), uvs (V', 2) in [0, 1])."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_uv_mesh(charts_px.astype(np.float32), faces.astype(np.uint32))
    atlas.generate(xatlas.ChartOptions(), _pack_options(texture_size, padding, scale))
    if atlas.atlas_count != 1:
        return None
    vmap, new_faces, uvs = (np.asarray(a) for a in atlas.get_mesh(0))
    # xatlas normalises by its atlas's own width and height; make them fractions of the texture side.
    uvs = uvs.astype(np.float64) * [atlas.width, atlas.height] / texture_size
    if atlas.width > texture_size or atlas.height > texture_size or uvs.min() < 0.0 or uvs.max() > 1.0:
        return None
    return vmap.astype(np.int64), new_faces.astype(np.int64), uvs


# ----------------------------------------------------------------------------------------------------- rasterise


def uv_to_texel(uvs: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) uv -> (N, 2) continuous (column, row) texel coordinates, texel centres at integers (row 0 on top)."""
    uvs = np.asarray(uvs, dtype=np.float64)
    return np.stack([uvs[:, 0] * size - 0.5, (1.0 - uvs[:, 1]) * size - 0.5], axis=-1)


def rasterize_uv(
    uvs: np.ndarray, faces: np.ndarray, size: int, ring: float = RING
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The triangle each texel takes its colour from: for every texel whose centre lies in a UV triangle or within
    ``ring`` texels of one, the nearest triangle (ties: the lower face index) and the closest point on it.

    Args:
        uvs: (V, 2) in [0, 1]. faces: (F, 3) int, UV charts sharing no vertices (as :func:`unwrap` makes them).
        size: texture side in texels.
    Returns:
        texel (K,) int64 flat index row * size + column, each texel once, ascending; face (K,) int64;
        bary (K, 3) float64 barycentric coordinates of the closest point; inside (K,) bool (centre in the face).
    """
    faces = np.asarray(faces, dtype=np.int64)
    tri = uv_to_texel(uvs, size)[faces]  # (F, 3, 2)
    # Texels inside triangles: barycentric coordinates only, for every face.
    parts = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0))]
    for texel, face, p in _candidate_texels(tri, np.arange(len(faces)), size, 0.0):
        bary = _barycentric(p, tri[face])
        inside = (bary >= -1e-9).all(axis=1)  # centres on a shared edge go to both; the lower face index wins
        parts.append((texel[inside], face[inside], bary[inside].clip(0.0, None), np.zeros(int(inside.sum()))))
    covered = np.zeros(size * size, dtype=bool)
    covered[np.concatenate([part[0] for part in parts])] = True
    # The ring around the charts: only texels not inside any triangle, only faces on a chart's border (the closest
    # point of a chart lies on its border), which keeps the costlier point-to-triangle distances few.
    if ring > 0:
        for texel, face, p in _candidate_texels(tri, _border_faces(faces), size, ring, skip=covered):
            bary, dist = closest_point_barycentric(p, tri[face])
            near = dist <= ring
            parts.append((texel[near], face[near], bary[near], dist[near]))
    texel, face, bary, dist = (np.concatenate(column) for column in zip(*parts))
    order = np.lexsort((face, dist, texel))  # per texel: nearest first, then the lowest face index
    texel, face, bary, dist = texel[order], face[order], bary[order], dist[order]
    first = np.ones(len(texel), dtype=bool)
    first[1:] = texel[1:] != texel[:-1]
    return texel[first], face[first], bary[first], dist[first] == 0.0


def _border_faces(faces: np.ndarray) -> np.ndarray:
    """Indices of faces with an edge no other face shares (chart seams and open borders)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, inverse, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    lone = counts[inverse.reshape(-1)] == 1
    return np.unique(np.tile(np.arange(len(faces)), 3)[lone])


def _bucket(extent: np.ndarray) -> np.ndarray:
    """Round sizes up to 1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5 times them): few distinct blocks,
    with at most a third of each one wasted."""
    power = 2 ** np.ceil(np.log2(np.maximum(extent, 1))).astype(np.int64)
    three_quarters = power * 3 // 4
    return np.where((power >= 4) & (three_quarters >= extent), three_quarters, power)


def _candidate_texels(tri: np.ndarray, ids: np.ndarray, size: int, margin: float, skip: np.ndarray | None = None):
    """Yield, a bounded number at a time, (texel (K,), face (K,), centre (K, 2)) for the texels of faces ``ids``'
    bounding boxes grown by ``margin`` texels, leaving out those flagged in ``skip`` (size * size,) bool."""
    lo = np.floor(tri[ids].min(axis=1) - margin).astype(np.int64).clip(0, size - 1)  # (n, 2) column, row
    hi = np.ceil(tri[ids].max(axis=1) + margin).astype(np.int64).clip(0, size - 1)
    # Faces grouped by bounding box size, so that each group is one dense (n, h, w) block of candidates without
    # padding small triangles out to the largest.
    block = _bucket(hi - lo + 1)
    keys = block[:, 0] * (4 * size) + block[:, 1]
    for key in np.unique(keys):
        group = np.flatnonzero(keys == key)
        bw, bh = (int(x) for x in block[group[0]])
        step = max(1, _CANDIDATES_PER_STEP // (bw * bh))
        for start in range(0, len(group), step):
            g = group[start : start + step]
            cols = lo[g, 0, None, None] + np.arange(bw)[None, None, :]  # (n, 1, bw)
            rows = lo[g, 1, None, None] + np.arange(bh)[None, :, None]  # (n, bh, 1)
            valid = (cols <= hi[g, 0, None, None]) & (rows <= hi[g, 1, None, None])  # (n, bh, bw)
            k, r, c = np.nonzero(valid)
            col, row = cols[k, 0, c], rows[k, r, 0]
            texel = row * size + col
            keep = slice(None) if skip is None else ~skip[texel]
            centre = np.stack([col[keep], row[keep]], axis=-1).astype(np.float64)
            yield texel[keep], ids[g[k[keep]]], centre


def _barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """(K, 2) points in (K, 3, 2) triangles -> (K, 3) barycentric coordinates; all -1 for degenerate triangles."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area2 = _cross(b - a, c - a)
    ok = np.abs(area2) > 1e-12
    safe = np.where(ok, area2, 1.0)
    s = _cross(p - a, c - a) / safe
    t = _cross(b - a, p - a) / safe
    bary = np.stack([1.0 - s - t, s, t], axis=-1)
    bary[~ok] = -1.0
    return bary


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def closest_point_barycentric(p: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of 2D triangles to points, one pair per row.

    Args:
        p: (K, 2) points. tri: (K, 3, 2) triangle corners (either orientation; degenerate ones allowed).
    Returns:
        bary (K, 3) barycentric coordinates of the closest point (>= 0, summing to 1); distance (K,), exactly 0 for
        points inside or on the triangle.
    """
    inside_bary = _barycentric(p, tri)
    inside: np.ndarray = np.all(inside_bary >= 0.0, axis=-1)  # (K,) bool
    bary = np.where(inside[:, None], inside_bary, 0.0)
    dist = np.zeros(len(p))
    # Outside: the nearest point of the three edges (a, b), (b, c), (c, a).
    out = np.flatnonzero(~inside)
    q, corners = p[out], tri[out]
    best_d = np.full(len(out), np.inf)
    best = np.zeros((len(out), 3))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        e0, edge = corners[:, i], corners[:, j] - corners[:, i]
        length2 = (edge * edge).sum(-1)
        f = (((q - e0) * edge).sum(-1) / np.where(length2 > 0.0, length2, 1.0)).clip(0.0, 1.0)
        d = np.hypot(*(e0 + f[:, None] * edge - q).T)
        closer = d < best_d
        best_d[closer] = d[closer]
        best[closer] = 0.0
        best[closer, i], best[closer, j] = 1.0 - f[closer], f[closer]
    bary[out], dist[out] = best, best_d
    return bary, dist


# ----------------------------------------------------------------------------------------------------------- bake


@torch.no_grad()
def _query_albedo(
    albedo_fn: Callable[[Tensor], Tensor], points: np.ndarray, chunk: int, device: torch.device
) -> np.ndarray:
    """``albedo_fn`` on (K, 3) points in chunks; (K, 3) float32 in [0, 1]. Raises ValueError on a wrong answer."""
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    out = []
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].to(device)
        rgb = albedo_fn(part)
        if not isinstance(rgb, Tensor) or tuple(rgb.shape) != (len(part), 3):
            got = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
            raise ValueError(f"bake: albedo_fn gave {got} for {len(part)} points; expected a ({len(part)}, 3) tensor")
        out.append(rgb.detach().float().cpu())
    colours = torch.cat(out).numpy()
    if not np.isfinite(colours).all():
        raise ValueError("bake: albedo_fn gave NaN or infinite colours")
    return colours.clip(0.0, 1.0)


def bake_albedo(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    albedo_fn: Callable[[Tensor], Tensor],
    size: int,
    chunk: int = 65536,
    device: torch.device | str | None = None,
    fill_steps: int | None = None,
) -> np.ndarray:
    """Albedo texture of a UV-mapped mesh, every texel filled.

    Args:
        vertices: (V, 3). faces: (F, 3) int. uvs: (V, 2) in [0, 1] (conventions in the module docstring).
        albedo_fn: (N, 3) float32 points -> (N, 3) colours in [0, 1]; called under no_grad, ``chunk`` points at a
            time, on ``device`` (default: the device of the module ``albedo_fn`` is a method of, else the CPU).
        fill_steps: dilation steps before pull-push fills the rest (default: :func:`default_padding`).
    Returns:
        (size, size, 3) float32 in [0, 1], row 0 at the top (v = 1).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    texel, face, bary, inside = rasterize_uv(uvs, faces, size)
    if not inside.any():
        raise ValueError(f"bake: no texel centre of the {size}^2 texture lies in a UV triangle")
    points = np.einsum("kj,kjc->kc", bary, vertices[faces[face]])  # (K, 3) the texels' points on the surface
    device = device_of(albedo_fn) if device is None else torch.device(device)
    rgb = _query_albedo(albedo_fn, points, chunk, device)
    texture = np.zeros((size * size, 3), dtype=np.float32)
    filled = np.zeros(size * size, dtype=bool)
    texture[texel], filled[texel] = rgb, True
    steps = default_padding(size) if fill_steps is None else fill_steps
    return fill_empty_texels(texture.reshape(size, size, 3), filled.reshape(size, size), steps)


# ------------------------------------------------------------------------------------------------------ seam fill


def fill_empty_texels(texture: np.ndarray, filled: np.ndarray, dilate_steps: int = 8) -> np.ndarray:
    """Give every empty texel a colour from the filled ones: ``dilate_steps`` rounds of growing the filled region by
    one texel (each new texel the mean of its filled 8-neighbours, which continues each chart outwards, what mip
    levels read around it), then pull-push for what is left (a coarse-to-fine fill, so far-away texels cost nothing).

    Args:
        texture: (H, W, C); values at empty texels are ignored. filled: (H, W) bool, at least one True.
    Returns:
        a new (H, W, C) float32 texture; filled texels unchanged.
    """
    filled = np.asarray(filled, dtype=bool)
    if not filled.any():
        raise ValueError("fill: no filled texel to grow from")
    out = np.where(filled[..., None], texture, 0.0).astype(np.float32)
    known = filled.copy()
    for _ in range(dilate_steps):
        if known.all():
            break
        out, known = _dilate_once(out, known)
    if not known.all():
        out = np.where(known[..., None], out, _pull_push(out, known))
    return out


def _dilate_once(texture: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Colour sums and counts over each 3x3 neighbourhood in one (H, W, C + 1) array, summed along rows then columns;
    # the texel itself adds nothing, being unknown wherever it matters.
    h, w = known.shape
    stacked = np.concatenate([texture * known[..., None], known[..., None]], axis=-1, dtype=np.float32)
    acc = np.pad(stacked, ((1, 1), (1, 1), (0, 0)))
    acc = acc[:, :-2] + acc[:, 1:-1] + acc[:, 2:]
    acc = acc[:-2] + acc[1:-1] + acc[2:]  # (H, W, C + 1)
    count = acc[..., -1]
    grow = ~known & (count > 0)
    texture = texture.copy()
    texture[grow] = acc[grow, :-1] / count[grow, None]
    return texture, known | grow


def _pull_push(texture: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill from a pyramid of means of known texels: each empty texel takes its nearest known coarser ancestor."""
    h, w, c = texture.shape
    side = 1 << max(h - 1, w - 1, 1).bit_length()  # a power-of-two square holding the texture
    acc = np.zeros((side, side, c + 1), dtype=np.float32)  # colour sums and the number of known texels
    acc[:h, :w, :c] = texture * known[..., None]
    acc[:h, :w, c] = known
    levels = [acc]
    while acc.shape[0] > 1:
        n = acc.shape[0] // 2
        acc = acc.reshape(n, 2, n, 2, c + 1).sum(axis=(1, 3))
        levels.append(acc)
    fill = acc[..., :c] / acc[..., c:]  # the 1x1 top level: the mean of all known texels
    for acc in reversed(levels[:-1]):
        n = fill.shape[0]
        # Known texels keep their mean; the others take the parent's fill (a 2x2 view, no copies of the parent).
        count = acc[..., c:].reshape(n, 2, n, 2, 1)
        mean = acc[..., :c].reshape(n, 2, n, 2, c) / np.maximum(count, 1.0)
        fill = np.where(count > 0, mean, fill[:, None, :, None, :]).reshape(2 * n, 2 * n, c)
    return fill[:h, :w]


# --------------------------------------------------------------------------------------------------------- assets


def texture_image(texture: np.ndarray):
    """(S, S, 3) float in [0, 1] -> an 8-bit RGB PIL image (row 0 on top). Raises ValueError on a bad array."""
    from PIL import Image

    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[2] != 3 or texture.shape[0] != texture.shape[1] or texture.shape[0] < 1:
        raise ValueError(f"texture: expected a (S, S, 3) array, got {texture.shape}")
    if not np.isfinite(texture).all():
        raise ValueError("texture: has NaN or infinite texels")
    return Image.fromarray((texture.clip(0.0, 1.0) * 255.0).round().astype(np.uint8), mode="RGB")


def textured_trimesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    texture: np.ndarray,
    vertex_normals: np.ndarray | None = None,
    material_name: str = "texture",
):
    """A ``trimesh.Trimesh`` with UVs and a PBR material whose base colour is ``texture`` (non-metal, fully rough:
    the albedo is all the field knows). OBJ export names the image ``<material_name>.png``.

    Args:
        vertices: (V, 3). faces: (F, 3). uvs: (V, 2). texture: (S, S, 3) float in [0, 1].
        vertex_normals: (V, 3) or None (trimesh then computes smooth ones).
    """
    import trimesh
    from trimesh.visual.material import PBRMaterial

    uvs = np.asarray(uvs, dtype=np.float64)
    if uvs.shape != (len(vertices), 2):
        raise ValueError(f"texture: uvs have shape {uvs.shape}, expected ({len(vertices)}, 2)")
    material = PBRMaterial(
        name=material_name,
        baseColorTexture=texture_image(texture),
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    normals = None
    if vertex_normals is not None:
        normals = np.asarray(vertex_normals, dtype=np.float64)
        # Unit length: glTF requires it of NORMAL, and the vmapping copies may come from unnormalised input.
        normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return trimesh.Trimesh(
        vertices=np.asarray(vertices, dtype=np.float64),
        faces=np.asarray(faces, dtype=np.int64),
        vertex_normals=normals,
        visual=trimesh.visual.TextureVisuals(uv=uvs, material=material),
        process=False,  # merging or reordering vertices would undo the seams the UVs need
    )


def write_textured_meshes(
    mesh,
    albedo_fn: Callable[[Tensor], Tensor],
    out_dir: Path,
    texture_size: int = 1024,
    stem: str = "mesh",
    texture_stem: str = "texture",
    device: torch.device | str | None = None,
) -> dict[str, Path]:
    """Unwrap ``mesh``, bake ``albedo_fn`` and write, each file atomically, under ``out_dir``:
    ``stem``.glb (PBR base colour texture, embedded), ``stem``.obj + ``stem``.mtl + ``texture_stem``.png
    (map_Kd), and ``stem``.ply (the input as is, vertex colours). All carry the input's smooth vertex normals.

    Args:
        mesh: ``trimesh.Trimesh`` with vertex normals (and vertex colours, kept in the .ply).
        albedo_fn: (N, 3) float32 points -> (N, 3) colours in [0, 1] (see :func:`bake_albedo`).
    Returns:
        {"glb", "obj", "mtl", "png", "ply"} -> path.
    Raises:
        TextureExportError if an exporter dropped or mangled the texture (nothing of that file is written).
    """
    import trimesh

    out_dir = Path(out_dir)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    vmapping, faces, uvs = unwrap_indexed(vertices, mesh.faces, texture_size)
    texture = bake_albedo(vertices[vmapping], faces, uvs, albedo_fn, texture_size, device=device)
    textured = textured_trimesh(vertices[vmapping], faces, uvs, texture, normals[vmapping], material_name=texture_stem)

    glb = trimesh.exchange.gltf.export_glb(textured, include_normals=True)
    check_glb(glb, len(textured.vertices), texture_size)
    mtl_name, png_name = f"{stem}.mtl", f"{texture_stem}.png"
    obj_text, obj_files = trimesh.exchange.obj.export_obj(
        textured,
        include_normals=True,
        include_color=False,
        include_texture=True,
        return_texture=True,
        write_texture=False,
        mtl_name=mtl_name,
    )
    _check_obj(obj_text, obj_files, mtl_name, png_name, len(textured.vertices), texture_size)

    paths = {
        "png": out_dir / png_name,
        "mtl": out_dir / mtl_name,
        "obj": out_dir / f"{stem}.obj",
        "glb": out_dir / f"{stem}.glb",
        "ply": out_dir / f"{stem}.ply",
    }
    # Texture and material first, so that a reader never finds an .obj whose files are not there yet.
    atomic_write_bytes(obj_files[png_name], paths["png"], REEXPORT_HINT)
    atomic_write_bytes(obj_files[mtl_name], paths["mtl"], REEXPORT_HINT)
    atomic_write_bytes(obj_text.encode("utf-8"), paths["obj"], REEXPORT_HINT)
    atomic_write_bytes(glb, paths["glb"], REEXPORT_HINT)
    with atomic_output(paths["ply"], REEXPORT_HINT) as tmp:
        mesh.export(tmp, file_type="ply", vertex_normal=True)
    return paths


def _decoded_size(data: bytes, what: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    except Exception as e:
        raise TextureExportError(f"{what}: the texture does not decode ({e})") from e


def check_glb(glb: bytes, n_vertices: int, texture_size: int) -> dict:
    """Raise :class:`TextureExportError` unless ``glb`` has one mesh with NORMAL and TEXCOORD_0 for
    ``n_vertices`` vertices and a PBR material whose base colour texture is an embedded ``texture_size`` square
    image. Returns the glTF JSON."""
    try:
        magic, _version, _length = struct.unpack_from("<4sII", glb, 0)
        json_length, json_type = struct.unpack_from("<I4s", glb, 12)
        gltf = json.loads(glb[20 : 20 + json_length])
        bin_length, bin_type = struct.unpack_from("<I4s", glb, 20 + json_length)
    except (struct.error, ValueError) as e:
        raise TextureExportError(f"glb: not a readable binary glTF ({e})") from e
    if magic != b"glTF" or json_type != b"JSON" or bin_type != b"BIN\x00":
        raise TextureExportError("glb: not a binary glTF with a JSON and a BIN chunk")
    binary = glb[28 + json_length : 28 + json_length + bin_length]
    try:
        (mesh,) = gltf["meshes"]
        (primitive,) = mesh["primitives"]
        attributes = primitive["attributes"]
        material = gltf["materials"][primitive["material"]]
        texture = gltf["textures"][material["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
        view = gltf["bufferViews"][gltf["images"][texture["source"]]["bufferView"]]
        counts = {name: gltf["accessors"][attributes[name]]["count"] for name in ("POSITION", "NORMAL", "TEXCOORD_0")}
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise TextureExportError(f"glb: the exported file lacks its textured material or an attribute ({e!r})") from e
    if set(counts.values()) != {n_vertices}:
        raise TextureExportError(f"glb: attribute counts {counts}, expected {n_vertices} each")
    start = view.get("byteOffset", 0)
    size = _decoded_size(binary[start : start + view["byteLength"]], "glb")
    if size != (texture_size, texture_size):
        raise TextureExportError(f"glb: embedded texture is {size}, expected {texture_size}^2")
    return gltf


def _check_obj(text: str, files: dict, mtl_name: str, png_name: str, n_vertices: int, texture_size: int) -> None:
    # trimesh's OBJ exporter drops UVs and materials it cannot convert with only a debug log; refuse that here.
    if set(files) != {mtl_name, png_name}:
        raise TextureExportError(f"obj: exporter made files {sorted(files)}, expected {mtl_name} and {png_name}")
    lines = text.splitlines()
    counts = {tag: sum(line.startswith(tag + " ") for line in lines) for tag in ("v", "vt", "vn")}
    if set(counts.values()) != {n_vertices} or f"mtllib {mtl_name}" not in lines:
        raise TextureExportError(f"obj: {counts} for {n_vertices} vertices, or no 'mtllib {mtl_name}'")
    if f"map_Kd {png_name}" not in files[mtl_name].decode("utf-8").splitlines():
        raise TextureExportError(f"obj: {mtl_name} does not reference {png_name} with map_Kd")
    size = _decoded_size(files[png_name], "obj")
    if size != (texture_size, texture_size):
        raise TextureExportError(f"obj: texture is {size}, expected {texture_size}^2")
