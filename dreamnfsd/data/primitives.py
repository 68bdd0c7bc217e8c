"""Procedural training data: one centred analytic primitive on white, rendered by vectorised sphere tracing.

World conventions follow :mod:`dreamnfsd.cameras` (z-up, OpenGL c2w, vertical fov). Primitives keep a canonical
orientation (cube axis-aligned, cylinder/cone/torus axes along world z) so that azimuth is meaningful to a
camera-aware prior.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamnfsd.cameras import CameraBatch

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
# Albedos chosen far apart in RGB; purple keeps a strong red component so it never reads as blue.
ALBEDO: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.12, 0.28, 0.92),
    "yellow": (0.92, 0.80, 0.10),
    "purple": (0.62, 0.15, 0.78),
}
# NFSD's negative prompt p_neg (Katzir et al.), the guidance's default (dreamnfsd.guidance.core.DEFAULT_NEGATIVE):
# the degradations below draw what its words say.
NEGATIVE_PROMPT = (
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
)
# Each degradation and the negative-prompt phrases that describe it.
DEGRADATIONS: dict[str, tuple[str, ...]] = {
    "blur": ("blurry", "out of focus"),
    "dark": ("dark", "gloomy"),
    "desaturate": ("dull", "ugly"),
    "noise": ("low quality", "low-resolution", "unrealistic"),
    "low_contrast": ("low contrast", "dull"),
}
DISTANCE, FOV_DEG = 3.0, 40.0
SCALE_JITTER = 0.1  # training images draw each primitive at 1 ± this size
BOUND = 1.0  # every primitive (with scale jitter) lies inside this radius
OFFSET_UNIT = 0.5  # surface offset per unit of a probe's relative change (a cube's half-size: its faces move as scaled)


def _box(p: Tensor, half: float | Tensor) -> Tensor:
    """Box of half-size ``half`` (a float, or a tensor broadcastable to p[..., 0])."""
    q = p.abs() - torch.as_tensor(half, dtype=p.dtype)[..., None]
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


def _cylinder(p: Tensor, radius: float | Tensor, half_height: float | Tensor) -> Tensor:
    d = torch.stack([p[..., :2].norm(dim=-1) - radius, p[..., 2].abs() - half_height], dim=-1)
    return d.max(dim=-1).values.clamp(max=0) + d.clamp(min=0).norm(dim=-1)


def _cone(p: Tensor, half_height: float | Tensor, radius: float | Tensor) -> Tensor:
    """Exact SDF of a cone along z with base radius ``radius`` at z=-h and apex at z=+h (Quilez's capped cone)."""
    qx, qy = p[..., :2].norm(dim=-1), p[..., 2]
    k2x, k2y = -radius, 2.0 * half_height
    ca = torch.stack([qx - torch.minimum(qx, torch.where(qy < 0, radius, 0.0)), qy.abs() - half_height], -1)
    t = (((0.0 - qx) * k2x + (half_height - qy) * k2y) / (k2x**2 + k2y**2)).clamp(0, 1)
    cb = torch.stack([qx + k2x * t, qy - half_height + k2y * t], -1)
    sign = torch.where((cb[..., 0] < 0) & (ca[..., 1] < 0), -1.0, 1.0)
    return sign * torch.minimum(ca.square().sum(-1), cb.square().sum(-1)).sqrt()


def _torus(p: Tensor, major: float, minor: float) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - major, p[..., 2]], dim=-1)
    return q.norm(dim=-1) - minor


def _canonical_cone(p: Tensor, rho: float | Tensor) -> Tensor:
    """The canonical cone (base radius 0.6 at z=-0.5, apex at z=0.5), its rim and apex rounded by ``rho``: a cone
    whose base and side lie ``rho`` inside the true ones, offset outward by ``rho`` (exact, a Minkowski sum)."""
    slant = math.sqrt(1 + 0.6**2)  # the side line q + 0.6 z = 0.3 has normal (1, 0.6) / slant in (q, z)
    base, apex = -0.5 + rho, 0.5 - rho * slant / 0.6
    radius = 0.6 - rho * (slant + 0.6)
    centre = torch.zeros_like(p)
    centre[..., 2] = centre[..., 2] + (apex + base) / 2
    return _cone(p - centre, (apex - base) / 2, radius) - rho


# The canonical primitives, each with its edges rounded by rho (canonical units; 0.0: sharp): the shape shrunk by rho
# and offset outward by it, so faces stay in place. Spheres and tori have no edges.
_SDFS = {
    "sphere": lambda p, rho: p.norm(dim=-1) - 0.6,
    "cube": lambda p, rho: _box(p, 0.5 - rho) - rho,
    "cylinder": lambda p, rho: _cylinder(p, 0.45 - rho, 0.55 - rho) - rho,
    "cone": _canonical_cone,
    "torus": lambda p, rho: _torus(p, 0.52, 0.22),
}


def primitive_sdf(
    shape: str,
    points: Tensor,
    scale: float | Tensor = 1.0,
    stretch: Tensor | None = None,
    rounding: Tensor | None = None,
    offset: Tensor | None = None,
) -> Tensor:
    """Signed distance of the canonical primitive ``shape`` scaled by ``scale``.

    Args:
        points: (..., 3) world points. scale: a float, or a tensor broadcastable to points[..., 0].
        stretch: optional per-axis factors broadcastable to points (e.g. (1, 1, 1.05): 5% taller). The result is
            then a lower bound of the distance (exact along the least-stretched axis), still safe to sphere-trace.
        rounding: optional radius, broadcastable to points[..., 0], by which the edges of a cube, cylinder or cone
            are rounded (before scaling; faces stay where they were). Spheres and tori have no edges and ignore it.
        offset: optional distance, broadcastable to points[..., 0], by which the surface moves outward along its
            normals (before scaling): a torus's tube thickens, a cube's faces move out and its edges round. A probe
            of the one change a uniform scale and a stretch cannot make; the training data never offsets.
    Returns:
        (...) signed distances, negative inside.
    """
    if shape not in _SDFS:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    s = torch.as_tensor(scale, dtype=points.dtype)
    rho = 0.0 if rounding is None else rounding.to(points.dtype)
    delta = 0.0 if offset is None else offset.to(points.dtype)
    if stretch is None:
        return (_SDFS[shape](points / s[..., None], rho) - delta) * s
    a = stretch.to(points.dtype)
    return (_SDFS[shape](points / (s[..., None] * a), rho) - delta) * s * a.amin(-1)


def primitive_occupancy(shape: str, points: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """(...) bool inside-mask of the primitive at ``points`` (..., 3)."""
    return primitive_sdf(shape, points, scale) < 0


def make_cameras(azimuth: Tensor, elevation: Tensor, resolution: int) -> CameraBatch:
    """Default trainer cameras (distance 3, fov 40°) at angles (B,) in radians."""
    b = azimuth.shape[0]
    return CameraBatch.from_angles(
        azimuth.float(),
        elevation.float(),
        torch.full((b,), DISTANCE),
        torch.full((b,), math.radians(FOV_DEG)),
        resolution,
        resolution,
    )


def _trace(
    shape_idx: Tensor,
    scale: Tensor,
    origins: Tensor,
    dirs: Tensor,
    iters: int,
    stretch: Tensor | None = None,
    rounding: Tensor | None = None,
    offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sphere-trace rays (B, R, 3) against per-image primitives (stretch: None or (B, 3); rounding, offset: None or
    (B,)).
    Returns hit points (B, R, 3) and hit mask (B, R)."""
    # Start on the bounding sphere (camera distance is fixed, so rays start near the front of it).
    b_dot = (origins * dirs).sum(-1)
    disc = b_dot.square() - (origins.square().sum(-1) - BOUND**2)
    t = (-b_dot - disc.clamp(min=0).sqrt()).clamp(min=0)
    dist = torch.full_like(t, 1.0)
    for k, name in enumerate(SHAPES):
        sel = shape_idx == k
        if not sel.any():
            continue
        o, d, tk, s = origins[sel], dirs[sel], t[sel], scale[sel][:, None]
        a = None if stretch is None else stretch[sel][:, None]
        r = None if rounding is None else rounding[sel][:, None]
        off = None if offset is None else offset[sel][:, None]
        for _ in range(iters):
            dk = primitive_sdf(name, o + tk[..., None] * d, s, a, r, off)
            tk = tk + 0.95 * dk  # slight under-relaxation keeps the (bound-only) cone SDF safe
        t[sel], dist[sel] = tk, dk
    hit = (dist.abs() < 2e-3) & (disc > 0)
    return origins + t[..., None] * dirs, hit


def _normals(
    shape_idx: Tensor,
    scale: Tensor,
    points: Tensor,
    eps: float = 1e-3,
    stretch: Tensor | None = None,
    rounding: Tensor | None = None,
    offset: Tensor | None = None,
) -> Tensor:
    """Central-difference SDF gradients at points (B, R, 3), normalised."""
    offsets = torch.eye(3) * eps
    n = torch.zeros_like(points)
    for k, name in enumerate(SHAPES):
        sel = shape_idx == k
        if not sel.any():
            continue
        p, s = points[sel], scale[sel][:, None]
        a = None if stretch is None else stretch[sel][:, None]
        r = None if rounding is None else rounding[sel][:, None]
        off = None if offset is None else offset[sel][:, None]
        grads = [primitive_sdf(name, p + o, s, a, r, off) - primitive_sdf(name, p - o, s, a, r, off) for o in offsets]
        n[sel] = torch.stack(grads, dim=-1)
    return F.normalize(n, dim=-1)


def render_primitives(
    shapes: list[str] | Tensor,
    colors: list[str] | Tensor,
    azimuth: Tensor,
    elevation: Tensor,
    resolution: int = 32,
    supersample: int = 2,
    generator: torch.Generator | None = None,
    scale_jitter: float = SCALE_JITTER,
    light_jitter: float = 0.3,
    iters: int = 48,
    scale: Tensor | None = None,
    stretch: Tensor | None = None,
    rounding: Tensor | None = None,
    offset: Tensor | None = None,
) -> dict:
    """Render B single-primitive images on white.

    Args:
        shapes, colors: B names (or (B,) index tensors into SHAPES / COLORS).
        azimuth, elevation: (B,) radians.
        generator: drives scale jitter and light placement; same generator state gives identical images.
        scale: (B,) fixed object scales instead of the random ``1 ± scale_jitter``.
        stretch: optional (3,) or (B, 3) factors along the canonical x, y, z on top of the scale (a probe of
            proportions: (1, 1, 1.05) is 5% taller); the training data never stretches.
        rounding: optional (B,) radii by which cube, cylinder and cone edges are rounded (see primitive_sdf).
        offset: optional (B,) distances by which each surface moves outward (see primitive_sdf).
    Returns:
        dict with rgb (B, 3, H, W) in [0, 1], mask (B, 1, H, W) pixel coverage in [0, 1], normal (B, 3, H, W) and
        depth (B, 1, H, W) (distance from the camera; both 0 where no ray hits, averaged over the supersamples, so
        exact only at ``supersample=1``), camera (CameraBatch at ``resolution``), scale (B,), shape_idx (B,),
        color_idx (B,).
    """
    shape_idx = _as_index(shapes, SHAPES)
    color_idx = _as_index(colors, COLORS)
    b, hi = shape_idx.shape[0], resolution * supersample
    jittered = 1.0 + scale_jitter * (2 * torch.rand(b, generator=generator) - 1)  # drawn always: same RNG stream
    scale = jittered if scale is None else scale.float().expand(b)
    cam_hi = make_cameras(azimuth, elevation, hi)
    origins, dirs = cam_hi.rays()
    origins, dirs = origins.reshape(b, -1, 3), dirs.reshape(b, -1, 3)
    stretch = None if stretch is None else stretch.float().expand(b, 3)
    rounding = None if rounding is None else rounding.float().expand(b)
    offset = None if offset is None else offset.float().expand(b)
    points, hit = _trace(shape_idx, scale, origins, dirs, iters, stretch, rounding, offset)
    normals = _normals(shape_idx, scale, points, stretch=stretch, rounding=rounding, offset=offset)
    # A light near the camera, nudged randomly, so shading varies but front faces stay lit.
    light = F.normalize(cam_hi.c2w[:, :3, 3] + light_jitter * DISTANCE * torch.randn(b, 3, generator=generator), dim=-1)
    lambert = (normals * light[:, None]).sum(-1).clamp(min=0)
    albedo = torch.tensor([ALBEDO[c] for c in COLORS])[color_idx]  # (B, 3)
    shade = albedo[:, None] * (0.3 + 0.7 * lambert[..., None])
    rgb = torch.where(hit[..., None], shade, torch.ones_like(shade))
    rgb = rgb.reshape(b, hi, hi, 3).permute(0, 3, 1, 2)
    mask = hit.float().reshape(b, 1, hi, hi)
    as_image = lambda x: F.avg_pool2d(x.reshape(b, hi, hi, -1).permute(0, 3, 1, 2), supersample)
    return {
        "rgb": F.avg_pool2d(rgb, supersample).clamp(0, 1),
        "mask": F.avg_pool2d(mask, supersample),
        "normal": as_image(normals * hit[..., None]),
        "depth": as_image((points - origins).norm(dim=-1, keepdim=True) * hit[..., None]),
        "camera": make_cameras(azimuth, elevation, resolution),
        "scale": scale,
        "shape_idx": shape_idx,
        "color_idx": color_idx,
    }


def _as_index(names: list[str] | Tensor, table: tuple[str, ...]) -> Tensor:
    if isinstance(names, Tensor):
        return names.long()
    return torch.tensor([table.index(n) for n in names], dtype=torch.long)


def _gaussian_blur(x: Tensor, sigma: float = 1.0) -> Tensor:
    """Separable 5-tap Gaussian blur of (B, C, H, W) with replicate padding."""
    k = torch.exp(-0.5 * (torch.arange(5.0) - 2).square() / sigma**2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)


def degrade(rgb: Tensor, kinds: list[list[str]], generator: torch.Generator | None = None) -> Tensor:
    """Apply the listed degradations (names from DEGRADATIONS) per image. rgb (B, 3, H, W) in [0, 1]."""
    out = rgb.clone()
    for i, names in enumerate(kinds):
        x = out[i : i + 1]
        for name in names:
            u = torch.rand(1, generator=generator).item()
            if name == "blur":
                x = _gaussian_blur(x, 0.9 + 0.8 * u)
            elif name == "dark":
                x = x * (0.3 + 0.3 * u)
            elif name == "desaturate":
                x = torch.lerp(x, x.mean(1, keepdim=True), 0.6 + 0.35 * u)
            elif name == "noise":
                x = x + (0.06 + 0.08 * u) * torch.randn(x.shape, generator=generator)
            elif name == "low_contrast":
                x = 0.5 + (x - 0.5) * (0.25 + 0.25 * u)
            else:
                raise ValueError(f"unknown degradation {name!r}")
        out[i : i + 1] = x
    return out.clamp(0, 1)


def caption(shape: str, color: str, degradations: list[str], with_object: bool, generator: torch.Generator) -> str:
    """ "a red cube" for clean images; degraded ones list one NFSD negative phrase per degradation."""
    obj = f"a {color} {shape}"
    if not degradations:
        return obj
    words: list[str] = []
    for name in degradations:
        options = DEGRADATIONS[name]
        w = options[int(torch.randint(len(options), (1,), generator=generator))]
        if w not in words:
            words.append(w)
    return ", ".join(([obj] if with_object else []) + words)


def sample_view_angles(
    n: int, generator: torch.Generator, elevation_range: tuple[float, float] = (-10.0, 45.0)
) -> tuple[Tensor, Tensor]:
    """The training images' view angles: azimuth (n,) uniform in [0, 2 pi) and elevation (n,) in radians within
    ``elevation_range`` (degrees), uniform on the sphere's height (as RandomCameraSampler draws them) so that views
    are not bunched at the pole. Draws azimuths first, then elevations, from ``generator``."""
    azimuth = 2 * math.pi * torch.rand(n, generator=generator)
    lo, hi = (math.sin(math.radians(e)) for e in elevation_range)
    elevation = torch.asin(lo + (hi - lo) * torch.rand(n, generator=generator))
    return azimuth, elevation


def make_dataset(
    n: int,
    seed: int,
    resolution: int = 32,
    elevation_range: tuple[float, float] = (-10.0, 45.0),
    degrade_prob: float = 0.15,
    chunk: int = 1024,
    progress: bool = False,
    scale_jitter: float = SCALE_JITTER,
    edge_round: float = 0.0,
) -> dict:
    """Render ``n`` random captioned images, reproducibly from ``seed``.

    ``scale_jitter`` only resizes the objects: the random stream, and so every other property, does not depend on it.
    ``edge_round`` > 0 rounds the edges of each cube, cylinder and cone by a radius uniform in [0, edge_round], drawn
    from a stream of its own, so that too changes nothing else (and 0 gives the images of before).

    Returns:
        dict with rgb (N, 3, H, W) uint8, mask (N, 1, H, W) uint8 coverage*255, shape_idx / color_idx (N,) long,
        azimuth / elevation (N,) float radians, degraded (N,) bool and captions (list of N str).
    """
    g = torch.Generator().manual_seed(seed)
    shape_idx = torch.randint(len(SHAPES), (n,), generator=g)
    color_idx = torch.randint(len(COLORS), (n,), generator=g)
    azimuth, elevation = sample_view_angles(n, g, elevation_range)
    radii = edge_round * torch.rand(n, generator=torch.Generator().manual_seed(seed + 7919)) if edge_round else None
    rgbs, masks = [], []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        out = render_primitives(
            shape_idx[sl],
            color_idx[sl],
            azimuth[sl],
            elevation[sl],
            resolution,
            scale_jitter=scale_jitter,
            generator=g,
            rounding=None if radii is None else radii[sl],
        )
        rgbs.append(out["rgb"])
        masks.append((out["mask"] * 255).round().to(torch.uint8))
        if progress:
            print(f"rendered {sl.stop}/{n}", flush=True)
    rgb = torch.cat(rgbs)
    degraded = torch.rand(n, generator=g) < degrade_prob
    names = list(DEGRADATIONS)
    kinds: list[list[str]] = [[] for _ in range(n)]
    for i in degraded.nonzero().flatten().tolist():
        count = 1 + int(torch.rand(1, generator=g) < 0.4)
        kinds[i] = [names[j] for j in torch.randperm(len(names), generator=g)[:count].tolist()]
    idx = degraded.nonzero().flatten()
    if len(idx):
        rgb[idx] = degrade(rgb[idx], [kinds[i] for i in idx.tolist()], g)
    with_object = torch.rand(n, generator=g) < 0.5
    captions = [
        caption(SHAPES[s], COLORS[c], kinds[i], bool(with_object[i]), g)
        for i, (s, c) in enumerate(zip(shape_idx.tolist(), color_idx.tolist()))
    ]
    return {
        "rgb": (rgb * 255).round().to(torch.uint8),
        "mask": torch.cat(masks),
        "shape_idx": shape_idx,
        "color_idx": color_idx,
        "azimuth": azimuth,
        "elevation": elevation,
        "degraded": degraded,
        "captions": captions,
        "edge_radius": torch.zeros(n) if radii is None else radii,
    }
