"""Regularisers on rendered outputs (plain tensor functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def opacity_entropy(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    """Binary entropy of per-ray opacity (any shape), averaged: pushes rays to be fully empty or fully solid."""
    o = opacity.clamp(eps, 1.0 - eps)
    return -(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o)).mean()


def opacity_sparsity(opacity: Tensor) -> Tensor:
    """Mean opacity (any shape): discourages filling empty space."""
    return opacity.mean()


def surface_points(
    origins: Tensor, dirs: Tensor, depth: Tensor, opacity: Tensor, n: int, generator: torch.Generator
) -> Tensor:
    """Up to ``n`` points (M, 3), M <= n, where rendered rays meet the surface: ``o + (depth / opacity) * d`` for
    rays (any shape, last dim 3; depth and opacity: same shape with last dim 1) that are more than half opaque, drawn
    without replacement. ``depth`` is the renderer's, the weights' sum of distances, so it is divided by the weights'
    sum to be a distance. Detached: they only say where to look."""
    hit = opacity.reshape(-1) > 0.5
    distance = depth.reshape(-1, 1) / opacity.reshape(-1, 1).clamp(min=0.5)
    pts = (origins.reshape(-1, 3) + distance * dirs.reshape(-1, 3))[hit].detach()
    if pts.shape[0] > n:
        pts = pts[torch.randperm(pts.shape[0], generator=generator, device="cpu")[:n].to(pts.device)]
    return pts


def normal_variation(normals_fn, points: Tensor, radius: float, generator: torch.Generator) -> Tensor:
    """Mean ``|n(x) - n(x + radius * u)|`` over ``points`` (M, 3), u a random unit vector per point, n the unit
    normals of ``normals_fn`` ((K, 3) -> (K, 3)). The norm, not its square: a total variation of the normals, so a
    flat face costs nothing and an edge costs its length whatever its sharpness, while a wavy face pays along all of
    it (a squared curvature term costs an edge most of all). 0 for no points."""
    if points.shape[0] == 0:
        return points.new_zeros(())
    u = F.normalize(torch.randn(points.shape, generator=generator, device="cpu").to(points), dim=-1)
    n = normals_fn(torch.cat([points, points + radius * u]))
    a, b = n.split(points.shape[0])
    return ((a - b).square().sum(-1) + 1e-12).sqrt().mean()
