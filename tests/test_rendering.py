"""Ray/box intersection, marching, compositing against closed forms, occupancy grid, shading, skipping."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamnfsd.cameras import turntable_cameras
from dreamnfsd.models import Background, BackgroundConfig, FieldConfig, HashEncodingConfig, NeRFField, trunc_exp
from dreamnfsd.rendering import (
    OccupancyGrid,
    OccupancyGridConfig,
    RendererConfig,
    VolumeRenderer,
    accumulate_along_rays,
    candidate_intervals,
    distortion_loss,
    exclusive_cumsum_packed,
    march,
    ray_aabb_intersect,
    render_weights,
)
from dreamnfsd.rendering.occupancy_grid import lookup_bits, world_to_cell
from dreamnfsd.train.config import TrainConfig
from dreamnfsd.train.shading import jittered_backgrounds, light_positions

BOX = torch.tensor([-1.0, -1, -1, 1, 1, 1])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # On a shared 2-core machine a second intra-op thread was measured to add ~6 ms per op; one is faster here.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class AnalyticField(nn.Module):
    """density = sigma inside a region (box half-extents ``half`` or a sphere), constant albedo; analytic normals."""

    def __init__(self, sigma: float, albedo=(0.2, 0.4, 0.6), half=(1.0, 1.0, 1.0), sphere: float | None = None):
        super().__init__()
        self.cfg = SimpleNamespace(bound=1.0, normal_mode="autograd")
        self.sigma, self.sphere = sigma, sphere
        self.register_buffer("half_extent", torch.tensor(half))
        self.register_buffer("albedo", torch.tensor(albedo))
        self.flip = 1.0

    def density(self, x):
        if self.sphere is not None:
            return self.sigma * torch.sigmoid((self.sphere - x.norm(dim=-1)) / 0.01)
        return self.sigma * (x.abs() <= self.half_extent).all(-1).float()

    def forward(self, x):
        return {"density": self.density(x), "albedo": self.albedo.expand(x.shape[0], 3)}

    def normals(self, x, mode=None):
        return self.flip * F.normalize(x, dim=-1)

    def render_samples(self, x, dirs, deltas):
        return self(x)

    def occupancy(self, x, step_size, cell_radius):
        return self.density(x) * step_size


def renderer_for(field, grid=None, **cfg) -> VolumeRenderer:
    cfg.setdefault("stratified", False)  # deterministic samples even with gradients on
    return VolumeRenderer(field, grid, Background(BackgroundConfig(color=(0.0, 0.0, 0.0))), RendererConfig(**cfg))


def axis_rays(n: int = 5, axis: int = 0):
    """n rays along +axis from outside the box, at small offsets across it. Returns (1, 1, n, 3) x 2."""
    o = torch.zeros(n, 3)
    o[:, axis] = -3.0
    o[:, (axis + 1) % 3] = torch.linspace(-0.5, 0.5, n)
    o[:, (axis + 2) % 3] = 0.3
    d = torch.zeros(n, 3)
    d[:, axis] = 1.0
    return o[None, None], d[None, None]


# ---- ray / box ----------------------------------------------------------------------------------------------------
def test_ray_aabb_miss_graze_inside_parallel():
    o = torch.tensor(
        [
            [-3.0, 0.0, 0.0],  # straight through: t 2..4
            [-3.0, 2.0, 0.0],  # parallel to x, outside the y slab: miss
            [-3.0, 0.0, 0.0],  # pointing away: miss
            [0.2, 0.1, -0.3],  # origin inside: starts at 0
            [-3.0, 1.0, 1.0],  # along an edge of the box (grazing, bounds inclusive)
            [1.0 - 3.0 / 2**0.5, 1.0 + 3.0 / 2**0.5, 1.0],  # touches only the edge point (1, 1, 1) at t = 3
            [-3.0, 1.0 + 1e-6, 0.0],  # just above the top face: miss
        ]
    )
    d = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0],
            [1.0, -1.0, 0.0],
            [1.0, 0.0, 0.0],
        ]
    )
    d = F.normalize(d, dim=-1)
    t0, t1, hit = ray_aabb_intersect(o, d, BOX)
    assert hit.tolist() == [True, False, False, True, True, True, False]
    torch.testing.assert_close(t0[0], torch.tensor(2.0))
    torch.testing.assert_close(t1[0], torch.tensor(4.0))
    assert t0[3] == 0 and torch.isclose(t1[3], torch.tensor(1.3))
    torch.testing.assert_close(t1[4] - t0[4], torch.tensor(2.0))
    # The corner ray enters and leaves at the same point: a hit of zero length, and no samples.
    assert torch.isclose(t0[5], t1[5], atol=1e-5) and torch.isclose(t0[5], torch.tensor(3.0), atol=1e-5)
    assert torch.isfinite(t0).all() and torch.isfinite(t1).all()
    s = march(o, d, BOX, 0.05)
    assert set(s.ray_indices.tolist()) <= {0, 3, 4} and (s.ray_indices == 5).sum() == 0


def test_candidate_intervals_tile_the_segment():
    t_near, t_far = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([4.0, 0.35, 1.0])
    ts, te, valid = candidate_intervals(t_near, t_far, 0.1)
    lengths = ((te - ts) * valid).sum(1)
    torch.testing.assert_close(lengths, t_far - t_near)
    assert valid[2].sum() == 0
    assert (te[valid] - ts[valid] <= 0.1 + 1e-6).all()
    # Stratified offsets still tile the segment exactly.
    ts, te, valid = candidate_intervals(t_near, t_far, 0.1, offsets=torch.tensor([0.1, 0.9, 0.5]))
    torch.testing.assert_close(((te - ts) * valid).sum(1), t_far - t_near)


# ---- compositing ------------------------------------------------------------------------------------------------
def test_compositing_homogeneous_closed_form():
    """Constant sigma over [t0, t0 + L]: opacity 1 - exp(-sigma L), transmittance exp(-sigma s), depth closed form."""
    sigma, t0, length, n = 1.7, 2.0, 1.5, 3000
    edges = t0 + torch.linspace(0, length, n + 1, dtype=torch.float64)
    perm = torch.randperm(n)  # packed samples may come in any order
    starts, ends = edges[:-1][perm], edges[1:][perm]
    ray = torch.zeros(n, dtype=torch.long)
    ranks = torch.arange(n)[perm]
    sig = torch.full((n,), sigma, dtype=torch.float64)
    w, trans, alpha = render_weights(sig, ends - starts, ray, ranks, 1)
    opacity = accumulate_along_rays(w, ray, 1)
    expected = 1 - math.exp(-sigma * length)
    torch.testing.assert_close(opacity, torch.tensor([[expected]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(trans, torch.exp(-sigma * (starts - t0)), rtol=0, atol=1e-12)
    mid = 0.5 * (starts + ends)
    depth = accumulate_along_rays(w, ray, 1, mid[:, None])
    exact = t0 * expected + 1 / sigma - math.exp(-sigma * length) * (length + 1 / sigma)
    assert abs(depth.item() - exact) < 1e-6


def test_exclusive_cumsum_is_per_ray_and_precise():
    # Two rays, the first with huge optical depths (a dense interior) before a tiny one: no cancellation.
    vals = torch.tensor([5e4, 5e4, 1e-3, 1.0, 2.0, 3.0])
    ray = torch.tensor([0, 0, 0, 1, 1, 1])
    ranks = torch.tensor([0, 1, 2, 0, 1, 2])
    out = exclusive_cumsum_packed(vals, ray, ranks, 2)
    assert out.tolist() == [0.0, 5e4, 1e5, 0.0, 1.0, 3.0]
    # A global float32 cumsum minus offsets would not give the second ray's exact values after big sums.
    big = torch.cat([torch.full((1000,), 1e4), torch.tensor([0.1, 0.2])])
    r = torch.cat([torch.zeros(1000, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    k = torch.cat([torch.arange(1000), torch.arange(2)])
    assert exclusive_cumsum_packed(big, r, k, 2)[-1].item() == pytest.approx(0.1, abs=1e-7)


def test_distortion_loss_matches_the_pair_sum_in_any_order():
    g = torch.Generator().manual_seed(0)
    counts = [0, 3, 7, 1, 4]
    ray = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    ranks = torch.cat([torch.arange(c) for c in counts])
    starts = torch.cat([torch.sort(torch.rand(c, generator=g) * 3)[0] for c in counts])
    ends = starts + 0.01 + 0.02 * torch.rand(len(starts), generator=g)
    w = torch.rand(len(starts), generator=g)
    perm = torch.randperm(len(starts), generator=g)
    got = distortion_loss(w[perm], starts[perm], ends[perm], ray[perm], ranks[perm], len(counts))
    mid = (starts + ends) / 2
    for r in range(len(counts)):
        s = ray == r
        ww, mm, dd = w[s], mid[s], (ends - starts)[s]
        pairs = (ww[:, None] * ww[None] * (mm[:, None] - mm[None]).abs()).sum()
        assert got[r].item() == pytest.approx((pairs + (ww.square() * dd).sum() / 3).item(), abs=1e-6)
    assert got[0] == 0.0  # a ray without samples


def test_distortion_loss_is_lower_for_a_thinner_shell():
    """The same opacity from one step or spread over four: the spread ray costs more."""
    t = torch.arange(5.0) * 0.1
    ray, ranks = torch.zeros(4, dtype=torch.long), torch.arange(4)
    spread = distortion_loss(torch.full((4,), 0.2), t[:4], t[1:], ray, ranks, 1)
    one = distortion_loss(torch.tensor([0.8, 0.0, 0.0, 0.0]), t[:4], t[1:], ray, ranks, 1)
    assert one.item() == pytest.approx(0.64 * 0.1 / 3)
    assert spread.item() > 2 * one.item()


# ---- renderer ---------------------------------------------------------------------------------------------------
def test_render_homogeneous_box_matches_closed_form():
    sigma = 0.8
    field = AnalyticField(sigma)
    o, d = axis_rays()
    out = renderer_for(field, early_stop_eps=0.0).render(o, d, background_color=torch.tensor([0.5, 0.5, 0.5]))
    L = 2.0  # every ray crosses the full box along x
    op = 1 - math.exp(-sigma * L)
    torch.testing.assert_close(out["opacity"], torch.full((1, 1, 5, 1), op), atol=1e-5, rtol=0)
    exact_depth = 2.0 * op + 1 / sigma - math.exp(-sigma * L) * (L + 1 / sigma)
    torch.testing.assert_close(out["depth"], torch.full((1, 1, 5, 1), exact_depth), atol=2e-4, rtol=0)
    expected_rgb = field.albedo * op + 0.5 * (1 - op)
    torch.testing.assert_close(out["rgb"], expected_rgb.expand(1, 1, 5, 3), atol=1e-5, rtol=0)
    assert out["samples_per_ray"] == pytest.approx(math.ceil(L / (math.sqrt(3) * 2 / 128)), abs=1)


def test_render_slab():
    """A slab |z| <= 0.25 seen along z: opacity 1 - exp(-sigma * 0.5) up to the step size at its faces."""
    field = AnalyticField(3.0, half=(1.0, 1.0, 0.25))
    o, d = axis_rays(axis=2)
    out = renderer_for(field, early_stop_eps=0.0, step_size=0.005).render(o, d)
    torch.testing.assert_close(out["opacity"], torch.full((1, 1, 5, 1), 1 - math.exp(-1.5)), atol=2e-2, rtol=0)
    # The expected depth is measured from the slab's near face at t = 3 - 0.25.
    exact = 2.75 * (1 - math.exp(-1.5)) + 1 / 3 - math.exp(-1.5) * (0.5 + 1 / 3)
    torch.testing.assert_close(out["depth"], torch.full((1, 1, 5, 1), exact), atol=2e-2, rtol=0)


def test_early_stopping_and_chunking():
    field = AnalyticField(500.0)  # opaque: transmittance is gone after a few steps
    cams = turntable_cameras(2, height=12, width=12)
    o, d = cams.rays()
    full = renderer_for(field, early_stop_eps=0.0).render(o, d)
    stop = renderer_for(field).render(o, d)
    chunked = renderer_for(field, chunk_rays=37).render(o, d)
    assert stop["samples_per_ray"] * 4 < full["samples_per_ray"]
    torch.testing.assert_close(stop["rgb"], full["rgb"], atol=1e-4, rtol=0)
    torch.testing.assert_close(chunked["rgb"], stop["rgb"], atol=1e-6, rtol=0)
    assert chunked["num_samples"] == stop["num_samples"]


# ---- occupancy grid ---------------------------------------------------------------------------------------------
def test_occupancy_grid_mark_lookup_update_and_state():
    cfg = OccupancyGridConfig(resolution=32, warmup_steps=4, update_every=2, threshold=0.01)
    grid = OccupancyGrid(cfg)
    assert grid.occupied(torch.zeros(1, 3)).all()  # all cells occupied until marked
    sphere = AnalyticField(10.0, sphere=0.5)
    grid.mark_from(sphere.density)
    # Cells around the centre are occupied, far corners are not, outside the box never.
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.9, 0.9, 0.9], [0.0, 0.0, 1.5]])
    assert grid.occupied(pts).tolist() == [True, True, False, False]
    frac = grid.occupied_fraction()
    assert 0.4 * (4 / 3 * math.pi * 0.125 / 8) < frac < 2.0 * (4 / 3 * math.pi * 0.125 / 8)
    # The packed bitfield agrees with the boolean grid everywhere.
    cells = torch.arange(32**3)
    assert torch.equal(lookup_bits(grid.bitfield, cells), grid.binaries.view(-1))
    # x-major layout: the cell of a point is ix * R^2 + iy * R + iz (nerfacc's order).
    c, inside = world_to_cell(torch.tensor([[-0.99, 0.99, -0.99]]), grid.aabb, 32)
    assert c.item() == 0 * 1024 + 31 * 32 + 0 and inside.item()
    # Updates run only after warm-up and every n steps; they decay as max(decay * old, new).
    empty = lambda x: torch.zeros(x.shape[0])  # noqa: E731
    assert not grid.update(2, empty) and not grid.update(5, empty) and grid.update(6, empty)
    assert grid.occs.max() == pytest.approx(10.0 * 0.95, rel=1e-4)
    # Density appearing elsewhere marks those cells; the old ones fade below the threshold.
    corner = AnalyticField(10.0, half=(1.0, 1.0, 1.0))
    corner_density = lambda x: corner.density(x) * (x > 0.6).all(-1)  # noqa: E731
    for step in range(8, 400, 2):
        grid.update(step, corner_density)
    assert grid.occupied(pts).tolist() == [False, False, True, False]
    fresh = OccupancyGrid(cfg)
    grid.mark_from(sphere.density)
    fresh.load_state_dict(grid.state_dict())
    assert torch.equal(fresh.bitfield, grid.bitfield) and torch.equal(fresh.occs, grid.occs)


def test_grid_threshold_is_min_of_mean_and_tau():
    grid = OccupancyGrid(OccupancyGridConfig(resolution=8, threshold=0.5))
    # Values 0..1 over cells: the mean (~0.5) vs tau 0.5; with tau 10 the mean decides.
    ramp = lambda x: (x[:, 0] + 1) / 2  # noqa: E731
    grid.mark_from(ramp, samples_per_cell=1)
    mean = grid.occs.mean().item()
    assert torch.equal(grid.binaries.view(-1), grid.occs > min(mean, 0.5))
    grid2 = OccupancyGrid(OccupancyGridConfig(resolution=8, threshold=0.05))
    grid2.mark_from(ramp, samples_per_cell=1)
    assert torch.equal(grid2.binaries.view(-1), grid2.occs > 0.05)


def test_grid_skipping_on_analytic_sphere():
    """After warm-up updates, skipping cuts samples per ray >= 4x at the same step, image MSE < 1e-3."""
    field = AnalyticField(50.0, sphere=0.45, albedo=(0.9, 0.3, 0.1))
    grid = OccupancyGrid(OccupancyGridConfig(resolution=64, warmup_steps=8, update_every=4))
    r_grid = renderer_for(field, grid)
    gen = torch.Generator().manual_seed(0)
    for step in range(40):
        r_grid.update_occupancy(step, gen)
    cams = turntable_cameras(3, elevation_deg=20.0, height=24, width=24)
    o, d = cams.rays()
    with torch.no_grad():
        dense = renderer_for(field).render(o, d)
        skip = r_grid.render(o, d)
    assert dense["samples_per_ray"] >= 4 * skip["samples_per_ray"]
    assert (dense["rgb"] - skip["rgb"]).square().mean() < 1e-3


# ---- shading and normals ----------------------------------------------------------------------------------------
def test_shading_modes_and_orientation_loss():
    field = AnalyticField(200.0, sphere=0.5, albedo=(0.8, 0.4, 0.2))
    cams = turntable_cameras(1, elevation_deg=0.0, height=9, width=9)
    o, d = cams.rays()
    r = renderer_for(field)
    plain = r.render(o, d)
    assert plain["num_normal_evals"] == 0 and "normal" not in plain
    light = cams.c2w[:, :3, 3]
    lam = r.render(o, d, shading="lambertian", light_positions=light, ambient=0.1)
    tex = r.render(o, d, shading="textureless", light_positions=light, ambient=0.1)
    centre = (0, 4, 4)
    # Head-on light at the front of the sphere: n.l ~ 1, colour ~ albedo.
    torch.testing.assert_close(lam["rgb"][centre], field.albedo, atol=2e-2, rtol=0)
    assert torch.allclose(tex["rgb"][centre], torch.ones(3), atol=2e-2)
    assert (tex["rgb"][..., 0] == tex["rgb"][..., 1]).all()  # grey
    # Normals face the camera: no orientation penalty. Flipped normals face away: penalised.
    assert lam["orientation_loss"].item() < 1e-3  # only where grazing rays reach the back
    n_centre = lam["normal"][centre] / lam["opacity"][centre]
    torch.testing.assert_close(n_centre, -d[centre], atol=2e-2, rtol=0)
    # Without a light position the light sits at the camera.
    torch.testing.assert_close(r.render(o, d, shading="lambertian")["rgb"], lam["rgb"])
    field.flip = -1.0
    assert r.render(o, d, need_normals=True)["orientation_loss"].item() > 0.05


def small_field(**kw) -> NeRFField:
    torch.manual_seed(0)
    enc = HashEncodingConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=2.0)
    return NeRFField(FieldConfig(encoding=enc, hidden_dim=32, **kw))


def test_nerf_field_blob_normals_and_gradients():
    f = small_field()
    x = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]])
    out = f(x)
    assert out["density"][0] > 1e3 and out["density"][1] < 1e-3  # the blob
    assert ((out["albedo"] > 0) & (out["albedo"] < 1)).all()
    pts = F.normalize(torch.randn(50, 3), dim=-1) * 0.45
    fd = f.normals(pts)
    ag = f.normals(pts, mode="autograd")
    assert (fd * ag).sum(-1).min() > 0.99
    assert (fd * F.normalize(pts, dim=-1)).sum(-1).min() > 0.99  # outward on the blob
    soft = small_field(density_activation="softplus")
    assert soft.density(x)[0].item() == pytest.approx(10.0, rel=1e-3)
    enc_ids = {id(p) for p in f.encoding_parameters()}
    assert enc_ids.isdisjoint(id(p) for p in f.mlp_parameters())
    assert len(enc_ids) + len(f.mlp_parameters()) == len(list(f.parameters()))


def test_trunc_exp_is_finite():
    x = torch.tensor([-100.0, 0.0, 100.0], requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("normal_mode", ["finite_difference", "autograd"])
def test_render_gradients_reach_the_field(normal_mode):
    f = small_field(normal_mode=normal_mode)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32))
    r = VolumeRenderer(f, grid, Background(BackgroundConfig(kind="mlp")), RendererConfig())
    r.mark_occupancy()
    o, d = turntable_cameras(2, height=8, width=8).rays()
    opt = torch.optim.SGD(f.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # the MLP's output layer starts at zero, so the encoding gets gradients from step 2 on
        opt.zero_grad()
        out = r.render(o, d, shading="lambertian", generator=gen, need_distortion=True)
        (out["rgb"].mean() + out["orientation_loss"] + out["distortion_loss"]).backward()
        opt.step()
    assert out["rgb"].shape == (2, 8, 8, 3) and out["depth"].shape == (2, 8, 8, 1)
    assert out["num_normal_evals"] > 0 and out["distortion_loss"].item() > 0
    assert "distortion_loss" not in r.render(o, d)
    assert any(p.grad.abs().sum() > 0 for p in f.encoding_parameters())
    assert all(p.grad.abs().sum() > 0 for p in f.mlp_parameters())


def test_background_kinds_and_override():
    dirs = F.normalize(torch.randn(2, 3, 4, 3), dim=-1)
    const = Background(BackgroundConfig(kind="constant", color=(0.1, 0.2, 0.3)))(dirs)
    assert const.shape == (2, 3, 4, 3) and torch.equal(const[1, 2, 3], torch.tensor([0.1, 0.2, 0.3]))
    mlp = Background(BackgroundConfig(kind="mlp"))(dirs)
    assert mlp.shape == (2, 3, 4, 3) and ((mlp > 0) & (mlp < 1)).all()
    field = AnalyticField(0.0)
    o, d = turntable_cameras(2, height=4, width=4).rays()
    out = renderer_for(field).render(o, d, background_color=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    assert torch.equal(out["rgb"][1, 2, 2], torch.tensor([0.0, 1.0, 0.0]))


def test_jittered_backgrounds_are_greys_of_the_colour_in_range():
    color = torch.tensor([1.0, 0.5, 0.25])
    bgs = jittered_backgrounds(color, 256, 0.4, torch.Generator().manual_seed(0))
    factor = bgs / color
    assert bgs.shape == (256, 3) and torch.allclose(factor, factor[:, :1].expand(-1, 3))  # a grey times the colour
    assert factor.min() >= 0.6 and factor.max() <= 1.0 and factor.min() < 0.62 and factor.max() > 0.98
    again = jittered_backgrounds(color, 256, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(bgs, again)


def test_directional_light_lights_a_face_evenly_and_keeps_the_random_stream():
    cams = turntable_cameras(8, elevation_deg=30.0, height=8, width=8)
    face = torch.stack(torch.meshgrid(torch.linspace(-0.5, 0.5, 9), torch.linspace(-0.5, 0.5, 9), indexing="ij"), -1)
    face = F.pad(face.reshape(-1, 2), (0, 1), value=0.5)  # the top face of a unit cube, normal +z
    gens, spread = {}, {}
    for kind in ("point", "directional"):
        gens[kind] = torch.Generator().manual_seed(3)
        lights = light_positions(cams, TrainConfig(light=kind), gens[kind])  # (8, 3)
        lambert = F.normalize(lights[:, None] - face[None], dim=-1)[..., 2]  # n . l at every point, (8, 81)
        spread[kind] = (lambert.amax(1) - lambert.amin(1)).mean()  # the mean over views of its range over the face
    # A point light a few units away shades a flat face with a gradient; a directional one (the built-in prior's
    # training images) lights it evenly.
    assert spread["point"] > 0.05 and spread["directional"] < 1e-3
    assert torch.equal(gens["point"].get_state(), gens["directional"].get_state())
    still = light_positions(cams, TrainConfig(light="directional", light_jitter=0.0), torch.Generator())
    eye = cams.c2w[:, :3, 3]
    assert torch.allclose(F.normalize(still, dim=-1), F.normalize(eye, dim=-1), atol=1e-6)


@pytest.mark.parametrize("jitter", [0.0, 0.5])
def test_background_jitter_recolours_each_training_views_background(tiny_pixel_prior, tmp_path, jitter):
    from dreamnfsd.app.compose import compose, to_run_config
    from dreamnfsd.guidance.priors import load_prior
    from dreamnfsd.train.trainer import Trainer
    from tests.conftest import tiny_run_overrides

    cfg = to_run_config(
        compose(
            [
                "prompt=a red cube",
                *tiny_run_overrides(tiny_pixel_prior, tmp_path),
                "train.batch_size=4",
                f"train.background_jitter={jitter}",
            ]
        )
    )
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), load_prior(cfg.prior))
    seen = []
    render = trainer.scene.renderer.render
    trainer.scene.renderer.render = lambda *a, **k: seen.append(k["background_color"]) or render(*a, **k)
    assert trainer.train_step().finite
    if jitter == 0:
        assert seen == [None]  # the background module's own colour (white), as before the option existed
    else:
        factor = seen[0] / trainer.scene.background.color  # (B, 3): one grey per view
        assert factor.shape == (4, 3) and (factor >= 0.5).all() and (factor <= 1).all()
        assert len(set(factor[:, 0].tolist())) == 4
