"""Volume-rendering quadrature on packed samples (emission-absorption model).

For samples i of one ray with optical depths tau_i = sigma_i * delta_i:
alpha_i = 1 - exp(-tau_i), T_i = exp(-sum_{j<i} tau_j), w_i = T_i * alpha_i, opacity = sum w_i = 1 - exp(-sum tau).
"""

from __future__ import annotations

import torch
from torch import Tensor


def exclusive_cumsum_packed(values: Tensor, ray_indices: Tensor, ranks: Tensor, n_rays: int) -> Tensor:
    """Per-ray exclusive prefix sums of packed values (M,) -> (M,), in any sample order.

    Samples are scattered into a padded (n_rays, max_rank + 1) matrix and summed along rows: a global cumsum
    minus per-ray offsets would lose float32 precision once sums reach ~1e4 (dense interiors).
    """
    if values.numel() == 0:
        return values
    n_cols = int(ranks.max().item()) + 1
    pad = values.new_zeros(n_rays, n_cols).index_put((ray_indices, ranks), values)
    incl = pad.cumsum(1)[ray_indices, ranks]
    return incl - values


def render_weights(
    sigmas: Tensor, deltas: Tensor, ray_indices: Tensor, ranks: Tensor, n_rays: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Packed sigmas, deltas (M,) -> weights, transmittance (before the sample), alphas, each (M,)."""
    tau = sigmas * deltas
    trans = torch.exp(-exclusive_cumsum_packed(tau, ray_indices, ranks, n_rays))
    alphas = 1.0 - torch.exp(-tau)
    return trans * alphas, trans, alphas


def accumulate_along_rays(weights: Tensor, ray_indices: Tensor, n_rays: int, values: Tensor | None = None) -> Tensor:
    """sum_i w_i * v_i per ray: weights (M,), values (M, C) or None (then C = 1, the opacity) -> (n_rays, C)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    return src.new_zeros(n_rays, src.shape[1]).index_add(0, ray_indices, src)


def distortion_loss(
    weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, ranks: Tensor, n_rays: int
) -> Tensor:
    """Mip-NeRF 360's distortion loss per ray, (M,) packed samples -> (n_rays,):
    sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (t_end_i - t_start_i), with m the interval midpoints.

    Low when each ray's weight sits in one short stretch: it thins soft density shells, which a grazing ray
    (a face seen edge-on) crosses over a long chord and so sees as opaque well outside the surface. Samples must
    be ordered by distance within each ray (ranks); the pair sum is then O(M): 2 sum_i w_i (m_i W_<i - (wm)_<i)."""
    mid = 0.5 * (t_starts + t_ends)
    w_before = exclusive_cumsum_packed(weights, ray_indices, ranks, n_rays)
    wm_before = exclusive_cumsum_packed(weights * mid, ray_indices, ranks, n_rays)
    per_sample = 2.0 * weights * (mid * w_before - wm_before) + weights.square() * (t_ends - t_starts) / 3.0
    return per_sample.new_zeros(n_rays).index_add(0, ray_indices, per_sample)
