"""Noise-Free Score Distillation (Katzir et al., 2024).

The CFG score splits into a condition term delta_C = eps_y - eps_null and a domain term delta_D. For small t
(< threshold) the unconditional prediction is already almost noise-free, so delta_D = eps_null; for large t it still
contains the noise, which is cancelled by subtracting the prediction for a negative prompt describing
out-of-domain images: delta_D = eps_null - eps_neg. No random eps is subtracted, hence "noise-free".
"""

from __future__ import annotations

import torch
from torch import Tensor


def nfsd_needs_negative(t: Tensor, t_threshold: int) -> Tensor:
    """(B,) bool: which samples need eps(p_neg), i.e. t >= ``t_threshold`` (t integer timesteps (B,))."""
    return t >= t_threshold


def nfsd_direction(
    eps_null: Tensor, eps_y: Tensor, eps_neg: Tensor, t: Tensor, guidance_scale: float, t_threshold: int
) -> Tensor:
    """Unweighted NFSD gradient ``delta_D + s delta_C``, per sample.

    Args:
        eps_null, eps_y: (B, C, h, w) predictions for the empty prompt and the prompt y.
        eps_neg: (B, C, h, w) prediction for the negative prompt; rows where t < ``t_threshold`` are never read
            (they may hold anything finite, e.g. zeros, since that prediction was not computed).
        t: (B,) integer timesteps.
        guidance_scale: s (7.5 in the paper).
    Returns:
        (B, C, h, w).
    """
    delta_c = eps_y - eps_null
    large_t = nfsd_needs_negative(t, t_threshold).view(-1, *([1] * (eps_null.dim() - 1)))
    delta_d = torch.where(large_t, eps_null - eps_neg, eps_null)
    return delta_d + guidance_scale * delta_c
