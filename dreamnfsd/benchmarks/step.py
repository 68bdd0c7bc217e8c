"""Where the product's training step spends its time: the real :class:`~dreamnfsd.train.trainer.Trainer`, its
:class:`~dreamnfsd.utils.timing.PhaseTimer`, and the prior call inside the guidance phase.

Used by ``scripts/bench_step.py`` (the CPU preset with the built-in prior) and by the GPU benchmark
(:mod:`dreamnfsd.benchmarks.gpu`). Absolute times on a shared machine are noise; the shares are the result.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dreamnfsd.benchmarks.common import format_table, sync
from dreamnfsd.utils.timing import PhaseTimer

PHASES = ("render", "guidance", "backward", "optimizer", "occupancy")  # Trainer.train_step's timer names
PRIOR_CALL = "prior call"  # the noise prediction, timed inside "guidance"


def compose_run_config(overrides: list[str]):
    """The app's config (``configs/``, as the CLI composes it) with ``overrides``, as a typed ``RunConfig``."""
    from dreamnfsd.app.compose import compose, to_run_config

    return to_run_config(compose(overrides))


@contextlib.contextmanager
def timed_prior(prior, timer: PhaseTimer) -> Iterator[None]:
    """Route ``prior.predict_noise`` through ``timer`` under :data:`PRIOR_CALL` inside the block; whatever was
    there before (the method, or another wrapper) is put back afterwards."""
    had_wrapper = "predict_noise" in vars(prior)
    predict = prior.predict_noise

    def wrapped(*args, **kwargs):
        with timer(PRIOR_CALL):
            return predict(*args, **kwargs)

    prior.predict_noise = wrapped
    try:
        yield
    finally:
        if had_wrapper:
            prior.predict_noise = predict
        else:
            del prior.predict_noise  # the instance attribute; the class method shows through again


def phase_breakdown(trainer, steps: int, warmup: int = 0) -> dict:
    """Run ``warmup`` untimed then ``steps`` timed ``trainer.train_step()`` calls with the phase timer on.

    Returns the wall-clock ``step_ms``, ``phase_ms`` (ms per step of each phase and of the prior call), and the
    shares of the prior call and of render + backward in the step. The timer synchronises CUDA at phase edges, so on
    a GPU the step is a little slower than untimed.
    """
    timer = trainer.timer
    with timed_prior(trainer.prior, timer):
        for _ in range(warmup):
            trainer.train_step()
        timer.reset()
        timer.enabled = True
        sync(trainer.device)
        start = time.perf_counter()
        try:
            for _ in range(steps):
                trainer.train_step()
            sync(trainer.device)
        finally:
            timer.enabled = False
    step_ms = 1000 * (time.perf_counter() - start) / steps
    per_step = {k: 1000 * v / steps for k, v in timer.seconds.items()}
    prior_ms = per_step.get(PRIOR_CALL, 0.0)
    render_backward_ms = per_step.get("render", 0.0) + per_step.get("backward", 0.0)
    return {
        "steps": steps,
        "step_ms": step_ms,
        "phase_ms": per_step,
        "prior_call_share": prior_ms / step_ms,
        "render_plus_backward_share": render_backward_ms / step_ms,
        "prior_to_render_backward_ratio": prior_ms / render_backward_ms if render_backward_ms else None,
    }


def cpu_preset_breakdown(overrides: list[str], steps: int, warmup: int, prior_folder: str | None = None) -> dict:
    """:func:`phase_breakdown` of the CPU preset (``prior=builtin``, lit from the first step) with ``overrides``;
    ``prior_folder``: a pixel prior folder instead of the built-in one."""
    from dreamnfsd.guidance.priors import load_prior
    from dreamnfsd.train.trainer import Trainer
    from dreamnfsd.utils.threads import torch_threads

    overrides = ["prompt=a red cube", "prior=builtin", "train.shading_warmup_steps=0", *overrides]
    if prior_folder:
        overrides += ["prior.kind=pixel", f"prior.model={prior_folder}"]
    cfg = compose_run_config(overrides)
    prior = load_prior(cfg.prior, "cpu")
    # The NeRF side on train.num_threads, as a run applies it (dreamnfsd.app.run); the prior sets its own count.
    with tempfile.TemporaryDirectory() as tmp, torch_threads(cfg.train.num_threads):
        trainer = Trainer(cfg, Path(tmp), torch.device("cpu"), prior)
        result = phase_breakdown(trainer, steps, warmup)
        threads = torch.get_num_threads()
    config = {
        "camera": f"{cfg.camera.height}x{cfg.camera.width}",
        "batch_size": cfg.train.batch_size,
        "guidance": cfg.guidance.kind,
        "prior": cfg.prior.kind,
        "train_threads": threads,
        "prior_threads": prior.cpu_threads,  # what load_prior resolved prior.num_threads to
    }
    return {"config": config, **result}


def breakdown_table(result: dict) -> str:
    """The phases of :func:`phase_breakdown`'s result in step order, ms per step and share of the step."""
    per_step, step_ms = result["phase_ms"], result["step_ms"]
    rows = []
    for name in (*PHASES[:2], f"  of which {PRIOR_CALL}", *PHASES[2:]):
        key = name.strip().removeprefix("of which ")
        if key in per_step:
            rows.append((name, per_step[key], per_step[key] / step_ms))
    rows.append(("step (wall)", step_ms, 1.0))
    return format_table([("phase", "<24"), ("ms/step", ">10.1f"), ("share", ">9.1%")], rows)


def side_by_side(overrides: list[str], variants: list[str], blocks: int, block: int, warmup: int) -> dict:
    """Trainers of the CPU preset that differ only in one override each (``variants``, e.g. ``prior.num_threads=1``),
    stepped in turn, ``block`` steps each for ``blocks`` rounds after ``warmup`` untimed steps, the NeRF side on
    ``train.num_threads``. They share the seed, so they do the same work; for variants that change only speed their
    states must come out bit-identical (``identical``).

    Returns {"rows": [{"variant", "step_ms", "prior_ms", "speedup"}, ...], "identical", "config"}; the speedup is of
    the whole step against the first variant's.
    """
    from dreamnfsd.guidance.priors import load_prior
    from dreamnfsd.train.trainer import Trainer
    from dreamnfsd.utils.threads import torch_threads

    trainers: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        for i, variant in enumerate(variants):
            cfg = compose_run_config(["prompt=a red cube", "prior=builtin", *overrides, variant])
            trainers[variant] = trainer = Trainer(cfg, Path(tmp) / str(i), torch.device("cpu"), load_prior(cfg.prior))
            stack.enter_context(timed_prior(trainer.prior, trainer.timer))
        stack.enter_context(torch_threads(cfg.train.num_threads))
        for trainer in trainers.values():
            for _ in range(warmup):
                trainer.train_step()
            trainer.timer.enabled = True
        for _ in range(blocks):
            for variant, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(block):
                    trainer.train_step()
                seconds[variant] = seconds.get(variant, 0.0) + time.perf_counter() - start
        states = [
            {k: v for k, v in t.state_dict().items() if k not in ("wall_time", "config")} for t in trainers.values()
        ]
    steps = blocks * block
    rows = [
        {
            "variant": variant,
            "step_ms": 1000 * seconds[variant] / steps,
            "prior_ms": 1000 * trainers[variant].timer.seconds[PRIOR_CALL] / steps,
            "speedup": seconds[variants[0]] / seconds[variant],
        }
        for variant in variants
    ]
    config = {"overrides": overrides, "train_threads": cfg.train.num_threads, "steps": steps, "block": block}
    return {"rows": rows, "identical": all(_same(states[0], s) for s in states[1:]), "config": config}


def _same(a, b) -> bool:
    """Bit-for-bit equality of two nested states (tensors, dicts, lists, plain values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def side_by_side_table(result: dict) -> str:
    """:func:`side_by_side`'s rows as a table."""
    rows = [(r["variant"], r["step_ms"], r["prior_ms"], r["speedup"]) for r in result["rows"]]
    columns = [("variant", "<24"), ("ms/step", ">9.1f"), ("prior ms/step", ">13.1f"), ("speedup", ">8.2f")]
    return format_table(columns, rows)
