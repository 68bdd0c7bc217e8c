"""The CUDA-only nerfacc path, imported here and nowhere else, with the same packed-sample interface as the torch
marcher and compositor beside it (ray_marching.march, compositing.render_weights).

nerfacc 0.5.3 on CPU can build an OccGridEstimator but its sampling and every packed op need CUDA kernels, so
"auto" picks nerfacc only for CUDA inputs when it imports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from dreamnfsd.rendering.occupancy_grid import OccupancyGrid
from dreamnfsd.rendering.ray_marching import PackedSamples, ranks_from_ray_indices

log = logging.getLogger(__name__)
_logged: set[tuple[str, str, str]] = set()


def nerfacc_available() -> bool:
    """True when nerfacc imports and a CUDA device exists."""
    if not torch.cuda.is_available():
        return False
    try:
        import nerfacc  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def resolve_backend(requested: str, device: torch.device) -> str:
    """auto -> nerfacc for CUDA inputs when usable, else torch. Each distinct choice is logged once."""
    if requested not in ("auto", "torch", "nerfacc"):
        raise ValueError(f"unknown renderer backend {requested!r}")
    usable = device.type == "cuda" and nerfacc_available()
    if requested == "nerfacc" and not usable:
        raise RuntimeError("backend='nerfacc' needs nerfacc importable and CUDA inputs")
    chosen = "nerfacc" if requested == "nerfacc" or (requested == "auto" and usable) else "torch"
    key = (requested, device.type, chosen)
    if key not in _logged:
        _logged.add(key)
        log.info("Renderer backend: %s (config %s, device %s)", chosen, requested, device.type)
    return chosen


def make_estimator(grid: OccupancyGrid):
    """A nerfacc OccGridEstimator over the same box and resolution as ``grid`` (state copied by sync_estimator)."""
    import nerfacc

    return nerfacc.OccGridEstimator(roi_aabb=grid.aabb.tolist(), resolution=grid.resolution, levels=1).to(
        grid.aabb.device
    )


def sync_estimator(estimator, grid: OccupancyGrid) -> None:
    """Copy the grid's occupancy into the estimator (same x-major cell layout, so a plain copy)."""
    estimator.binaries.copy_(grid.binaries[None])
    estimator.occs.copy_(grid.occs.clamp(max=1e30))


def nerfacc_march(
    estimator,
    origins: Tensor,
    dirs: Tensor,
    step_size: float,
    sigma_fn: Callable[[Tensor], Tensor] | None,
    early_stop_eps: float,
    stratified: bool,
    near: float = 0.0,
) -> PackedSamples:
    """nerfacc's grid traversal; with sigma_fn (points (M, 3) -> sigma (M,)) it also drops samples after the
    transmittance falls below early_stop_eps (one extra no-grad density pass, nerfacc's way)."""

    def _sigma(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        assert sigma_fn is not None  # only handed to nerfacc when there is one
        mid = 0.5 * (t_starts + t_ends)
        return sigma_fn(origins[ray_indices] + mid[:, None] * dirs[ray_indices])

    ray_indices, t_starts, t_ends = estimator.sampling(
        origins,
        dirs,
        sigma_fn=_sigma if sigma_fn is not None else None,
        near_plane=near,
        render_step_size=step_size,
        early_stop_eps=early_stop_eps,
        stratified=stratified,
    )
    ray_indices = ray_indices.long()
    n = origins.shape[0]
    return PackedSamples(ray_indices, t_starts, t_ends, ranks_from_ray_indices(ray_indices, n), n)


def nerfacc_weights(sigmas: Tensor, samples: PackedSamples) -> Tensor:
    """nerfacc's packed weights (CUDA): (M,)."""
    import nerfacc

    weights, _, _ = nerfacc.render_weight_from_density(
        samples.t_starts, samples.t_ends, sigmas, ray_indices=samples.ray_indices, n_rays=samples.n_rays
    )
    return weights
