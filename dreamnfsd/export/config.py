"""Typed configuration of mesh and video export."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportConfig:
    mesh: bool = True
    video: bool = True
    mesh_resolution: int = 128
    threshold: str = "auto"  # a density value, or "auto"
    min_component_fraction: float = 0.05  # drop disconnected pieces with fewer faces than this share of the largest
    video_frames: int = 60
    video_fps: int = 24
    video_resolution: int = 128
    video_elevation: float = 15.0
