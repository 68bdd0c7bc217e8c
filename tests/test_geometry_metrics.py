"""The 3D metrics calibrated on known answers: exact primitives, a resized one, a hollow shell, a cloud of blobs,
an inside-out mesh, and rendered normals/depth of the truth against itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from dreamnfsd.data import SHAPES, make_cameras, render_primitives
from dreamnfsd.eval.geometry import (
    GeometrySettings,
    analytic_mesh,
    image_geometry_errors,
    mesh_geometry_metrics,
    volumetric_iou,
)

FAST = GeometrySettings(n_samples=50_000)


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_primitive_scores_perfectly(shape):
    m = mesh_geometry_metrics(analytic_mesh(shape), shape, FAST)
    assert m["iou"] >= 0.99 and m["fscore"] >= 0.99, m
    assert m["chamfer"] < 0.006 and m["normal_consistency"] > 0.99, m
    assert m["components"] == 1 and m["watertight"] and m["volume"] > 0
    assert m["area_ratio"] == pytest.approx(1.0, abs=0.01) and m["volume"] == pytest.approx(m["true_volume"], 0.01)


def test_turned_cube_is_found_at_its_rotation_and_is_axis_aligned_there():
    mesh = analytic_mesh("cube")
    mesh.apply_transform(trimesh.transformations.rotation_matrix(math.radians(23.0), (0, 0, 1)))
    m = mesh_geometry_metrics(mesh, "cube", FAST)
    assert m["rotation_deg"] == 23.0 and m["iou"] > 0.99 and m["axis_aligned_share"] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_a_mesh_ten_percent_too_large_scores_the_closed_form_iou(shape):
    mesh = analytic_mesh(shape)
    mesh.apply_scale(1.1)
    iou = volumetric_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), shape)
    assert iou == pytest.approx(1.0 / 1.1**3, abs=0.003)  # the truth lies inside it: IoU = V / (1.331 V)
    m = mesh_geometry_metrics(mesh, shape, FAST)
    # Its surface is 0.05-0.06 away everywhere: no sample is within 0.02, and the Chamfer distance says by how much.
    assert m["fscore"] < 0.05 and m["chamfer"] == pytest.approx(0.05 if shape == "cube" else 0.06, abs=0.006)
    # Its shape is right: brought back to the true volume, it scores like the truth.
    assert m["volume_scale"] == pytest.approx(1 / 1.1, abs=0.002) and m["fscore_true_volume"] > 0.99


def test_a_squashed_cube_keeps_a_low_f_score_at_the_true_volume():
    """The size diagnostic separates size from shape: a box 1.2 x 1.2 x 0.7 has about the true volume (1.008) and
    the wrong shape, so rescaling it to the true volume cannot rescue its F-score."""
    box = trimesh.creation.box(extents=(1.2, 1.2, 0.7))
    m = mesh_geometry_metrics(box, "cube", FAST)
    assert m["volume_scale"] == pytest.approx(1.008 ** (-1 / 3), abs=0.001)
    assert m["fscore_true_volume"] < 0.2 and m["fscore_true_volume"] == pytest.approx(m["fscore"], abs=0.05)


def test_hollow_shell_with_the_right_outline_scores_low():
    inner = trimesh.creation.box(extents=(0.9, 0.9, 0.9))
    inner.invert()  # a cavity: its faces point into the hole
    shell = trimesh.util.concatenate([analytic_mesh("cube"), inner])
    m = mesh_geometry_metrics(shell, "cube", FAST)
    assert m["iou"] == pytest.approx(1 - 0.9**3, abs=0.01)  # only the walls are solid
    assert m["components"] == 2 and m["area_ratio"] > 1.7 and m["precision"] < 0.6


def test_cloud_of_blobs_with_the_right_outline_scores_low():
    centres = np.arange(-0.45, 0.451, 0.1)
    blobs = [
        trimesh.creation.icosphere(subdivisions=1, radius=0.045).apply_translation((x, y, z))
        for x in centres
        for y in centres
        for z in centres
    ]
    cloud = trimesh.util.concatenate(blobs)
    m = mesh_geometry_metrics(cloud, "cube", FAST)
    assert m["iou"] < 0.4 and m["fscore"] < 0.5 and m["normal_consistency"] < 0.8, m
    assert m["components"] == 1000 and m["area_ratio"] > 3.5


def test_inside_out_mesh_has_negative_volume():
    mesh = analytic_mesh("sphere")
    mesh.invert()
    m = mesh_geometry_metrics(mesh, "sphere", FAST)
    assert m["volume"] < 0 and m["iou"] > 0.99  # parity does not care; the sanity check does
    assert m["volume_scale"] is None and m["fscore_true_volume"] is None  # no size to bring back


def test_truth_rendered_against_itself_has_no_image_error_and_a_turned_normal_does():
    az = torch.tensor([0.0, math.radians(45.0)])
    el = torch.tensor([math.radians(15.0), math.radians(85.0)])
    t = render_primitives(["torus", "torus"], ["red", "red"], az, el, 32, supersample=1, scale=torch.tensor(1.0))
    normal, depth = t["normal"].permute(0, 2, 3, 1), t["depth"][:, 0]
    mask = t["mask"][:, 0] > 0.5
    same = image_geometry_errors(normal, depth, mask, normal, depth, mask)
    assert same["normal_angle_deg"] < 0.1 and same["depth_rel_error"] == 0.0 and same["pixels"] > 100
    flipped = image_geometry_errors(-normal, depth * 1.1, mask, normal, depth, mask)
    assert flipped["normal_angle_deg"] > 179 and flipped["depth_rel_error"] == pytest.approx(0.1, abs=1e-5)
    assert make_cameras(az, el, 32).height == 32
