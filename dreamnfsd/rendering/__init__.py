"""Rendering: occupancy grid, ray marching, compositing, the volume renderer and the optional nerfacc backend."""

from dreamnfsd.rendering.backends import nerfacc_available, resolve_backend
from dreamnfsd.rendering.compositing import (
    accumulate_along_rays,
    distortion_loss,
    exclusive_cumsum_packed,
    render_weights,
)
from dreamnfsd.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
from dreamnfsd.rendering.ray_marching import PackedSamples, candidate_intervals, march, ray_aabb_intersect
from dreamnfsd.rendering.renderer import RendererConfig, VolumeRenderer

__all__ = [
    "OccupancyGrid",
    "OccupancyGridConfig",
    "PackedSamples",
    "RendererConfig",
    "VolumeRenderer",
    "accumulate_along_rays",
    "candidate_intervals",
    "distortion_loss",
    "exclusive_cumsum_packed",
    "march",
    "nerfacc_available",
    "ray_aabb_intersect",
    "render_weights",
    "resolve_backend",
]
