"""Frames to files: turntable videos and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreamnfsd.utils.files import REEXPORT_HINT, atomic_output


def to_uint8(image: Tensor) -> np.ndarray:
    """(..., H, W, C) float in [0, 1] -> uint8 numpy; a single channel is repeated to RGB."""
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def normals_to_rgb(normal: Tensor, opacity: Tensor, background: float = 1.0) -> Tensor:
    """World normals (..., 3) in [-1, 1] to colours (..., 3), composited over ``background`` by opacity (..., 1)."""
    return (0.5 * (normal + 1.0)) * opacity + background * (1.0 - opacity)


def side_by_side(*images: Tensor) -> Tensor:
    """Concatenate (..., H, W, 3 or 1) images along the width."""
    return torch.cat([im.expand(*im.shape[:-1], 3) for im in images], dim=-2)


def image_grid(*rows: Tensor) -> Tensor:
    """Rows of views (N, H, W, 3 or 1) -> one image (rows * H, N * W, 3): each row's views side by side."""
    return torch.cat([side_by_side(*row.unbind(0)) for row in rows], dim=0)


def evenly_spaced(n: int, k: int) -> Tensor:
    """``min(k, n)`` indices (long) spread evenly over ``range(n)``, starting at 0, for a cyclic sequence such as a
    turntable (the report's ``media.evenly`` keeps the last item too, which on a turntable repeats the first view)."""
    return (torch.arange(min(k, n)) * n) // max(min(k, n), 1)


def write_video(frames: Tensor, path: Path, fps: int) -> Path:
    """Write (N, H, W, 3) frames in [0, 1] as an H.264 mp4 (imageio-ffmpeg ships its own ffmpeg)."""
    import imageio.v2 as imageio

    with atomic_output(Path(path), REEXPORT_HINT) as tmp:
        # macro_block_size=1 keeps odd sizes as they are instead of silently resizing them.
        imageio.mimwrite(tmp, list(to_uint8(frames)), fps=fps, macro_block_size=1, quality=8)
    return Path(path)


def write_image(image: Tensor, path: Path) -> Path:
    import imageio.v2 as imageio

    with atomic_output(Path(path), REEXPORT_HINT) as tmp:
        imageio.imwrite(tmp, to_uint8(image))
    return Path(path)
