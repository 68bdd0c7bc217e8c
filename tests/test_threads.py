"""The prior's forward gives the same bits on one CPU thread or on several, so it may take every core while the
NeRF side stays pinned to ``train.num_threads`` (dreamnfsd.utils.threads)."""

from __future__ import annotations

import copy

import pytest
import torch

from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.data import make_cameras
from dreamnfsd.guidance.priors import PriorConfig, load_prior
from dreamnfsd.train.trainer import Trainer
from dreamnfsd.utils.threads import pin_thread_sensitive_layers, torch_threads
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


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6])
def test_prior_call_has_the_same_bits_on_one_and_two_threads(prior, rows):
    """Every row count a step sends (SDS: 2 per image; NFSD: 2 or 3), with cameras and mixed timesteps."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 3, 32, 32, generator=g)
    t = torch.randint(20, 980, (rows,), generator=g)
    text = prior.encode_text(["", "a red cube", "a blue torus"])[torch.arange(rows) % 3]
    cams = make_cameras(torch.rand(rows, generator=g) * 6.28, torch.rand(rows, generator=g) * 0.7, 32)
    outputs = {}
    for threads in (1, 2):
        prior.use_cpu_threads(threads)
        with torch_threads(1):  # the NeRF side's count, which the call must give back
            outputs[threads] = prior.predict_noise(x, t, text, cams)
            assert torch.get_num_threads() == 1
    prior.use_cpu_threads(2)
    assert torch.equal(outputs[1], outputs[2])


def test_training_has_the_same_bits_whatever_the_prior_threads(tmp_path):
    """A few built-in-preset steps, through the coarse stage's switch to the SDF, with the prior on 1 thread and on
    2: the same fields, moments and grids, bit for bit."""
    states = {}
    for threads in (1, 2):
        cfg = to_run_config(
            compose(
                [
                    "prompt=a red cube",
                    "prior=builtin",
                    "guidance=nfsd",
                    "train.steps=8",
                    "train.coarse_fit_iters=5",
                    f"prior.num_threads={threads}",
                ]
            )
        )
        with torch_threads(1):
            trainer = Trainer(cfg, tmp_path / str(threads), torch.device("cpu"), load_prior(cfg.prior))
            while trainer.step < cfg.train.steps:
                trainer.train_step()
        assert trainer.prior.cpu_threads == threads
        state = copy.deepcopy(trainer.state_dict())
        del state["wall_time"], state["config"]  # the clock, and the prior.num_threads this test varies
        states[threads] = state
    assert_same_state(states[1], states[2])


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
