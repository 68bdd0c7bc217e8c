"""Pinhole rays: pixel centres by default, and sub-pixel jitter that stays inside each ray's own pixel."""

from __future__ import annotations

import math

import torch

from dreamnfsd.cameras import CameraBatch


def _pixel_coords(cams: CameraBatch, dirs: torch.Tensor) -> torch.Tensor:
    """Where directions (B, H, W, 3) cross the image plane, in pixels (row, column): (B, H, W, 2)."""
    local = torch.einsum("bji,bhwj->bhwi", cams.c2w[:, :3, :3], dirs)  # world -> camera (R^T d)
    focal = 0.5 * cams.height / torch.tan(0.5 * cams.fov)
    col = local[..., 0] / -local[..., 2] * focal[:, None, None] + 0.5 * cams.width
    row = -local[..., 1] / -local[..., 2] * focal[:, None, None] + 0.5 * cams.height
    return torch.stack([row, col], dim=-1)


def test_pixel_jitter_moves_rays_within_their_own_pixel_and_zero_draws_nothing():
    cams = CameraBatch.from_angles(
        torch.tensor([0.3, 2.0]),
        torch.tensor([0.2, math.radians(40)]),
        torch.tensor([3.0, 3.0]),
        torch.deg2rad(torch.tensor([40.0, 40.0])),
        6,
        5,
    )
    grid = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij"), dim=-1)  # (H, W, 2)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    _, centred = cams.rays(0.0, g)
    assert torch.equal(g.get_state(), state)  # runs without jitter keep their random stream
    assert torch.allclose(_pixel_coords(cams, centred), grid + 0.5, atol=1e-4)
    origins, jittered = cams.rays(1.0, g)
    offset = _pixel_coords(cams, jittered) - grid
    assert (offset > 0).all() and (offset < 1).all()  # inside the pixel...
    assert offset.std() > 0.2 and torch.allclose(jittered.norm(dim=-1), torch.ones(2, 6, 5))  # ...and spread over it
    assert torch.equal(origins, cams.rays()[0])
    _, again = cams.rays(1.0, torch.Generator().manual_seed(0))
    assert torch.equal(again, jittered)  # the generator decides the offsets
