"""Cameras: look-at poses, ray generation, random samplers and turntable paths.

Conventions (shared by the NeRF, the data renderer and the priors):
- world is z-up; a camera at azimuth ``az`` and elevation ``el`` (radians) sits at
  ``d * (cos el cos az, cos el sin az, sin el)`` and looks at the origin;
- camera-to-world matrices are OpenGL style: columns are right, up, back (the camera looks along -z);
- ``fov`` is the vertical field of view in radians.
"""

from dreamnfsd.cameras.cameras import (
    CameraBatch,
    CameraSamplerConfig,
    RandomCameraSampler,
    camera_pose_features,
    camera_position,
    generate_rays,
    look_at,
    ray_direction_channels,
    turntable_cameras,
)

__all__ = [
    "CameraBatch",
    "CameraSamplerConfig",
    "RandomCameraSampler",
    "camera_pose_features",
    "camera_position",
    "generate_rays",
    "look_at",
    "ray_direction_channels",
    "turntable_cameras",
]
