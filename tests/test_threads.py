"""The prior's forward gives the same bits on one CPU thread or on several, and with its batch split into parts run
at once, so it may take every core while the NeRF side stays pinned to ``train.num_threads``
(dreamnfsd.utils.threads)."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.data import make_cameras
from dreamnfsd.guidance.priors import PriorConfig, load_prior
from dreamnfsd.models.encodings import HashEncoding, HashEncodingConfig
from dreamnfsd.train.scene import build_scene
from dreamnfsd.train.trainer import Trainer
from dreamnfsd.utils.threads import (
    STARTUP_THREADS,
    forward_in_parts,
    map_at_once,
    part_sizes,
    pin_thread_sensitive_layers,
    query_in_parts,
    spare_threads,
    torch_threads,
)
from tests.test_determinism import assert_same_state


@pytest.fixture(scope="module")
def prior():
    return load_prior(PriorConfig(kind="builtin", num_threads=2))


def test_torch_threads_sets_and_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(3):
        assert torch.get_num_threads() == 3
        with torch_threads(0):  # 0 leaves the count alone
            assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("the count comes back on errors too")
    assert torch.get_num_threads() == before


def test_pinning_is_done_once(prior):
    assert prior.cpu_threads == 2
    assert pin_thread_sensitive_layers(prior.unet) == 0  # load_prior already pinned it


def _prior_inputs(prior, rows: int, channels: int = 3, size: int = 32):
    """A prior call's inputs for ``rows`` rows: noisy images, mixed timesteps, three prompts, cameras."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, channels, size, size, generator=g)
    t = torch.randint(20, 980, (rows,), generator=g)
    text = prior.encode_text(["", "a red cube", "a blue torus"])[torch.arange(rows) % 3]
    cams = make_cameras(torch.rand(rows, generator=g) * 6.28, torch.rand(rows, generator=g) * 0.7, size)
    return x, t, text, cams


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 9])
def test_prior_call_has_the_same_bits_on_any_threads_and_parts(prior, rows):
    """Every row count a step sends (SDS: 2 per image; NFSD: 2 or 3), with cameras and mixed timesteps, on 1 to 16
    threads (a 16-core machine's default), whole or in parts of two rows or more: (threads, parts)."""
    x, t, text, cams = _prior_inputs(prior, rows)
    outputs = {}
    for threads, parts in ((1, 1), (2, 1), (2, 0), (3, 0), (4, 1), (16, 0)):
        prior.use_cpu_threads(threads, parts)
        with torch_threads(1):  # the NeRF side's count, which the call must give back
            outputs[threads, parts] = prior.predict_noise(x, t, text, cams)
            assert torch.get_num_threads() == 1
    prior.use_cpu_threads(2)
    for key, out in outputs.items():
        assert torch.equal(outputs[1, 1], out), f"(threads, parts) = {key}"


@pytest.mark.parametrize("rows, threads, expected", [(2, 2, 1), (3, 2, 1), (4, 2, 2), (5, 4, 2), (6, 4, 3), (6, 1, 1)])
def test_parts_have_at_least_two_rows(prior, monkeypatch, rows, threads, expected):
    """A 3x3 convolution sums a single image in another order than the same image in a batch, so a part of one row
    would change bits: the prior splits only into parts of two rows or more, and never beyond its threads. A batch
    it cannot split runs on at most two threads (elementwise ops round their shares' tails differently on three)."""
    from dreamnfsd.guidance.priors import base

    seen, counts = [], []

    def record(forward, n, parts):
        seen.append(parts)
        return forward(slice(0, n))

    monkeypatch.setattr(base, "forward_in_parts", record)
    hook = prior.unet.register_forward_pre_hook(lambda *_: counts.append(torch.get_num_threads()))
    x, t, text, cams = _prior_inputs(prior, rows)
    prior.use_cpu_threads(threads)
    try:
        prior.predict_noise(x, t, text, cams)
    finally:
        prior.use_cpu_threads(2)
        hook.remove()
    assert (seen or [1]) == [expected]
    if not seen:
        assert counts == [min(threads, 2)]


class _Coupled(torch.nn.Module):
    """A linear layer fed one vector per row (batch-coupled), then a per-row one that can fail."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        pin_thread_sensitive_layers(self)

    def forward(self, x, fail=False):
        h = self.embed(x)
        if fail:
            raise ValueError("part failed")
        return self.head(self.embed(h))


def test_forward_in_parts_joins_coupled_layers_and_stops_on_an_error():
    threads_before = threading.active_count()
    torch.manual_seed(0)
    model, x = _Coupled(), torch.randn(7, 8)
    with torch.no_grad():
        whole = model(x)
        split = forward_in_parts(lambda rows: model(x[rows]), 7, 3)
    assert torch.equal(whole, split)
    # One part fails after the first meeting: the others, waiting at the next, stop, and its error is raised.
    with pytest.raises(ValueError, match="part failed"):
        forward_in_parts(lambda rows: model(x[rows], fail=rows.start == 0), 7, 3)
    assert threading.active_count() == threads_before  # every helper thread has ended


def test_training_has_the_same_bits_whatever_the_prior_threads(tmp_path):
    """A few built-in-preset steps, through the coarse stage's switch to the SDF, with the prior on 1 thread and in
    2 parts: the same fields, moments and grids, bit for bit."""
    states = {}
    for threads, parts in ((1, 1), (2, 0)):
        cfg = to_run_config(
            compose(
                [
                    "prompt=a red cube",
                    "prior=builtin",
                    "guidance=nfsd",
                    "train.steps=8",
                    "train.coarse_fit_iters=5",
                    f"prior.num_threads={threads}",
                    f"prior.batch_parts={parts}",
                ]
            )
        )
        with torch_threads(1):
            trainer = Trainer(cfg, tmp_path / f"{threads}-{parts}", torch.device("cpu"), load_prior(cfg.prior))
            while trainer.step < cfg.train.steps:
                trainer.train_step()
        assert trainer.prior.cpu_threads == threads
        state = copy.deepcopy(trainer.state_dict())
        del state["wall_time"], state["config"]  # the clock, and the prior settings this test varies
        states[threads, parts] = state
    assert_same_state(states[1, 1], states[2, 0])


def test_a_benchmark_run_trains_on_train_num_threads(prior, monkeypatch):
    """The benchmark applies ``train.num_threads`` as a run does (it once ran on whatever the shell gave it), and
    gives the count back afterwards."""
    from dreamnfsd.eval import benchmark

    class Stop(Exception):
        pass

    seen = []

    def fit(self, stop):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(benchmark.Trainer, "fit", fit)
    cfg = to_run_config(compose(["prompt=a red cube", "prior=builtin", "train.num_threads=3"]))
    with torch_threads(1):
        with pytest.raises(Stop):
            benchmark.run_one(cfg, prior, None, 32)
        assert torch.get_num_threads() == 1
    assert seen == [3]


def test_a_run_gives_the_thread_count_back(monkeypatch, tmp_path):
    """``train_run`` trains on ``train.num_threads`` and restores the count: a sweep's basic launcher runs its jobs
    one after another in one process, and a job with ``train.num_threads=0`` must get torch's default, not the
    count the job before it set."""
    from dreamnfsd.app import run as run_module

    seen = []
    monkeypatch.setattr(run_module, "_train_run", lambda cfg, run_dir, yaml: seen.append(torch.get_num_threads()))
    cfg = to_run_config(compose(["prompt=a red cube", "prior=builtin", "train.num_threads=3"]))
    with torch_threads(1):
        run_module.train_run(cfg, tmp_path, "")
        assert torch.get_num_threads() == 1
    assert seen == [3]


@pytest.mark.parametrize(
    "rows, parts, align, sizes",
    [
        (10, 3, 1, [4, 3, 3]),
        (9000, 2, 4096, [4096, 4904]),
        (12289, 3, 4096, [4096, 4096, 4097]),
        (100, 4, 4096, [100]),
        (65536, 2, 4096, [32768, 32768]),
    ],
)
def test_part_sizes(rows, parts, align, sizes):
    assert part_sizes(rows, parts, align) == sizes


@pytest.mark.parametrize("kind", ["density", "sdf"])
def test_a_field_query_in_parts_has_the_bits_of_one_thread(kind):
    """No-grad field queries (occupancy updates, the carve and export lattices) run as parts on every core: each
    point is computed on its own, and parts start on whole multiples of QUERY_PART_ROWS points."""
    cfg = to_run_config(compose(["prompt=a red cube", "prior=builtin", f"field={kind}"]))
    g = torch.Generator().manual_seed(0)
    scene = build_scene(cfg, torch.device("cpu"), g)
    with torch.no_grad():
        for p in scene.field.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    fns = [scene.field.density, scene.renderer.occupancy_fn] + ([scene.field.sdf] if kind == "sdf" else [])
    for n in (8192, 9000, 12289, 40000):
        x = torch.rand(n, 3, generator=g) * 2.2 - 1.1
        for fn in fns:
            with torch_threads(1), torch.no_grad():
                whole = fn(x)
                for parts in (2, 3):
                    assert torch.equal(whole, query_in_parts(fn, x, parts)), (n, parts)
    calls = []
    with torch.enable_grad():  # with grad it runs whole: parts would give the backward another graph
        query_in_parts(lambda pts: calls.append(len(pts)) or pts, torch.zeros(9000, 3), 2)
    with torch.no_grad():  # too small to split
        query_in_parts(lambda pts: calls.append(len(pts)) or pts, torch.zeros(8000, 3), 2)
    assert calls == [9000, 8000]


def test_occupancy_updates_have_the_same_bits_on_one_core_and_all(monkeypatch):
    from dreamnfsd.utils import threads

    cfg = to_run_config(compose(["prompt=a red cube", "prior=builtin"]))
    grids = []
    for cores in (1, 2):
        monkeypatch.setattr(threads, "STARTUP_THREADS", cores)
        g = torch.Generator().manual_seed(0)
        scene = build_scene(cfg, torch.device("cpu"), g)
        with torch_threads(1):
            scene.renderer.mark_occupancy(g)
            for step in range(16, 64, 16):
                scene.renderer.update_occupancy(step, g)
        grids.append(scene.renderer.grid.occs.clone())
    assert torch.equal(grids[0], grids[1])


@pytest.mark.parametrize("kind", ["stable_diffusion", "pixel"])
def test_tiny_diffusers_priors_split_with_the_same_bits(kind, tiny_sd_prior, tiny_pixel_prior):
    """The split holds for the other priors' layouts too (random tiny models: only bits are compared): a latent
    Stable Diffusion UNet and a camera-aware pixel UNet, 4 and 6 rows, whole on one thread against 2 and 3 parts."""
    folder = tiny_sd_prior if kind == "stable_diffusion" else tiny_pixel_prior
    prior = load_prior(PriorConfig(kind=kind, model=str(folder), local_files_only=True, num_threads=1))
    for rows in (4, 6):
        x, t, text, cams = _prior_inputs(prior, rows, prior.unet.config.out_channels, prior.unet.config.sample_size)
        outputs = []
        for threads, parts in ((1, 1), (2, 0), (3, 0)):
            prior.use_cpu_threads(threads, parts)
            with torch_threads(1):
                outputs.append(prior.predict_noise(x, t, text, cams))
        assert all(torch.equal(outputs[0], out) for out in outputs[1:]), rows


def test_side_by_side_steps_variants_in_turn():
    """``scripts/bench_step.py --prior-parts 1 0``: trainers that differ only in speed, stepped in turn, end with the
    same bits."""
    from dreamnfsd.benchmarks.step import side_by_side

    base = ["train.coarse_share=0", "train.steps=8"]
    same = side_by_side(base, ["prior.batch_parts=1", "prior.batch_parts=0"], blocks=1, block=1, warmup=0)
    assert same["identical"] and [r["variant"] for r in same["rows"]] == ["prior.batch_parts=1", "prior.batch_parts=0"]
    assert same["rows"][0]["speedup"] == 1.0 and all(r["step_ms"] > 0 for r in same["rows"])


def test_step_breakdown_runs_the_nerf_side_on_train_num_threads():
    """``scripts/bench_step.py`` times the step a run takes: the NeRF side on ``train.num_threads``, whatever the
    caller's count, which it gets back afterwards."""
    from dreamnfsd.benchmarks.step import cpu_preset_breakdown

    with torch_threads(2):
        result = cpu_preset_breakdown(["train.num_threads=1", "train.coarse_share=0", "train.steps=4"], 1, 0)
        assert torch.get_num_threads() == 2
    assert result["config"]["train_threads"] == 1 and result["step_ms"] > 0
    assert result["config"]["prior_threads"] == STARTUP_THREADS  # prior.num_threads=0: every core


def test_map_at_once_keeps_the_order_and_runs_its_tasks_at_once():
    meet = threading.Barrier(3, timeout=60)  # passes only if all three tasks run at the same time

    def item(k: int) -> tuple[int, int]:
        if k < 3:
            meet.wait()
        return k, torch.get_num_threads()

    assert map_at_once(item, 7, 3) == [(k, 1) for k in range(7)]
    assert map_at_once(lambda k: threading.get_ident(), 3, 1) == [threading.get_ident()] * 3

    def fails_at_4(k: int) -> int:
        if k == 4:
            raise ValueError(f"task {k}")
        return k

    with pytest.raises(ValueError, match="task 4"):
        map_at_once(fails_at_4, 7, 3)


def test_spare_threads_only_for_a_one_thread_caller_outside_a_part(monkeypatch):
    from dreamnfsd.utils import threads

    monkeypatch.setattr(threads, "STARTUP_THREADS", 2)
    x = torch.zeros(4, 3)
    with torch_threads(1):
        assert spare_threads(x) == 2
        # A task, or a part of a split forward, has its core already: no tasks of its own.
        assert map_at_once(lambda k: spare_threads(x), 3, 2) == [1] * 3
        assert forward_in_parts(lambda rows: torch.tensor([spare_threads(x)] * 2), 4, 2).tolist() == [1] * 4
        assert spare_threads(x) == 2
    with torch_threads(2):  # the caller's ops use the cores already (and one-thread tasks would change bits)
        assert spare_threads(x) == 1


@pytest.mark.parametrize("n", [4096, 9001])
def test_hash_grid_levels_at_once_have_the_bits_of_in_turn(monkeypatch, n):
    """With spare cores a hash encoding's levels (dense and hashed) are encoded at once, and their table gradients
    computed at once: the same bits as in turn."""
    from dreamnfsd.models import encodings
    from dreamnfsd.utils import threads

    tasks = []
    monkeypatch.setattr(
        encodings, "map_at_once", lambda fn, count, k: tasks.append(k) or threads.map_at_once(fn, count, k)
    )
    enc = HashEncoding(HashEncodingConfig(n_levels=6, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.5))
    assert {lv.dense for lv in enc.levels} == {True, False}
    g = torch.Generator().manual_seed(n)
    x, grad_out = torch.rand(n, 3, generator=g), torch.randn(n, enc.out_dim, generator=g)
    results = []
    for cores in (1, 2, 3):
        monkeypatch.setattr(threads, "STARTUP_THREADS", cores)
        enc.zero_grad()
        with torch_threads(1):
            with torch.no_grad():
                plain = enc(x)
            out = enc(x)
            out.backward(grad_out)
        assert torch.equal(plain, out)
        results.append([out.detach(), *(t.grad.clone() for t in enc.tables)])
    assert tasks == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # no-grad forward, forward, backward per core count
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
