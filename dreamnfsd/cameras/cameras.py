"""Look-at poses, pinhole rays, a random camera sampler and a turntable path (see package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def camera_position(azimuth: Tensor, elevation: Tensor, distance: Tensor) -> Tensor:
    """Camera centres on a z-up sphere. Inputs (B,) in radians; returns (B, 3)."""
    ce = torch.cos(elevation)
    return distance[:, None] * torch.stack(
        [ce * torch.cos(azimuth), ce * torch.sin(azimuth), torch.sin(elevation)], dim=-1
    )


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """OpenGL camera-to-world matrices looking from ``eye`` (B, 3) at ``target`` (B, 3). Returns (B, 4, 4)."""
    if target is None:
        target = torch.zeros_like(eye)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    back = torch.nn.functional.normalize(eye - target, dim=-1)
    right = torch.linalg.cross(up, back, dim=-1)
    # Straight up or down the up axis the cross product vanishes; any horizontal right vector is valid there.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    cam_up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, eye
    return c2w


def generate_rays(
    c2w: Tensor, fov: Tensor, height: int, width: int, offsets: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Pinhole rays through pixel centres, or through the centres moved by ``offsets``.

    Args:
        c2w: (B, 4, 4) camera-to-world. fov: (B,) vertical field of view in radians.
        offsets: optional (B, H, W, 2) shifts in pixels (row, column), e.g. uniform in [-0.5, 0.5).
    Returns:
        origins (B, H, W, 3) and unit directions (B, H, W, 3).
    """
    device, dtype = c2w.device, c2w.dtype
    focal = 0.5 * height / torch.tan(0.5 * fov)  # (B,)
    j = torch.arange(width, device=device, dtype=dtype) + 0.5
    i = torch.arange(height, device=device, dtype=dtype) + 0.5
    ii, jj = (g[None] for g in torch.meshgrid(i, j, indexing="ij"))
    if offsets is not None:
        ii, jj = ii + offsets[..., 0], jj + offsets[..., 1]
    x = (jj - 0.5 * width) / focal[:, None, None]
    y = -(ii - 0.5 * height) / focal[:, None, None]
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    dirs = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], dirs_cam)
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


@dataclass
class CameraBatch:
    """A batch of cameras. Angles in radians; all tensors have leading dim B."""

    c2w: Tensor  # (B, 4, 4)
    fov: Tensor  # (B,)
    azimuth: Tensor  # (B,)
    elevation: Tensor  # (B,)
    distance: Tensor  # (B,)
    height: int
    width: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def rays(self, pixel_jitter: float = 0.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(origins, directions), each (B, H, W, 3). ``pixel_jitter`` > 0 moves each ray uniformly within that
        fraction of its pixel (drawn from ``generator``); 0 keeps the pixel centres and draws nothing."""
        offsets = None
        if pixel_jitter > 0:
            offsets = pixel_jitter * (torch.rand(len(self), self.height, self.width, 2, generator=generator) - 0.5)
            offsets = offsets.to(self.c2w)
        return generate_rays(self.c2w, self.fov, self.height, self.width, offsets)

    def to(self, device: torch.device | str) -> CameraBatch:
        return CameraBatch(
            self.c2w.to(device),
            self.fov.to(device),
            self.azimuth.to(device),
            self.elevation.to(device),
            self.distance.to(device),
            self.height,
            self.width,
        )

    @staticmethod
    def from_angles(
        azimuth: Tensor, elevation: Tensor, distance: Tensor, fov: Tensor, height: int, width: int
    ) -> CameraBatch:
        c2w = look_at(camera_position(azimuth, elevation, distance))
        return CameraBatch(c2w, fov, azimuth, elevation, distance, height, width)


@dataclass
class CameraSamplerConfig:
    """Ranges for random cameras, in degrees (angles) and scene units (distance)."""

    height: int = 64
    width: int = 64
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (3.0, 3.0)
    fov_range: tuple[float, float] = (40.0, 40.0)
    # Training rays fall anywhere in their pixel (1) instead of at its centre (0), so over the steps a view samples
    # each pixel's area, as the area-averaged (anti-aliased) images a prior was trained on do. An SDF run's coarse
    # density stage renders pixel centres regardless (dreamnfsd.train.trainer.pixel_jitter_at).
    pixel_jitter: float = 0.0
    # Standard deviations of small perturbations: camera centre (scene units), look-at target, up vector.
    center_perturb: float = 0.0
    target_perturb: float = 0.0
    up_perturb: float = 0.0


class RandomCameraSampler:
    """Draws random cameras from a :class:`CameraSamplerConfig` using an explicit generator."""

    def __init__(self, cfg: CameraSamplerConfig):
        self.cfg = cfg

    def sample(self, batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu") -> CameraBatch:
        c = self.cfg

        def uniform(lo_hi: tuple[float, float]) -> Tensor:
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(batch_size, generator=generator)

        # Elevation is drawn uniformly on the sphere's height so views are not bunched at the pole.
        lo, hi = (math.sin(math.radians(e)) for e in c.elevation_range)
        elevation = torch.asin(lo + (hi - lo) * torch.rand(batch_size, generator=generator))
        azimuth = torch.deg2rad(uniform(c.azimuth_range))
        distance = uniform(c.distance_range)
        fov = torch.deg2rad(uniform(c.fov_range))
        eye = camera_position(azimuth, elevation, distance)
        eye = eye + c.center_perturb * torch.randn(batch_size, 3, generator=generator)
        target = c.target_perturb * torch.randn(batch_size, 3, generator=generator)
        up = torch.tensor([0.0, 0.0, 1.0]) + c.up_perturb * torch.randn(batch_size, 3, generator=generator)
        c2w = look_at(eye, target, up)
        batch = CameraBatch(c2w, fov, azimuth, elevation, distance, c.height, c.width)
        return batch.to(device)


def turntable_cameras(
    n_frames: int,
    elevation_deg: float = 15.0,
    distance: float = 3.0,
    fov_deg: float = 40.0,
    height: int = 64,
    width: int = 64,
    device: str | torch.device = "cpu",
) -> CameraBatch:
    """A fixed orbit of ``n_frames`` cameras at one elevation, azimuth from 0 to 360 degrees (exclusive)."""
    az = torch.linspace(0, 2 * math.pi, n_frames + 1)[:-1]
    full = lambda v: torch.full((n_frames,), float(v))
    return CameraBatch.from_angles(
        az, full(math.radians(elevation_deg)), full(distance), full(math.radians(fov_deg)), height, width
    ).to(device)


def ray_direction_channels(camera: CameraBatch | None, batch_size: int, resolution: int) -> Tensor:
    """Per-pixel world ray directions as image channels, the camera input of camera-aware priors.

    A camera is given to a pixel-space prior as 3 extra input channels, so the network sees directly which world
    direction each pixel looks along. ``None`` (camera dropped, or a text-only call) gives zeros.

    Returns (B, 3, resolution, resolution).
    """
    if camera is None:
        return torch.zeros(batch_size, 3, resolution, resolution)
    _, dirs = generate_rays(camera.c2w, camera.fov, resolution, resolution)
    return dirs.permute(0, 3, 1, 2).contiguous()


def camera_pose_features(camera: CameraBatch | None, batch_size: int, harmonics: int = 4) -> Tensor:
    """Azimuth harmonics and elevation of each camera centre, the global camera input of camera-aware priors.

    Features are ``sin(k az), cos(k az)`` for k = 1..harmonics, then ``sin el, cos el``, read from the camera centre
    in ``c2w`` (so jittered or hand-made cameras agree with their pose). Harmonics up to 4 matter because an
    axis-aligned cube looks the same every 90 degrees: its azimuth signal sits at 4 az, which a network fed only
    ``sin az, cos az`` has to synthesise and, in practice, did not. ``None`` gives zeros (camera dropped).

    Returns (B, 2 * harmonics + 2).
    """
    if camera is None:
        return torch.zeros(batch_size, 2 * harmonics + 2)
    eye = camera.c2w[:, :3, 3].float()
    az = torch.atan2(eye[:, 1], eye[:, 0])
    el = torch.asin((eye[:, 2] / eye.norm(dim=-1).clamp(min=1e-8)).clamp(-1, 1))
    k = torch.arange(1, harmonics + 1, device=eye.device, dtype=eye.dtype)
    ka = az[:, None] * k
    return torch.cat([ka.sin(), ka.cos(), el.sin()[:, None], el.cos()[:, None]], dim=-1)
