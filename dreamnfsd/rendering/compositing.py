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
