"""Regularisers on rendered outputs (plain tensor functions)."""

from __future__ import annotations

import torch
from torch import Tensor


def opacity_entropy(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    """Binary entropy of per-ray opacity (any shape), averaged: pushes rays to be fully empty or fully solid."""
    o = opacity.clamp(eps, 1.0 - eps)
    return -(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o)).mean()


def opacity_sparsity(opacity: Tensor) -> Tensor:
    """Mean opacity (any shape): discourages filling empty space."""
    return opacity.mean()
