"""The coarse stage of an SDF run (train.coarse_share): a density field first, then the SDF fitted to its surface."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.cameras import CameraSamplerConfig
from dreamnfsd.data import primitive_sdf
from dreamnfsd.export.mesh import lattice_values
from dreamnfsd.models.field import FieldConfig, HashEncodingConfig, SDFConfig
from dreamnfsd.models.sdf_field import SDFField
from dreamnfsd.train.coarse import (
    coarse_steps,
    field_progress,
    fit_sdf,
    grid_lookup,
    largest_piece_filled,
    signed_distance_grid,
    solid_from_density,
    stage_config,
    stage_progress,
    surface_albedo,
)
from tests.conftest import tiny_run_overrides
from tests.test_determinism import assert_same_state

BOUND = 1.0


def _lattice(resolution: int) -> torch.Tensor:
    axis = torch.linspace(-BOUND, BOUND, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (R, R, R, 3)


def test_signed_distance_grid_of_a_sphere_is_within_a_spacing_of_the_truth():
    res = 41
    pts = _lattice(res)
    solid = (pts.norm(dim=-1) < 0.5).numpy()
    sdf = signed_distance_grid(solid, BOUND)
    truth = pts.norm(dim=-1) - 0.5
    spacing = 2 * BOUND / (res - 1)
    near = truth.abs() < 0.3
    assert (sdf[near] - truth[near]).abs().max() < spacing
    away = truth.abs() > spacing  # the sign is exact a lattice spacing from the surface
    assert (sdf[away] < 0).eq(truth[away] < 0).all()


def test_grid_lookup_is_trilinear_on_the_export_lattice():
    pts = _lattice(9)
    grid = pts[..., 0] + 2 * pts[..., 1] - pts[..., 2]  # linear: trilinear interpolation is exact
    x = torch.rand(100, 3) * 1.8 - 0.9
    assert torch.allclose(grid_lookup(grid, x, BOUND), x[:, 0] + 2 * x[:, 1] - x[:, 2], atol=1e-5)


class _DensityOf:
    """A stand-in density field: density 10 inside ``inside(x)`` (N, 3) -> (N,) bool, else 0."""

    def __init__(self, inside):
        self.inside = inside
        self.cfg = FieldConfig(bound=BOUND)
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def density(self, x):
        return self.inside(x).float() * 10.0  # inside(x) may also give fractions


def test_largest_piece_filled_drops_floaters_and_fills_cavities():
    pts = _lattice(48)
    r = pts.norm(dim=-1)
    speck = (pts - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1) < 0.08
    solid = largest_piece_filled((((r > 0.3) & (r < 0.6)) | speck).numpy())  # a hollow ball and a floater
    assert solid[(r < 0.25).numpy()].all()  # the cavity is filled
    assert not solid[speck.numpy()].any()  # the floater is gone
    assert not largest_piece_filled(np.zeros((4, 4, 4), bool)).any()


def _carved(inside, res: int = 32) -> tuple[np.ndarray, torch.Tensor]:
    return solid_from_density(_DensityOf(inside), CameraSamplerConfig(), res), _lattice(res).reshape(-1, 3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_carving_an_opaque_torus_keeps_its_hole_and_shape():
    solid, pts = _carved(lambda x: (primitive_sdf("torus", x) < 0) * 100.0)  # opaque: density 1000
    truth = (primitive_sdf("torus", pts) < 0).reshape(solid.shape).numpy()
    assert _iou(solid, truth) > 0.8
    c = solid.shape[0] // 2
    assert not solid[c - 1 : c + 1, c - 1 : c + 1, :].any()  # the views see through the hole


def test_carving_makes_a_solid_of_a_fog_that_a_density_threshold_would_miss():
    """A cube of thin fog (density 3: transmittance 1/2 after 0.23 of it) renders as a surface; the carve keeps
    the part every view sees behind that surface, a smaller cube inside the fog's."""
    fog = lambda x: (x.abs() < 0.5).all(-1)  # noqa: E731
    solid, pts = _carved(lambda x: fog(x) * 0.3)  # _DensityOf scales by 10: density 3
    inner = (pts.abs() < 0.2).all(-1).reshape(solid.shape).numpy()
    assert solid[inner].all() and not solid[~fog(pts).reshape(solid.shape).numpy()].any()
    opaque, _ = _carved(lambda x: fog(x) * 100.0)  # and an opaque cube comes out as the cube
    assert _iou(opaque, fog(pts).reshape(solid.shape).numpy()) > 0.85


def test_fit_sdf_opens_the_hole_of_a_torus_that_a_sphere_lacks():
    """The point of the stage: an SDF that starts as a sphere is fitted to a torus, hole included."""
    torch.manual_seed(0)
    cfg = FieldConfig(
        kind="sdf",
        hidden_dim=32,
        encoding=HashEncodingConfig(n_levels=6, log2_hashmap_size=14, per_level_scale=1.5),
        sdf=SDFConfig(),
    )
    field = SDFField(cfg)
    res = 48
    pts = _lattice(res)
    solid = (primitive_sdf("torus", pts.reshape(-1, 3)) < 0).reshape(res, res, res).numpy()
    rng = torch.Generator().manual_seed(0)
    err = fit_sdf(field, signed_distance_grid(solid, BOUND), iters=150, generator=rng)
    assert err < 0.03
    with torch.no_grad():
        assert field.sdf(torch.zeros(1, 3)).item() > 0.1  # the centre is outside: the hole is open
        x = torch.rand(20000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
        fitted, truth = field.sdf(x) < 0, primitive_sdf("torus", x) < 0
        iou = (fitted & truth).sum() / (fitted | truth).sum()
        assert iou > 0.85
        assert torch.equal(field(x)["albedo"], torch.full((len(x), 3), 0.5))  # colour starts again from grey


def test_the_fit_can_carry_the_coarse_fields_median_surface_colour():
    class Painted(torch.nn.Module):  # a field that is red, with a dark fringe over a quarter of a sphere's surface
        cfg = FieldConfig(bound=BOUND)

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            albedo = torch.tensor([0.9, 0.1, 0.1]).repeat(len(x), 1)
            albedo[x[:, 0] > 0.3] = 0.05
            return {"albedo": albedo}

    res = 32
    solid = (_lattice(res).norm(dim=-1) < 0.6).numpy()
    colour = surface_albedo(Painted(), solid)
    assert torch.allclose(colour, torch.tensor([0.9, 0.1, 0.1]))  # the median, not the fringe
    torch.manual_seed(0)
    cfg = FieldConfig(kind="sdf", hidden_dim=16, encoding=HashEncodingConfig(n_levels=4, log2_hashmap_size=12))
    field = SDFField(cfg)
    fit_sdf(field, signed_distance_grid(solid, BOUND), iters=60, generator=torch.Generator(), albedo=colour)
    with torch.no_grad():
        x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.6
        assert (field(x)["albedo"] - colour).abs().max() < 0.05


def test_lattice_values_match_pointwise_evaluation():
    fn = lambda x: torch.stack([x.norm(dim=-1), x[:, 2]], dim=-1)  # noqa: E731
    grid = lattice_values(fn, 7, BOUND, torch.device("cpu"))
    pts = _lattice(7)
    assert grid.shape == (2, 7, 7, 7)
    assert torch.allclose(grid[0], pts.norm(dim=-1)) and torch.allclose(grid[1], pts[..., 2])


# --- in the trainer ---------------------------------------------------------------------------------------------
STEPS, COARSE = 11, 3  # 8 SDF steps: enough for train.ema_decay=0.5 (its window may be a quarter of them)
RUN = [
    "field=sdf",
    f"train.steps={STEPS}",
    f"train.coarse_share={COARSE / STEPS}",
    "train.coarse_resolution=24",
    "train.coarse_fit_iters=5",
    "train.val_every=0",
    "train.shading_warmup_steps=2",
    "train.lr_final_share=0.5",  # the resume test then covers the learning-rate decay too
    "train.ema_decay=0.5",  # and the final field's average
]


@pytest.fixture(scope="module")
def prior(tiny_pixel_prior):
    from dreamnfsd.guidance.priors import PriorConfig, load_prior

    return load_prior(PriorConfig(kind="pixel", model=str(tiny_pixel_prior)))


@pytest.fixture
def make_trainer(tiny_pixel_prior, prior, tmp_path):
    from dreamnfsd.train.trainer import Trainer

    def make(name: str):
        cfg = to_run_config(compose(["prompt=a red torus", *tiny_run_overrides(tiny_pixel_prior, tmp_path), *RUN]))
        return Trainer(cfg, tmp_path / name, torch.device("cpu"), prior)

    return make


def _train_to(trainer, step: int) -> None:
    while trainer.step < step:
        trainer.train_step()


def test_stage_config_and_progress():
    cfg = to_run_config(compose(["prompt=a red torus", "prior=builtin", "train.steps=1000", "train.coarse_share=0.3"]))
    assert coarse_steps(cfg) == 300
    assert stage_config(cfg, 299).field.kind == "density" and stage_config(cfg, 300) is cfg
    assert cfg.field.kind == "sdf"  # the copy leaves the run's config alone
    assert stage_progress(cfg, 0) == 0 and stage_progress(cfg, 300) == 0 and stage_progress(cfg, 999) == 1
    assert field_progress(cfg, 300) == 0  # the sharpness ramp restarts with the SDF...
    cfg.train.coarse_restart_sharpness = False
    assert field_progress(cfg, 300) == pytest.approx(0.3, abs=1e-3)  # ...or goes on from the run's progress
    density = to_run_config(compose(["prompt=a red torus", "prior=builtin", "field=density", "train.coarse_share=0.3"]))
    assert coarse_steps(density) == 0 and stage_config(density, 0) is density  # a density run has no coarse stage


def test_learning_rates_fall_over_the_sdf_stage_only():
    from dreamnfsd.train.trainer import lr_decay

    cfg = to_run_config(compose(["prompt=a red torus", "prior=builtin", "train.steps=1000", "train.coarse_share=0.2"]))
    cfg.train.lr_final_share = 0.1
    assert lr_decay(cfg, 0) == lr_decay(cfg, 199) == lr_decay(cfg, 200) == 1.0  # constant through the coarse stage
    assert lr_decay(cfg, 999) == pytest.approx(0.1) and 0.1 < lr_decay(cfg, 600) < 1.0
    cfg.train.lr_final_share = 1.0
    assert lr_decay(cfg, 999) == 1.0


def test_pixel_jitter_starts_with_the_sdf_stage():
    from dreamnfsd.train.trainer import pixel_jitter_at

    over = [
        "prompt=a red torus",
        "prior=builtin",
        "train.steps=1000",
        "train.coarse_share=0.2",
        "camera.pixel_jitter=1",
    ]
    cfg = to_run_config(compose(over))
    assert pixel_jitter_at(cfg, 0) == pixel_jitter_at(cfg, 199) == 0.0  # the density field sees pixel centres
    assert pixel_jitter_at(cfg, 200) == pixel_jitter_at(cfg, 999) == 1.0
    density = to_run_config(compose([*over, "field=density"]))
    assert pixel_jitter_at(density, 0) == 1.0  # a density run has no coarse stage: jittered from its first step


def test_trainer_switches_to_the_sdf_and_resumes_across_the_switch_bit_identically(make_trainer):
    straight = make_trainer("straight")
    _train_to(straight, COARSE - 1)
    assert straight.scene.field.cfg.kind == "density"
    before = copy.deepcopy(straight.state_dict())  # a checkpoint of the coarse stage (a copy: not live tensors)
    _train_to(straight, COARSE)
    assert straight.scene.field.cfg.kind == "sdf"
    after = copy.deepcopy(straight.state_dict())  # a checkpoint of the SDF stage
    _train_to(straight, STEPS - 1)
    assert straight.ema is not None
    late = copy.deepcopy(straight.state_dict())  # one that holds the average
    _train_to(straight, STEPS)
    final = straight.state_dict()
    lrs = [g["lr"] for g in straight.optimizer.param_groups]
    assert lrs == pytest.approx([0.5 * base for base in straight.base_lrs])  # the last step ran at the final share

    for name, state in (("from_coarse", before), ("from_sdf", after), ("from_late", late)):
        resumed = make_trainer(name)
        resumed.load_state_dict(state)
        assert resumed.scene.field.cfg.kind == ("density" if state["step"] < COARSE else "sdf")
        _train_to(resumed, STEPS)
        got = {k: v for k, v in resumed.state_dict().items() if k != "wall_time"}
        assert_same_state({k: v for k, v in final.items() if k != "wall_time"}, got, name)


def test_the_average_spans_at_most_a_quarter_of_the_final_fields_stage():
    from dreamnfsd.train.trainer import ema_decay

    run = lambda *o: to_run_config(compose(["prompt=a red torus", "prior=builtin", *o]))  # noqa: E731
    assert ema_decay(run()) == 0.99  # the preset: 720 SDF steps, a window of about 100
    assert ema_decay(run("train.steps=100")) == pytest.approx(0.95)  # 80 SDF steps: a window of 20
    assert ema_decay(run("train.steps=5")) == 0.0  # 4 SDF steps: the last step's field
    assert ema_decay(run("train.steps=100", "train.ema_decay=0")) == 0.0
    assert ema_decay(run("train.steps=100", "field=density", "train.ema_decay=0.9")) == 0.9  # 100 steps, window 10


def test_the_last_step_loads_the_average_of_the_final_fields_iterates(make_trainer):
    trainer = make_trainer("ema")
    iterates, update = [], trainer._update_ema

    def record():  # each step's parameters, before the last step replaces them by the average
        update()
        if trainer.scene.field.cfg.kind == "sdf":
            iterates.append({k: p.detach().clone() for k, p in trainer.scene.field.named_parameters()})

    trainer._update_ema = record
    _train_to(trainer, STEPS)
    assert len(iterates) == STEPS - COARSE  # the SDF stage only: the coarse density field is not averaged
    expected = iterates[0]
    for it in iterates[1:]:  # train.ema_decay=0.5
        expected = {k: 0.5 * v + 0.5 * it[k] for k, v in expected.items()}
    final = dict(trainer.scene.field.named_parameters())
    for k, v in expected.items():
        assert torch.allclose(final[k], v, atol=1e-6), k
    assert not torch.equal(final["encoding.tables.0"], iterates[-1]["encoding.tables.0"])  # not the last iterate


def test_a_coarse_stage_run_exports_a_positive_volume_mesh(make_trainer, tmp_path):
    from dreamnfsd.export.mesh import extract_mesh

    trainer = make_trainer("export")
    _train_to(trainer, STEPS)
    mesh = extract_mesh(trainer.scene.field, 40)
    assert mesh.volume > 0 and np.isfinite(mesh.vertices).all()


def test_the_normals_total_variation_joins_the_loss_in_the_sdf_stage_only(make_trainer):
    trainer = make_trainer("normal_tv")
    trainer.cfg.train.lambda_normal_tv = 1.0
    trainer.cfg.train.normal_tv_points = 64
    terms = [trainer.train_step().terms for _ in range(COARSE + 2)]
    assert all("normal_tv" not in t for t in terms[:COARSE])  # the density field's normals are not a surface's
    assert all(float(t["normal_tv"]) > 0 for t in terms[COARSE:])  # its surface points were found and measured


@pytest.mark.cuda
def test_a_coarse_stage_run_switches_and_exports_on_cuda(tiny_pixel_prior, tmp_path):
    """The hand-over (carve, fit, switch) with the fields on the GPU: its lattice once stayed on the CPU."""
    from dreamnfsd.export.mesh import extract_mesh
    from dreamnfsd.guidance.priors import PriorConfig, load_prior
    from dreamnfsd.train.trainer import Trainer

    cfg = to_run_config(compose(["prompt=a red torus", *tiny_run_overrides(tiny_pixel_prior, tmp_path), *RUN]))
    prior = load_prior(PriorConfig(kind="pixel", model=str(tiny_pixel_prior)), "cuda")
    trainer = Trainer(cfg, tmp_path / "cuda", torch.device("cuda"), prior)
    _train_to(trainer, STEPS)
    assert trainer.scene.field.cfg.kind == "sdf" and next(trainer.scene.field.parameters()).is_cuda
    mesh = extract_mesh(trainer.scene.field, 40)
    assert mesh.volume > 0 and np.isfinite(mesh.vertices).all()


def test_dreamnfsd_export_rebuilds_a_coarse_stage_checkpoint_as_a_density_field(make_trainer):
    from types import SimpleNamespace

    from dreamnfsd.app.run import reexport

    trainer = make_trainer("reexport")
    _train_to(trainer, COARSE - 1)
    ckpt = trainer.save()
    args = SimpleNamespace(
        run=str(ckpt),
        mesh_resolution=32,
        threshold=None,
        video_resolution=None,
        video_frames=None,
        texture_size=None,
        no_mesh=False,
        no_video=True,
        device="cpu",
    )
    out = reexport(args)
    assert (out / "mesh.obj").exists() and (out / "mesh.glb").exists()
