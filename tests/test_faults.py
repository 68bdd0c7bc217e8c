"""Faults: NaN/inf steps, a full or unwritable disk, writers killed mid-write, and Ctrl-C / SIGTERM.

The kill-and-resume fault injection (SIGKILL at random times, resume, compare with a straight run) lives in
``test_determinism.py``, beside the straight runs it is compared with.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import dreamnfsd.utils.files as files_mod
from dreamnfsd.app.cli import main
from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from dreamnfsd.utils.files import OutputWriteError, atomic_write_bytes
from tests.conftest import REPO, tiny_run_overrides

PROMPT = "a red cube"
# Albedo shading only, no validation images: the cheapest real training step.
FAST = ["train.shading_warmup_steps=1000", "train.lambda_orientation=0", "train.val_every=0"]


# --- NaN / inf -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prior(tiny_pixel_prior):
    from dreamnfsd.guidance.priors import PriorConfig, load_prior

    return load_prior(PriorConfig(kind="pixel", model=str(tiny_pixel_prior)))


@pytest.fixture
def make_trainer(tiny_pixel_prior, prior, tmp_path):
    from dreamnfsd.train.trainer import Trainer

    def make(*extra: str):
        cfg = to_run_config(
            compose([f"prompt={PROMPT}", *tiny_run_overrides(tiny_pixel_prior, tmp_path), *FAST, *extra])
        )
        return Trainer(cfg, tmp_path / "run", torch.device("cpu"), prior)

    return make


class _NoStop:
    requested = None


def _inject(trainer, bad_calls, where: str = "loss"):
    """Make the guidance's ``n``-th call (1-based, counting every call) produce NaN in the loss or only in the
    gradients (a hook on an MLP weight), for each ``n`` in ``bad_calls`` (a set, or a callable n -> bool)."""
    real = trainer.guidance.step
    calls = {"n": 0}
    is_bad = bad_calls if callable(bad_calls) else bad_calls.__contains__
    weight = trainer.scene.field.mlp_parameters()[0]
    hooks = []

    def step(z, cams, generator, progress):
        while hooks:  # a gradient hook lives for one step
            hooks.pop().remove()
        calls["n"] += 1
        out = real(z, cams, generator, progress)
        if not is_bad(calls["n"]):
            return out
        if where == "loss":
            return dataclasses.replace(out, loss=out.loss * float("nan"))
        hooks.append(weight.register_hook(lambda g: torch.full_like(g, float("inf"))))
        return out

    trainer.guidance.step = step
    return calls


def _params(trainer):
    return [p.detach().clone() for g in trainer.optimizer.param_groups for p in g["params"]]


def _adam_moments(trainer):
    return [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_nonfinite_step_is_skipped_and_counted(make_trainer, where):
    trainer = make_trainer("train.steps=1", "train.ckpt_every=0", "train.max_consecutive_skips=2")
    trainer.fit(_NoStop())
    before, moments = _params(trainer), _adam_moments(trainer)
    trainer.cfg.train.steps = 2
    _inject(trainer, {1}, where)
    trainer.fit(_NoStop())
    assert trainer.step == 2 and trainer.total_skips == 1 and trainer.consecutive_skips == 1
    # Neither the weights nor Adam's moments saw the bad step.
    assert all(torch.equal(a, b) for a, b in zip(before, _params(trainer)))
    assert all(torch.equal(a, b) for a, b in zip(moments, _adam_moments(trainer)))
    trainer.cfg.train.steps = 3
    trainer.fit(_NoStop())  # the next good step applies and ends the streak
    assert trainer.consecutive_skips == 0 and trainer.total_skips == 1 and trainer.rollbacks == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(trainer)))


def test_consecutive_nonfinite_steps_roll_back_with_a_lower_learning_rate(make_trainer):
    trainer = make_trainer(
        "train.steps=4",
        "train.ckpt_every=2",
        "train.max_consecutive_skips=2",
        "train.on_nan=rollback",
        "train.rollback_lr_factor=0.5",
    )
    base = [g["lr"] for g in trainer.optimizer.param_groups]
    calls = _inject(trainer, {3, 4})  # steps 3 and 4 go bad once; the checkpoint of step 2 is the last good one
    trainer.fit(_NoStop())
    assert trainer.step == 4 and calls["n"] == 6  # 4 steps + the 2 replayed after the rollback
    assert trainer.rollbacks == 1 and trainer.total_skips == 2 and trainer.lr_scale == 0.5
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [b * 0.5 for b in base]
    assert all(torch.isfinite(p).all() for p in _params(trainer))
    state = load_checkpoint(list_checkpoints(trainer.run_dir)[-1])
    assert state["step"] == 4 and state["lr_scale"] == 0.5 and state["rollbacks"] == 1


def test_nonfinite_steps_abort_when_asked(make_trainer):
    from dreamnfsd.train.trainer import NonFiniteTrainingError

    trainer = make_trainer("train.steps=4", "train.ckpt_every=1", "train.max_consecutive_skips=2", "train.on_nan=abort")
    _inject(trainer, lambda n: n >= 2)
    with pytest.raises(NonFiniteTrainingError, match=r"train: 2 steps in a row gave NaN/inf at step 3; lower"):
        trainer.fit(_NoStop())
    assert trainer.total_skips == 2 and trainer.rollbacks == 0


def test_persistent_nonfinite_steps_give_up_after_a_few_rollbacks(make_trainer, monkeypatch):
    import dreamnfsd.train.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "MAX_ROLLBACKS", 1)
    trainer = make_trainer("train.steps=4", "train.ckpt_every=1", "train.max_consecutive_skips=1")
    _inject(trainer, lambda n: n >= 2)
    with pytest.raises(trainer_mod.NonFiniteTrainingError, match="after 1 rollbacks"):
        trainer.fit(_NoStop())
    assert trainer.rollbacks == 1 and trainer.lr_scale == 0.5 and trainer.total_skips == 2


def test_nan_abort_through_the_command(tiny_pixel_prior, tmp_path, capsys, monkeypatch):
    """The user's view: one line naming the problem, exit code 1, run.json says failed, checkpoints kept."""
    from dreamnfsd.guidance import Guidance

    real = Guidance.step
    monkeypatch.setattr(
        Guidance,
        "step",
        lambda self, *a, **k: dataclasses.replace(
            real(self, *a, **k), loss=torch.tensor(float("nan"), requires_grad=True)
        ),
    )
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                f"prompt={PROMPT}",
                *tiny_run_overrides(tiny_pixel_prior, tmp_path),
                *FAST,
                "train.steps=6",
                "train.ckpt_every=2",
                "train.max_consecutive_skips=2",
                f"output_dir={run}",
            ]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "dreamnfsd: error: train: 2 steps in a row gave NaN/inf at step 2 with no checkpoint to roll back to" in err
    assert "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


# --- disk full, unwritable, killed mid-write -----------------------------------------------------------------------
class _FailingFile:
    """A file object that writes the first ``budget`` bytes for real, then raises ``error``."""

    def __init__(self, f, budget: int, error: BaseException):
        self.f, self.budget, self.error = f, budget, error

    def write(self, data) -> int:
        if len(data) > self.budget:
            self.f.write(data[: self.budget])
            self.f.flush()
            raise self.error
        self.budget -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _patch_writer(monkeypatch, when, budget: int, error: BaseException):
    """Every ``open(path, "wb")`` in the checkpoint module for which ``when(path)`` holds fails after ``budget``
    bytes."""

    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (handed to the caller's with-block)
        return _FailingFile(f, budget, error) if "w" in mode and when(Path(path)) else f

    monkeypatch.setattr(files_mod, "open", fake_open, raising=False)


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    state = {"step": 2, "prompt": PROMPT, "config": {}, "scene": {"w": torch.arange(10_000.0)}, "optimizer": {}}
    first = save_checkpoint(state, tmp_path, 2)
    first_bytes = first.read_bytes()
    _patch_writer(monkeypatch, lambda p: True, budget=1000, error=_enospc())
    with pytest.raises(OutputWriteError, match=r"output: could not write .*step_000004.pt \(the disk is full\)"):
        save_checkpoint({**state, "step": 4}, tmp_path, 4)
    assert first.read_bytes() == first_bytes
    assert list_checkpoints(tmp_path) == [first] and resolve_checkpoint(str(tmp_path)) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000002.pt"]  # no temp file left


def test_disk_full_mid_run_through_the_command(tiny_pixel_prior, tmp_path, capsys, monkeypatch):
    """ENOSPC on the second checkpoint of a real run: one clear line, exit 1, the first checkpoint intact and
    resumable, run.json says failed."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    _patch_writer(monkeypatch, lambda p: "step_000004" in p.name, budget=4096, error=_enospc())
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                f"prompt={PROMPT}",
                *tiny_run_overrides(tiny_pixel_prior, tmp_path),
                *FAST,
                "train.steps=6",
                "train.ckpt_every=2",
                f"output_dir={run}",
            ]
        )
    assert exit_info.value.code == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dreamnfsd")]
    assert (
        err_lines[-1].startswith("dreamnfsd: error: output: could not write ")
        and "the disk is full" in err_lines[-1]
        and "earlier checkpoints are intact" in err_lines[-1]
    )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000002.pt"]
    assert load_checkpoint(run / "checkpoints" / "step_000002.pt")["step"] == 2
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and "disk is full" in status["error"]


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError, match="output: could not write .*not_a_folder"):
        atomic_write_bytes(b"data", blocker / "checkpoints" / "step_000001.pt")


def test_an_interrupted_write_keeps_the_old_file_and_a_dead_writers_temp_is_cleaned(tmp_path, monkeypatch):
    class Killed(BaseException):  # not an OSError, like KeyboardInterrupt
        pass

    state = {"step": 2, "prompt": PROMPT, "config": {}, "scene": {"w": torch.ones(5000)}, "optimizer": {}}
    first = save_checkpoint(state, tmp_path, 2)
    good = first.read_bytes()
    _patch_writer(monkeypatch, lambda p: True, budget=3000, error=Killed())
    with pytest.raises(Killed):
        save_checkpoint({**state, "step": 4}, tmp_path, 4)
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_000002.pt"]  # the interrupted writer cleaned up
    (folder / ".step_000004.pt.tmp-999999.pt").write_bytes(b"half")  # as left by a SIGKILLed process
    assert first.read_bytes() == good and resolve_checkpoint(str(tmp_path)) == first
    save_checkpoint({**state, "step": 4}, tmp_path, 4)
    assert sorted(p.name for p in folder.iterdir()) == ["step_000002.pt", "step_000004.pt"]


_KILL_WRITER = """
import sys
from pathlib import Path
from dreamnfsd.utils.files import atomic_write_bytes
path, i = Path(sys.argv[1]), 0
print("ready", flush=True)
while True:
    i += 1
    atomic_write_bytes(bytes([i % 256]) * (8 << 20), path)
"""


def test_sigkill_at_random_points_never_leaves_a_partial_file(tmp_path):
    """A real process rewriting an 8 MB file atomically, SIGKILLed at random moments: the file is always whole."""
    path = tmp_path / "state.bin"
    atomic_write_bytes(b"\x00" * (8 << 20), path)
    rng = random.Random(1)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        data = path.read_bytes()
        assert len(data) == 8 << 20 and data == data[:1] * len(data)


# --- Ctrl-C and SIGTERM --------------------------------------------------------------------------------------------
_STOP_SCRIPT = """
import sys, time
from dreamnfsd.train.signals import StopRequest, exit_code
with StopRequest() as stop:
    print("ready", flush=True)
    while stop.requested is None:  # the training loop polls once per step
        time.sleep(0.01)
    print("saving", flush=True)
    time.sleep(float(sys.argv[1]))  # the checkpoint write
print("saved", flush=True)
sys.exit(exit_code(stop.requested))
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("times", [1, 2])
def test_stop_request_first_signal_stops_cleanly_second_exits_at_once(name, times):
    save_seconds = 0.2 if times == 1 else 60
    proc = subprocess.Popen(
        [sys.executable, "-c", _STOP_SCRIPT, str(save_seconds)],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(getattr(signal, name))
    assert proc.stdout.readline().strip() == "saving"
    started = time.monotonic()
    if times == 2:
        proc.send_signal(getattr(signal, name))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if name == "SIGINT" else 143)
    assert f"{name}: saving a checkpoint after this step" in err
    if times == 2:
        assert time.monotonic() - started < 10 and "saved" not in out
        assert f"{name} again: exiting now without saving." in err
    else:
        assert out.strip() == "saved"


class _Watched:
    """A ``dreamnfsd`` subprocess whose stderr is collected by a thread (so we can react to what it prints)."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": ""}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dreamnfsd", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.err += chunk

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.err:
            assert self.proc.poll() is None, self.err.decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, f"timed out waiting for {text!r}"
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc, self.err.decode(errors="replace")


def _signal_args(tiny_pixel_prior: Path, out: Path, run: Path) -> list[str]:
    # Slow steps (32 px, 4 views) so a second signal surely lands before the first one's step and save are done.
    return [
        f"prompt={PROMPT}",
        *tiny_run_overrides(tiny_pixel_prior, out),
        *FAST,
        "train.steps=100000",
        "train.ckpt_every=0",
        "train.batch_size=4",
        "camera.height=32",
        "camera.width=32",
        f"output_dir={run}",
    ]


@pytest.mark.slow
def test_first_signal_saves_and_says_how_to_resume_second_exits_at_once(tiny_pixel_prior, tmp_path):
    # Ctrl-C once (save, say how to resume, 130) and SIGTERM twice (exit at once, 143), both at once: the start-up
    # dominates and overlaps. A single SIGTERM and the resume after it are in test_determinism's kill-and-resume.
    cases = [("SIGINT", 1), ("SIGTERM", 2)]
    runs = {case: tmp_path / f"{case[0]}-{case[1]}" for case in cases}
    procs = {case: _Watched(_signal_args(tiny_pixel_prior, tmp_path, runs[case])) for case in cases}
    for w in procs.values():
        w.wait_for("step/s")  # the progress bar: training has started
    for (name, times), w in procs.items():
        sig = getattr(signal, name)
        w.proc.send_signal(sig)
        if times == 2:
            w.wait_for(f"{name}: saving a checkpoint after this step")
            sent = time.monotonic()
            w.proc.send_signal(sig)
            rc, err = w.finish()
            assert time.monotonic() - sent < 5
        else:
            rc, err = w.finish()
        run = runs[(name, times)]
        expected = 130 if name == "SIGINT" else 143
        assert rc == expected, err[-2000:]
        assert "Traceback" not in err
        if times == 1:
            assert f"{name} — stopped at step" in err and f"dreamnfsd resume={run}" in err, err[-2000:]
            (ckpt,) = list_checkpoints(run)
            state = load_checkpoint(ckpt)
            assert state["step"] >= 1 and ckpt.name == f"step_{state['step']:06d}.pt"
            status = json.loads((run / "run.json").read_text())
            assert status["status"] == "interrupted" and status["signal"] == name and status["step"] == state["step"]
        else:
            assert f"{name} again: exiting now without saving." in err, err[-2000:]
            assert list_checkpoints(run) == []
            assert json.loads((run / "run.json").read_text())["status"] == "running"  # what a kill leaves


def test_export_writes_are_atomic(tmp_path, monkeypatch):
    """A video, image or mesh write that dies half-way (the disk fills while the temp file is flushed) keeps the
    previous file and leaves no temp file."""
    import trimesh

    import dreamnfsd.utils.files as files
    from dreamnfsd.export.texture import write_textured_meshes
    from dreamnfsd.export.video import write_image, write_video

    albedo = lambda x: (x * 0.5 + 0.5).clamp(0, 1)
    box = trimesh.creation.box()
    video, image = (
        write_video(torch.zeros(4, 16, 16, 3), tmp_path / "t.mp4", 8),
        write_image(torch.zeros(8, 8, 3), tmp_path / "v.png"),
    )
    meshes = write_textured_meshes(box, albedo, tmp_path, texture_size=64)
    assert set(meshes) == {"glb", "obj", "mtl", "png", "ply"}
    before = {p: p.read_bytes() for p in [video, image, *meshes.values()]}

    def fsync_fails(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fsync_fails)
    writes = (
        lambda: write_video(torch.ones(4, 16, 16, 3), video, 8),
        lambda: write_image(torch.ones(8, 8, 3), image),
        lambda: write_textured_meshes(trimesh.creation.icosphere(), albedo, tmp_path, texture_size=64),
    )
    for write in writes:
        with pytest.raises(OutputWriteError, match="the disk is full.*re-export with dreamnfsd-export"):
            write()
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before)


_HOLD_LOCK = """
import sys, time
from dreamnfsd.utils.files import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path):
    """While one process trains a run, a second resume of it is refused in one line; once the holder dies (even by
    SIGKILL) the run can be taken again, and a clean release leaves no lock file behind."""
    from dreamnfsd.utils.errors import UserError
    from dreamnfsd.utils.files import LOCK_NAME, run_lock

    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        busy = rf"resume: .* is being trained by another dreamnfsd process \(pid {proc.pid}\)"
        with pytest.raises(UserError, match=busy), run_lock(tmp_path):
            pass
    finally:
        proc.kill()
        proc.wait()
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_retaken_when_its_holder_removes_the_file_between_open_and_flock(tmp_path, monkeypatch):
    """A finishing holder unlinks the lock file it held; a process that opened that file just before must not keep
    a lock on the orphan (no one else would see it), but open the path again."""
    import fcntl

    from dreamnfsd.utils.files import LOCK_NAME, run_lock

    real_flock, calls = fcntl.flock, []

    def flock_after_holder_left(f, op):
        if not calls:
            (tmp_path / LOCK_NAME).unlink()  # the holder's release, landing between our open and our flock
        calls.append(op)
        return real_flock(f, op)

    (tmp_path / LOCK_NAME).write_text("12345")
    monkeypatch.setattr(fcntl, "flock", flock_after_holder_left)
    with run_lock(tmp_path):
        assert len(calls) == 2 and (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()
