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
