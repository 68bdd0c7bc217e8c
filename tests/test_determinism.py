"""Determinism on CPU: same seed and config give bit-identical checkpoints and mesh bytes, across two runs and
across a run that is SIGKILLed at random moments (and once stopped with SIGTERM) and resumed each time.

Why this holds (and what it needs):

- every random draw comes from state the checkpoint carries: the host generator (cameras, shading, light, timesteps,
  noise), the device generator (sample offsets, occupancy-grid jitter and picks) and torch's global RNG;
- the optimizer state (Adam moments and step counts), the occupancy grid (EMA values and bitfield), the step, the NaN
  counters and the learning-rate scale are in the checkpoint; a resumed run rebuilds nothing else that is random;
- validation renders run without gradient, so they use no random offsets and cannot shift any RNG stream;
- CPU kernels are deterministic for a fixed thread count (the runs here use the same machine and torch's default
  thread count); a different ``train.num_threads`` may change float summation order in matmuls and reductions;
- ``grid.update_fraction < 1`` re-evaluates randomly picked cells, with repeats; ``OccupancyGrid.update`` keeps each
  cell once, because a parallel ``index_put_`` with repeated indices has no fixed order
  (``test_partial_grid_update_is_deterministic``);
- ``wall_time`` (and the run folder, in ``config.output_dir`` / ``config.resume``) differ by nature and are left out.

A resumed run loses at most the steps since its newest checkpoint (``train.ckpt_every``): it restarts from there and
replays them identically.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamnfsd.train.checkpoint import list_checkpoints, load_checkpoint
from dreamnfsd.train.metrics_log import read_metrics
from tests.conftest import REPO, tiny_run_overrides

pytestmark = pytest.mark.slow

STEPS, EVERY = 12, 2  # room after the 4th interruption, which comes after the checkpoint at step 6
# Shading (and its light RNG) from step 4 with normals and the orientation loss, a validation image every 4 steps,
# occupancy-grid updates (with their jitter) every 3 steps from step 3, out of step with the checkpoints so a resume
# lands between updates. (Not grid.update_fraction < 1: see test_partial_grid_update_is_deterministic.)
RUN_ARGS = [
    f"train.steps={STEPS}",
    f"train.ckpt_every={EVERY}",
    "train.val_every=4",
    "train.shading_warmup_steps=4",
    "grid.warmup_steps=3",
    "grid.update_every=3",
    "export.video=false",
    "train.log_every=1",
]
RUN_DEPENDENT = ("wall_time",)
CONFIG_RUN_DEPENDENT = ("output_dir", "resume", "output_root")


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": ""}


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dreamnfsd", *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fresh_args(prior: Path, out: Path, run: Path) -> list[str]:
    return ["prompt=a red cube", *tiny_run_overrides(prior, out), *RUN_ARGS, f"output_dir={run}"]


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def straight_runs(tiny_pixel_prior, tmp_path_factory) -> list[Path]:
    """Two independent uninterrupted runs, started together."""
    root = tmp_path_factory.mktemp("straight")
    runs = [root / "a", root / "b"]
    procs = [_start(_fresh_args(tiny_pixel_prior, root, run)) for run in runs]
    for proc in procs:
        _finish(proc)
    return runs


def assert_same_state(a, b, where: str = "checkpoint") -> None:
    """Recursive equality; tensors must match bit for bit (same dtype, shape and values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def final_state(run: Path) -> dict:
    (ckpt,) = [p for p in list_checkpoints(run) if p.name == f"step_{STEPS:06d}.pt"]
    state = load_checkpoint(ckpt)
    for key in RUN_DEPENDENT:
        state.pop(key)
    for key in CONFIG_RUN_DEPENDENT:
        state["config"].pop(key)
    return state


def logged_metrics(run: Path) -> list[dict]:
    """metrics.jsonl's records without the wall-clock speed; every line must parse."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]


def test_two_straight_runs_are_bit_identical(straight_runs):
    a, b = straight_runs
    assert_same_state(final_state(a), final_state(b))
    assert logged_metrics(a) == logged_metrics(b)
    for name in ("mesh.obj", "mesh.ply", "mesh.glb", f"validation/step_{STEPS:06d}.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_partial_grid_update_is_deterministic():
    import copy

    from dreamnfsd.rendering.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from dreamnfsd.utils.threads import torch_threads

    torch.manual_seed(0)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32, warmup_steps=0, update_every=1, update_fraction=0.5))
    w = torch.randn(3, 5)
    density = lambda x: torch.tanh(x @ w).sum(-1).exp() * 0.01
    grid.mark_from(density, generator=torch.Generator().manual_seed(1))
    start = copy.deepcopy(grid.state_dict())
    results = []
    # The race needs two threads, whatever an earlier test on this worker left the count at.
    with torch_threads(max(2, torch.get_num_threads())):
        for _ in range(10):
            grid.load_state_dict(start)
            generator = torch.Generator().manual_seed(5)
            for step in range(1, 4):
                grid.update(step, density, generator)
            results.append(grid.occs.clone())
    assert all(torch.equal(results[0], r) for r in results[1:])


def _newest_step(run: Path) -> int:
    found = list_checkpoints(run)
    return int(found[-1].name[5:11]) if found else 0


def _seconds_per_step(run: Path) -> float:
    """From the two newest checkpoints' times (one process wrote both); 0.05 s until there are two."""
    found = list_checkpoints(run)
    if len(found) < 2:
        return 0.05
    gap = found[-1].stat().st_mtime - found[-2].stat().st_mtime
    steps = int(found[-1].name[5:11]) - int(found[-2].name[5:11])
    return max(gap / max(steps, 1), 0.0)


def _wait_until(predicate, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll ``predicate`` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return True


def test_killed_and_resumed_run_matches_a_straight_run(straight_runs, tiny_pixel_prior, tmp_path):
    """SIGKILL three times at random moments (once right after start, before any checkpoint; then each time at a
    random point of the interval after a new checkpoint), SIGTERM once, resume each time with nothing but
    ``resume=<run dir>``; the final checkpoint and mesh equal the straight run's."""
    rng = random.Random(20240611)
    run = tmp_path / "killed"
    plan = ["SIGKILL", "SIGKILL", "SIGKILL", "SIGTERM"]
    events = []
    finished_early = False
    proc = _start(_fresh_args(tiny_pixel_prior, tmp_path, run))
    for sig in plan:
        start_step = _newest_step(run)
        if not events:  # right after start-up: the run folder exists, training has not checkpointed yet
            assert _wait_until(lambda: (run / "run.json").is_file(), proc)
            time.sleep(rng.uniform(0.0, 0.05))
        else:  # one new checkpoint, then a random moment within the next interval
            if not _wait_until(lambda s=start_step: _newest_step(run) > s, proc):
                break  # finished on its own (a fast machine); fewer interruptions, checked below
            time.sleep(rng.uniform(0.0, 1.0) * EVERY * _seconds_per_step(run))
        if proc.poll() is not None:
            break
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=300)
        events.append((sig, proc.returncode, _newest_step(run)))
        if sig == "SIGKILL":
            assert proc.returncode == -signal.SIGKILL
        else:
            # 0 or -15: the signal came as the run was finishing (after its handlers were removed); 143 during
            # training (a checkpoint and the resume hint) or during export (an export hint). The signal paths
            # themselves are tested in test_faults.py; here they only have to leave a resumable run.
            assert proc.returncode in (143, 0, -signal.SIGTERM), err[-3000:]
        status = json.loads((run / "run.json").read_text())
        if proc.returncode == 143 and f"dreamnfsd resume={run}" in err:
            assert status["status"] == "interrupted" and status["step"] == _newest_step(run)
        if status["status"] == "completed":  # the signal landed after the run had finished: nothing to resume
            finished_early = True
            break
        if proc.returncode == -signal.SIGKILL:
            assert status["status"] in ("running", "exporting")  # what a killed run leaves behind
        proc = _start([f"resume={run}"])  # the printed resume command, nothing else
    if not finished_early:
        _finish(proc)
    assert sum(rc == -signal.SIGKILL for _, rc, _ in events) >= 3, events
    assert json.loads((run / "run.json").read_text())["status"] == "completed"

    straight = straight_runs[0]
    assert_same_state(final_state(straight), final_state(run))
    assert (run / "mesh.obj").read_bytes() == (straight / "mesh.obj").read_bytes()
    image = f"validation/step_{STEPS:06d}.png"
    assert (run / image).read_bytes() == (straight / image).read_bytes()
    # metrics.jsonl: every step exactly once, as the straight run logged it (speed aside), despite the kills.
    logged, reference = logged_metrics(run), logged_metrics(straight)
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    assert logged == reference
    print("interruptions (signal, exit code, newest checkpoint step):", events)


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tiny_pixel_prior, tmp_path):
    """Killed after logging steps but before any checkpoint, a resumed run starts again at step 0: its metrics.jsonl
    must drop the lines the killed attempt logged, not log those steps twice."""
    run = tmp_path / "early"
    args = [a if not a.startswith("train.ckpt_every=") else "train.ckpt_every=1000" for a in RUN_ARGS]
    proc = _start(["prompt=a red cube", *tiny_run_overrides(tiny_pixel_prior, tmp_path), *args, f"output_dir={run}"])
    logged = lambda: len(read_metrics(run / "metrics.jsonl")) >= 2  # noqa: E731
    if not _wait_until(logged, proc):
        pytest.skip("the run finished before it could be killed (a fast machine)")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not list_checkpoints(run) and len(read_metrics(run / "metrics.jsonl")) >= 2
    _finish(_start([f"resume={run}"]))
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
