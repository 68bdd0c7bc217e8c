"""The procedural renderer: every shape and colour, masks, canonical cube orientation, determinism."""

import math

import torch

from dreamnfsd.data import COLORS, SHAPES, make_dataset, primitive_sdf, render_primitives

deg = lambda *a: torch.tensor([math.radians(x) for x in a])


def test_every_shape_and_colour_renders_centred():
    n = len(SHAPES) * len(COLORS)
    shapes = [s for s in SHAPES for _ in COLORS]
    colors = list(COLORS) * len(SHAPES)
    out = render_primitives(
        shapes, colors, torch.rand(n) * 6.28, deg(*([20.0] * n)), generator=torch.Generator().manual_seed(0)
    )
    rgb, mask = out["rgb"], out["mask"]
    assert rgb.shape == (n, 3, 32, 32) and mask.shape == (n, 1, 32, 32)
    assert rgb.min() >= 0 and rgb.max() <= 1
    area = mask.sum(dim=(1, 2, 3))
    assert (area > 30).all(), area
    # Centroid of the silhouette near the image centre (15.5, 15.5).
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cy = (mask[:, 0] * ys).sum((1, 2)) / area
    cx = (mask[:, 0] * xs).sum((1, 2)) / area
    # A cone's area centroid sits low (a quarter of its height above the base), hence the looser vertical bound.
    assert (cx - 15.5).abs().max() < 2.5 and (cy - 15.5).abs().max() < 5.5
    # Background is white and pixels outside the mask stay white.
    assert torch.allclose(rgb[:, :, 0, 0], torch.ones(n, 3))
    # Purple and blue objects differ clearly in their mean object colour.
    mean_col = (rgb * mask).sum((2, 3)) / area[:, None]
    blue, purple = mean_col[COLORS.index("blue")], mean_col[COLORS.index("purple")]
    assert (blue - purple).abs().max() > 0.25


def test_cube_top_view_depends_on_azimuth():
    out = render_primitives(["cube", "cube"], ["red", "red"], deg(0, 45), deg(89, 89), scale_jitter=0.0)
    m = out["mask"][:, 0] > 0.5
    assert (m[0] ^ m[1]).float().sum() > 40  # axis-aligned square vs diamond


def test_sdf_signs():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.5]])
    for shape in SHAPES:
        d = primitive_sdf(shape, pts)
        assert d[1] > 0
        if shape != "torus":
            assert d[0] < 0
    assert primitive_sdf("torus", torch.tensor([[0.52, 0.0, 0.0]]))[0] < 0


def test_dataset_deterministic_and_captioned():
    a, b = make_dataset(64, seed=3, degrade_prob=0.5), make_dataset(64, seed=3, degrade_prob=0.5)
    assert torch.equal(a["rgb"], b["rgb"]) and a["captions"] == b["captions"]
    assert a["rgb"].dtype == torch.uint8 and a["rgb"].shape == (64, 3, 32, 32)
    for cap, s, c, d in zip(a["captions"], a["shape_idx"], a["color_idx"], a["degraded"]):
        if not d:
            assert cap == f"a {COLORS[c]} {SHAPES[s]}"
        else:
            assert "," in cap or not cap.startswith("a ")


def test_a_stretch_changes_only_the_stretched_axis_and_stays_a_safe_bound():
    """The proportion probe's renders: (1, 1, 1.1) makes the cylinder 10% taller and no wider; no stretch and a unit
    stretch give the same bits; the stretched distance never exceeds the true one (sphere tracing stays safe)."""
    tall = torch.tensor([1.0, 1.0, 1.1])
    on_surface = torch.tensor([[0.0, 0.0, 0.55 * 1.1], [0.45, 0.0, 0.0], [0.0, 0.45, 0.3]])
    assert primitive_sdf("cylinder", on_surface, stretch=tall).abs().max() < 1e-6
    outside = torch.tensor([[0.0, 0.0, 0.8], [1.0, 0.0, 0.0]])
    truth = torch.tensor([0.8 - 0.605, 1.0 - 0.45])
    d = primitive_sdf("cylinder", outside, stretch=tall)
    assert (d > 0).all() and (d <= truth + 1e-6).all()
    args = (["cylinder"] * 2, ["blue"] * 2, deg(0, 90), deg(0, 0))
    g = lambda: torch.Generator().manual_seed(0)  # the same lights
    plain = render_primitives(*args, scale_jitter=0.0, generator=g())
    unit = render_primitives(*args, scale_jitter=0.0, generator=g(), stretch=torch.ones(3))
    assert torch.equal(plain["rgb"], unit["rgb"])
    taller = render_primitives(*args, scale_jitter=0.0, generator=g(), stretch=tall)["mask"][:, 0]
    rows = lambda m: (m.sum(-1) > 0.5).sum(-1)  # image rows the object covers: its height
    cols = lambda m: (m.sum(-2) > 0.5).sum(-1)
    base = plain["mask"][:, 0]
    assert (rows(taller) > rows(base)).all() and torch.equal(cols(taller), cols(base))


def test_rounded_edges_keep_the_faces_and_cut_edges_and_corners_by_the_exact_amount():
    rho = torch.tensor(0.04)
    sqrt2, sqrt3 = math.sqrt(2), math.sqrt(3)
    # Points on the sharp shape: face centres stay on the surface, an edge or corner is cut by rho (1/sin(a/2) - 1)
    # for an interior angle a (90° box edge: sqrt 2 - 1; box corner: sqrt 3 - 1).
    cases = {
        "cube": ([[0.5, 0, 0], [0, 0, -0.5], [0.5, 0.5, 0], [0.5, -0.5, 0.5]], [0, 0, sqrt2 - 1, sqrt3 - 1]),
        "cylinder": ([[0.45, 0, 0], [0, 0, 0.55], [0, 0.45, -0.55]], [0, 0, sqrt2 - 1]),
        # The cone's rim has interior angle atan(1 / 0.6), its apex 2 atan(0.6).
        "cone": (
            [[0, 0, -0.5], [0.3, 0, 0], [0.6, 0, -0.5], [0, 0, 0.5]],
            [0, 0, 1 / math.sin(math.atan(1 / 0.6) / 2) - 1, 1 / math.sin(math.atan(0.6)) - 1],
        ),
    }
    for shape, (points, cut) in cases.items():
        d = primitive_sdf(shape, torch.tensor(points), rounding=rho)
        assert torch.allclose(d, rho * torch.tensor(cut), atol=1e-5), (shape, d)
    # Spheres and tori have no edges: rounding leaves them alone.
    p = torch.randn(64, 3)
    for shape in ("sphere", "torus"):
        assert torch.equal(primitive_sdf(shape, p, rounding=rho), primitive_sdf(shape, p))


def test_edge_rounding_in_the_dataset_changes_only_the_edged_shapes():
    plain, zero = make_dataset(48, seed=3), make_dataset(48, seed=3, edge_round=0.0)
    rounded = make_dataset(48, seed=3, edge_round=0.06)
    assert all(torch.equal(plain[k], zero[k]) for k in ("rgb", "mask", "shape_idx", "edge_radius"))
    assert plain["captions"] == rounded["captions"] and torch.equal(plain["azimuth"], rounded["azimuth"])
    r = rounded["edge_radius"]
    assert (r >= 0).all() and (r <= 0.06).all() and r.std() > 0.01
    changed = (plain["mask"].float() - rounded["mask"].float()).abs().sum((1, 2, 3)) > 0
    edged = torch.tensor([SHAPES[i] in ("cube", "cylinder", "cone") for i in plain["shape_idx"].tolist()])
    assert not changed[~edged].any() and changed[edged].float().mean() > 0.8
    # Rounding only takes area away (the rounded solid lies inside the sharp one).
    assert (rounded["mask"].float().sum((1, 2, 3)) <= plain["mask"].float().sum((1, 2, 3)) + 1e-3).all()


def test_an_offset_moves_the_surface_along_its_normals_by_the_exact_amount():
    delta = torch.tensor(0.03)
    # Points on the true surface sit delta inside the offset one, for every shape; at scale 2 the offset doubles.
    on_surface = {
        "sphere": [[0.6, 0, 0]],
        "cube": [[0.5, 0, 0], [0.5, 0.5, 0.5]],
        "cylinder": [[0.45, 0, 0], [0, 0, 0.55]],
        "torus": [[0.74, 0, 0], [0.52, 0, 0.22], [0.30, 0, 0]],
    }
    for shape, points in on_surface.items():
        p = torch.tensor(points)
        assert torch.allclose(primitive_sdf(shape, p, offset=delta), -delta.expand(len(p)), atol=1e-6), shape
        assert torch.allclose(primitive_sdf(shape, 2 * p, 2.0, offset=delta), -2 * delta.expand(len(p)), atol=1e-6)
    # A torus's tube thickens: its silhouette from above grows, the hole shrinks.
    az, el = torch.zeros(2), torch.full((2,), math.radians(45.0))
    one = torch.ones(2)
    base, thick = (
        render_primitives(["torus"] * 2, ["red"] * 2, az, el, scale=one, offset=d, generator=torch.Generator())
        for d in (None, delta)
    )
    assert (thick["mask"] >= base["mask"] - 1e-6).all() and thick["mask"].sum() > base["mask"].sum() * 1.05
