"""The signed-distance field: its sphere start, finite differences, NeuS opacity, rendering and its mesh."""

from __future__ import annotations

import math

import pytest
import torch

from dreamnfsd.data import make_cameras
from dreamnfsd.eval.metrics import mask_iou, true_masks
from dreamnfsd.export.mesh import extract_mesh
from dreamnfsd.models import Background, BackgroundConfig, FieldConfig, HashEncodingConfig, SDFConfig, build_field
from dreamnfsd.models.sdf_field import SDFField, alpha_to_density, curvature_penalty, neus_alpha, sharpness_at
from dreamnfsd.rendering import OccupancyGrid, OccupancyGridConfig, RendererConfig, VolumeRenderer, render_weights


def small_sdf(radius: float = 0.5, sharpness: float = 400.0) -> SDFField:
    torch.manual_seed(0)
    enc = HashEncodingConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.5)
    sdf = SDFConfig(init_radius=radius, sharpness_start=sharpness, sharpness_end=sharpness)
    field = build_field(FieldConfig(kind="sdf", encoding=enc, hidden_dim=16, sdf=sdf))
    assert isinstance(field, SDFField)
    return field


def test_field_starts_as_an_exact_sphere_with_unit_gradient_and_its_laplacian():
    field = small_sdf(0.5)
    x = torch.rand(500, 3) * 1.6 - 0.8
    x = x[x.norm(dim=-1) > 0.4]
    d = field.differentials(x)
    r = x.norm(dim=-1)
    assert torch.allclose(d["sdf"], r - 0.5, atol=1e-6)
    # The tetrahedron's differences are first-order accurate (its corners' third moments do not cancel): the
    # error is about fd_eps times the curvature 1/r.
    assert torch.allclose(d["gradient"], x / r[:, None], atol=0.03)
    assert torch.allclose(d["laplacian"], 2.0 / r, rtol=0.1)  # the Laplacian of |x| in 3D
    assert torch.allclose(field.normals(x), x / r[:, None], atol=0.03)


def test_curvature_term_is_the_laplacians_square_or_with_curvature_l1_its_magnitude():
    x = torch.tensor([[0.7, 0.0, 0.0], [0.0, -0.9, 0.3], [0.2, 0.2, 0.8]])
    dirs, deltas = -x / x.norm(dim=-1, keepdim=True), torch.full((3,), 0.01)
    field = small_sdf(0.5)
    squared = field.render_samples(x, dirs, deltas)["curvature"]
    field.cfg.sdf.curvature_l1 = True
    l1 = field.render_samples(x, dirs, deltas)["curvature"]
    lap = field.differentials(x)["laplacian"]
    assert torch.allclose(squared, lap.square()) and torch.allclose(l1, lap.abs())
    assert torch.allclose(l1, 2.0 / x.norm(dim=-1), rtol=0.1)  # |laplacian| of the sphere's |x| - r


def test_huber_curvature_is_the_square_below_its_threshold_and_a_line_of_the_same_slope_above():
    lap = torch.tensor([-40.0, -20.0, -5.0, 0.0, 3.0, 19.9, 20.0, 50.0], requires_grad=True)
    pen = curvature_penalty(lap, huber=20.0)
    small = lap.abs() < 20
    assert torch.allclose(pen[small], lap[small].square())
    assert torch.allclose(pen[~small], 40.0 * lap[~small].abs() - 400.0)
    (grad,) = torch.autograd.grad(pen.sum(), lap)
    assert torch.allclose(grad, (2 * lap).clamp(-40, 40))  # continuous slope, capped at 2 d
    assert torch.equal(curvature_penalty(lap), lap.square()) and torch.equal(curvature_penalty(lap, l1=True), lap.abs())


def test_sharpness_schedule_and_state():
    assert sharpness_at(0.0, 20, 400, 0.8) == 20 and sharpness_at(0.8, 20, 400, 0.8) == pytest.approx(400)
    assert sharpness_at(0.4, 20, 400, 0.8) == pytest.approx(math.sqrt(20 * 400))  # geometric
    field = build_field(FieldConfig(kind="sdf"))
    field.set_progress(1.0)
    assert float(field.state_dict()["sharpness"]) == pytest.approx(400.0)


def test_neus_opacity_of_a_plane_is_one_at_the_surface_for_any_step():
    # A ray down the z axis onto the plane z = 0.1 (f = z - 0.1, gradient +z): opacity 1, depth at the plane.
    for step in (0.05, 0.013):
        t = torch.arange(0.0, 2.0, step)
        z = 1.0 - (t + step / 2)
        dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(len(t), 3)
        grad = torch.tensor([[0.0, 0.0, 1.0]]).expand(len(t), 3)
        deltas = torch.full_like(t, step)
        alpha = neus_alpha(z - 0.1, grad, dirs, deltas, 400.0)
        rays, ranks = torch.zeros(len(t), dtype=torch.long), torch.arange(len(t))
        w, _, _ = render_weights(alpha_to_density(alpha, deltas), deltas, rays, ranks, 1)
        depth = float((w * (t + step / 2)).sum())
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-4) and depth == pytest.approx(0.9, abs=step / 2)
    # A ray leaving the surface (cos > 0) sees nothing: NeuS has no back faces.
    assert float(neus_alpha(torch.tensor([0.0]), grad[:1], -dirs[:1], torch.tensor([0.05]), 400.0)) < 1e-3


def test_rendered_sphere_matches_the_true_silhouette_normals_and_has_no_eikonal_error():
    field = small_sdf(0.6)  # the built-in sphere's radius
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32))
    background = Background(BackgroundConfig(kind="constant"))
    renderer = VolumeRenderer(field, grid, background, RendererConfig(num_steps=64, stratified=False))
    renderer.mark_occupancy()
    az = torch.tensor([0.0, 1.0, 2.0])
    el = torch.tensor([0.2, 0.6, 1.4])
    cams = make_cameras(az, el, 32)
    o, d = cams.rays()
    with torch.no_grad():
        out = renderer.render(o, d, need_normals=True)
    masks = out["opacity"][..., 0] > 0.5
    assert float(mask_iou(masks, true_masks("sphere", az, el, 32)).mean()) > 0.97
    hit = out["opacity"][..., 0] > 0.99
    pts = o[hit] + out["depth"][hit] * d[hit]
    # A sample carries its interval's opacity at its midpoint: depth is exact to half a step (0.027 here).
    assert torch.allclose(pts.norm(dim=-1), torch.full((int(hit.sum()),), 0.6), atol=renderer.step_size / 2)
    cos = torch.nn.functional.cosine_similarity(out["normal"][hit], pts, dim=-1)
    assert float(cos.min()) > 0.99
    assert float(out["eikonal_loss"]) < 1e-4 and float(out["curvature_loss"]) > 0


def test_gradients_reach_the_sdf_through_shading_and_the_regularisers():
    field = small_sdf(0.5, sharpness=50.0)
    renderer = VolumeRenderer(field, None, Background(BackgroundConfig(kind="constant")), RendererConfig(num_steps=48))
    o, d = make_cameras(torch.tensor([0.3]), torch.tensor([0.4]), 12).rays()

    def loss():
        out = renderer.render(o, d, shading="lambertian", generator=torch.Generator().manual_seed(0))
        return out["rgb"].mean() + out["eikonal_loss"] + 1e-4 * out["curvature_loss"]

    loss().backward()  # the MLP's output layer starts at zero: only it gets a gradient at first
    torch.optim.SGD(field.parameters(), lr=0.1).step()
    field.zero_grad()
    loss().backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_mesh_is_the_zero_level_set_one_outward_shell_with_radial_normals():
    field = small_sdf(0.5)
    mesh = extract_mesh(field, 48)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.03)
    v = torch.from_numpy(mesh.vertices).float()
    assert torch.allclose(v.norm(dim=-1), torch.full((len(v),), 0.5), atol=0.01)
    normals = torch.from_numpy(mesh.vertex_normals.copy()).float()
    assert float(torch.nn.functional.cosine_similarity(normals, v, dim=-1).min()) > 0.99
    smaller = extract_mesh(field, 48, threshold=-0.1)  # a number is an SDF level: the surface at f = -0.1
    assert smaller.volume == pytest.approx(4 / 3 * math.pi * 0.4**3, rel=0.04)
    decimated = extract_mesh(field, 48, max_faces=500)
    assert len(decimated.faces) <= 500 and decimated.volume == pytest.approx(mesh.volume, rel=0.05)
