"""The normals' total variation: zero on a flat face, an edge costs its length not its sharpness, waves cost."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dreamnfsd.train.regularizers import normal_variation, surface_points


def _cube_normals(x: torch.Tensor) -> torch.Tensor:
    """Outward normals of the unit cube's SDF outside it: the axis of the largest coordinate."""
    k = x.abs().argmax(-1)
    return F.one_hot(k, 3).to(x) * x.gather(-1, k[:, None]).sign()


def _face_points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1.0 - 0.5
    return torch.cat([xy, torch.full((n, 1), 0.5)], dim=-1)  # the top face


def test_a_flat_face_costs_nothing_away_from_its_edges():
    pts = _face_points(500, 0) * torch.tensor([0.7, 0.7, 1.0])  # 0.15 from the edges, radius 0.05
    assert float(normal_variation(_cube_normals, pts, 0.05, torch.Generator().manual_seed(0))) < 1e-5


def test_an_edge_costs_its_length_and_waves_cost_more_than_a_cube():
    pts = _face_points(4000, 1)
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    cube = float(normal_variation(_cube_normals, pts, 0.05, g()))
    assert 0.0 < cube < 0.2  # only points within 0.05 of an edge pay

    def wavy(x: torch.Tensor) -> torch.Tensor:  # the top face tilted by a wave of 0.02 amplitude, wavelength 0.25
        slope = 0.02 * 2 * math.pi / 0.25 * torch.cos(2 * math.pi * x[:, 0] / 0.25)
        return F.normalize(torch.stack([-slope, torch.zeros_like(slope), torch.ones_like(slope)], -1), dim=-1)

    assert float(normal_variation(wavy, pts, 0.05, g())) > 1.5 * cube  # a face 0.02 out of flat, all along it


def test_gradients_reach_the_normals_and_no_points_give_zero():
    x = torch.zeros(3, 3, requires_grad=True)
    loss = normal_variation(
        lambda p: F.normalize(p + x.sum(), dim=-1) if p.shape[0] else p,
        torch.rand(3, 3),
        0.1,
        torch.Generator().manual_seed(0),
    )
    loss.backward()
    assert x.grad is not None
    assert float(normal_variation(_cube_normals, torch.zeros(0, 3), 0.05, torch.Generator())) == 0.0


def test_surface_points_are_where_opaque_rays_stop():
    o = torch.zeros(2, 2, 2, 3)
    d = F.normalize(torch.ones(2, 2, 2, 3), dim=-1)
    opacity = torch.tensor([1.0, 0.2, 0.9, 0.0, 0.7, 0.6, 0.1, 1.0]).view(2, 2, 2, 1)
    depth = torch.arange(8.0).view(2, 2, 2, 1) * opacity  # the renderer's: the weights' sum of distances
    pts = surface_points(o, d, depth, opacity, 100, torch.Generator().manual_seed(0))
    assert torch.allclose(pts.norm(dim=-1), torch.tensor([0.0, 2.0, 4.0, 5.0, 7.0]))
    assert surface_points(o, d, depth, opacity, 3, torch.Generator().manual_seed(0)).shape == (3, 3)
