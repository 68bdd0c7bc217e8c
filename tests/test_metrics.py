"""Silhouette metrics of the quality benchmark on known answers: the true primitive turned, or resized."""

from __future__ import annotations

import math

import torch

from dreamnfsd.eval.metrics import best_rotation_iou, best_scale_iou, mask_iou, true_masks

AZ = torch.tensor([math.radians(a) for a in range(0, 360, 45)])
EL = torch.full((8,), math.radians(15.0))


def test_turned_cube_is_found_at_its_rotation():
    pred = true_masks("cube", AZ - math.radians(20.0), EL, 32)
    assert float(mask_iou(pred, true_masks("cube", AZ, EL, 32)).mean()) < 0.95
    iou, rotation = best_rotation_iou(pred, "cube", AZ, EL)
    assert iou == 1.0 and rotation % 90.0 == 20.0  # a cube repeats every 90°


def test_size_gap_shows_in_the_diagnostic_not_in_the_iou():
    pred = true_masks("cylinder", AZ, EL, 32, scale=1.08)
    iou, rotation = best_rotation_iou(pred, "cylinder", AZ, EL)
    assert iou < 0.9  # 8% too large: the benchmark's IoU counts it
    any_size, size = best_scale_iou(pred, "cylinder", AZ, EL, rotation, torch.arange(0.85, 1.151, 0.01))
    assert any_size == 1.0 and abs(size - 1.08) < 0.006


def test_empty_prediction_scores_zero():
    empty = torch.zeros(8, 32, 32, dtype=torch.bool)
    assert best_rotation_iou(empty, "sphere", AZ, EL)[0] == 0.0
    assert float(mask_iou(empty, empty).max()) == 0.0


def test_rotation_grid_finds_a_cube_turned_between_5_degree_steps():
    pred = true_masks("cube", AZ - math.radians(2.0), EL, 32)
    assert best_rotation_iou(pred, "cube", AZ, EL, step_deg=5.0)[0] < 1.0  # the old grid missed it
    iou, rotation = best_rotation_iou(pred, "cube", AZ, EL)
    assert iou == 1.0 and rotation % 90.0 == 2.0


def test_a_perfect_cube_scores_one():
    """The truth is sampled as a render is: an exact cube ray-cast through the pixel centres scores IoU 1, but for
    about two pixels a view whose centre ray grazes an edge (the sphere tracer counts a 2e-3 miss as a hit). Against
    2x2-supersampled coverage > 0.5 (3 of 4 sub-rays) it scored 0.959 from the side."""
    from dreamnfsd.data import make_cameras, render_primitives
    from dreamnfsd.rendering import ray_aabb_intersect

    for elevation, eroded in ((15.0, 0.96), (85.0, 0.981)):
        el = torch.full((8,), math.radians(elevation))
        o, d = make_cameras(AZ, el, 32).rays()
        t0, t1, _ = ray_aabb_intersect(o.reshape(-1, 3), d.reshape(-1, 3), torch.tensor([-0.5] * 3 + [0.5] * 3))
        pred = (t1 > t0).view(8, 32, 32)
        iou, rotation = best_rotation_iou(pred, "cube", AZ, el)
        assert iou > 0.99 and rotation == 0.0
        old = (
            render_primitives(
                ["cube"] * 8,
                ["red"] * 8,
                AZ,
                el,
                32,
                supersample=2,
                light_jitter=0.0,
                scale=torch.tensor(1.0),
                generator=torch.Generator(),
            )["mask"][:, 0]
            > 0.5
        )
        assert float(mask_iou(pred, old).mean()) < eroded
