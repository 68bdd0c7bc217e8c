"""Score Distillation Sampling (DreamFusion): the classifier-free-guided score minus the injected noise."""

from __future__ import annotations

from torch import Tensor


def sds_direction(eps_null: Tensor, eps_y: Tensor, noise: Tensor, guidance_scale: float) -> Tensor:
    """Unweighted SDS gradient ``eps_null + s (eps_y - eps_null) - eps``.

    Args:
        eps_null, eps_y: (B, C, h, w) predictions for the empty prompt and the prompt y.
        noise: (B, C, h, w) the eps that was added to make x_t.
        guidance_scale: s (DreamFusion uses 100).
    Returns:
        (B, C, h, w).
    """
    return eps_null + guidance_scale * (eps_y - eps_null) - noise
