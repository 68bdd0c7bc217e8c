"""Quality metrics of a text-to-3D result on the built-in domain (plain tensor functions)."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from dreamnfsd.data import ALBEDO, render_primitives
from dreamnfsd.eval.geometry import SYMMETRY_PERIOD_DEG


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boolean masks (..., H, W) -> (...). Two empty masks count as 0 (nothing was made)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def true_masks(shape: str, azimuth: Tensor, elevation: Tensor, resolution: int, scale: float = 1.0) -> Tensor:
    """Silhouettes (V, H, W) bool of the canonical (unjittered) primitive, scaled by ``scale``, seen from the given
    cameras (radians). Cached: a benchmark asks for the same views of each shape in every run. Do not modify."""
    return _true_masks(shape, tuple(azimuth.tolist()), tuple(elevation.tolist()), resolution, float(scale))


# Truth is sampled as the prediction is: one ray through each pixel centre (the renderer's opacity > 0.5 for a sharp
# surface is "the centre ray hits"). A 2x2-supersampled coverage > 0.5 needs 3 of 4 sub-rays, which erodes edges
# half-cut by a pixel: a perfect cube then scored only 0.96 (side) and 0.98 (top) against it.
TRUTH_SUPERSAMPLE = 1


@functools.lru_cache(maxsize=8192)
def _true_masks(shape: str, azimuth: tuple, elevation: tuple, resolution: int, scale: float) -> Tensor:
    n = len(azimuth)
    out = render_primitives(
        [shape] * n,
        ["red"] * n,
        torch.tensor(azimuth),
        torch.tensor(elevation),
        resolution=resolution,
        supersample=TRUTH_SUPERSAMPLE,
        light_jitter=0.0,
        scale=torch.tensor(scale),
        generator=torch.Generator(),
    )  # a cache hit or miss must not move the global RNG
    return out["mask"][:, 0] > 0.5


# The rotation search's grid. A 5° grid can miss the best rotation by 2.5°, which at 32 px moves a cube's top-view
# corners by about half a pixel and understated cube top IoUs by about 0.01; below 1° nothing changed.
ROTATION_STEP_DEG = 1.0


def best_rotation_iou(
    pred: Tensor, shape: str, azimuth: Tensor, elevation: Tensor, step_deg: float = ROTATION_STEP_DEG
) -> tuple[float, float]:
    """Mean IoU of predicted silhouettes pred (V, H, W) against the true primitive, maximised over one rotation of
    the object about the vertical axis (a generated object may be turned; that is not an error), searched on a
    ``step_deg`` grid.

    Only one symmetry period of the primitive is searched (a cube's 90 degrees; one angle for the round shapes):
    the rest repeat the same silhouettes.

    Returns (IoU, the rotation in degrees that reaches it)."""
    best = (0.0, 0.0)
    for delta in torch.arange(0.0, SYMMETRY_PERIOD_DEG.get(shape, step_deg), step_deg).tolist():
        truth = true_masks(shape, azimuth - math.radians(delta), elevation, pred.shape[-1])
        best = max(best, (float(mask_iou(pred, truth).mean()), delta), key=lambda r: r[0])
    return best


def best_scale_iou(
    pred: Tensor, shape: str, azimuth: Tensor, elevation: Tensor, rotation_deg: float, scales: Tensor
) -> tuple[float, float]:
    """Diagnostic beside :func:`best_rotation_iou`: the same IoU at a fixed rotation, maximised over the object's
    size too. Says how much of a silhouette gap is size alone (at 32 px a primitive 5% too large already scores
    about 0.9 against itself), which the prior's training scale jitter leaves free.

    Returns (IoU, the scale that reaches it)."""
    best = (0.0, 1.0)
    for scale in scales.tolist():
        truth = true_masks(shape, azimuth - math.radians(rotation_deg), elevation, pred.shape[-1], scale)
        best = max(best, (float(mask_iou(pred, truth).mean()), scale), key=lambda r: r[0])
    return best


def colour_error(albedo: Tensor, opacity: Tensor, colour: str) -> float:
    """Distance in RGB between the opacity-weighted mean albedo (V, H, W, 3) and the true colour's albedo."""
    w = opacity.clamp(0, 1)
    if float(w.sum()) <= 0:
        return math.sqrt(3.0)
    mean = (albedo * w).flatten(0, -2).sum(0) / w.flatten().sum()
    return float((mean - torch.tensor(ALBEDO[colour])).norm())


def broken_views(opacity: Tensor, low: float = 0.01, high: float = 0.9) -> Tensor:
    """(V,) bool: views whose object covers under ``low`` (empty) or over ``high`` (fills the frame) of pixels."""
    cover = (opacity[..., 0] > 0.5).flatten(-2).float().mean(-1)
    return (cover < low) | (cover > high)
