"""Quality metrics of a text-to-3D result on the built-in domain (plain tensor functions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dreamnfsd.data import ALBEDO, render_primitives


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boolean masks (..., H, W) -> (...). Two empty masks count as 0 (nothing was made)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def true_masks(shape: str, azimuth: Tensor, elevation: Tensor, resolution: int) -> Tensor:
    """Silhouettes (V, H, W) bool of the canonical (unjittered) primitive seen from the given cameras (radians)."""
    out = render_primitives([shape] * azimuth.shape[0], ["red"] * azimuth.shape[0], azimuth, elevation,
                            resolution=resolution, scale_jitter=0.0, light_jitter=0.0)
    return out["mask"][:, 0] > 0.5


def best_rotation_iou(pred: Tensor, shape: str, azimuth: Tensor, elevation: Tensor, step_deg: float = 5.0) -> float:
    """Mean IoU of predicted silhouettes pred (V, H, W) against the true primitive, maximised over one rotation of
    the object about the vertical axis (a generated object may be turned; that is not an error)."""
    best = 0.0
    for delta in torch.arange(0.0, 360.0, step_deg):
        truth = true_masks(shape, azimuth - math.radians(float(delta)), elevation, pred.shape[-1])
        best = max(best, float(mask_iou(pred, truth).mean()))
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
