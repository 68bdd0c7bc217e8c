"""Typed configuration of mesh and video export."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportConfig:
    mesh: bool = True
    video: bool = True
    mesh_resolution: int = 128
    # "auto": an SDF's zero level, or a density field's measured half-transmittance level; or a number in the
    # field's units (a density, or a signed distance)
    threshold: str = "auto"
    min_component_fraction: float = 0.05  # drop disconnected pieces with fewer faces than this share of the largest
    max_faces: int = 0  # decimate the mesh to at most this many faces (0: keep marching cubes' full mesh)
    texture_size: int = 1024  # the baked albedo texture of mesh.glb / mesh.obj (texels per side)
    video_frames: int = 60
    video_fps: int = 24
    video_resolution: int = 128
    video_elevation: float = 15.0
    ambient: float = (
        0.3  # shaded views (turntable, validation): ambient + (1 - ambient) Lambertian, light at the camera
    )
