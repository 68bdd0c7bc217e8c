"""Where a text-to-3D training step spends its time: the prior call against rendering plus backward.

Runs the real :class:`~dreamnfsd.train.trainer.Trainer` on the CPU preset (``prior=builtin``) and times each phase
of the step side by side in one run. Absolute times on a shared machine are noise; the shares are the result.

    .venv/bin/python scripts/bench_step.py [--steps 20] [--out outputs/bench_step.json] [override ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dreamnfsd.cli import config_dir
from dreamnfsd.guidance.priors import load_prior
from dreamnfsd.train.preflight import compose, to_run_config
from dreamnfsd.train.trainer import Trainer

PHASES = ("render", "guidance", "backward", "optimizer", "occupancy")


def timed_prior(prior, timer) -> None:
    """Route the prior's noise prediction through ``timer`` under the name "prior call"."""
    predict = prior.predict_noise

    def wrapped(*args, **kwargs):
        with timer("prior call"):
            return predict(*args, **kwargs)

    prior.predict_noise = wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out", default="outputs/bench_step.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=1")
    args = parser.parse_args()

    overrides = ["prompt=a red cube", "prior=builtin", "train.shading_warmup_steps=0", *args.overrides]
    if args.prior_folder:
        overrides += ["prior.kind=pixel", f"prior.model={args.prior_folder}"]
    cfg = to_run_config(compose(overrides, config_dir()))
    prior = load_prior(cfg.prior, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), torch.device("cpu"), prior)
        timed_prior(prior, trainer.timer)
        for _ in range(args.warmup):
            trainer.train_step()
        trainer.timer.enabled = True
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        total = time.perf_counter() - start
    seconds = dict(trainer.timer.seconds)
    per_step = {k: 1000 * v / args.steps for k, v in seconds.items()}
    step_ms = 1000 * total / args.steps
    prior_ms = per_step.get("prior call", 0.0)
    render_backward_ms = per_step.get("render", 0.0) + per_step.get("backward", 0.0)
    result = {
        "config": {
            "camera": f"{cfg.camera.height}x{cfg.camera.width}",
            "batch_size": cfg.train.batch_size,
            "guidance": cfg.guidance.kind,
            "prior": cfg.prior.kind,
            "threads": torch.get_num_threads(),
        },
        "steps": args.steps,
        "step_ms": step_ms,
        "phase_ms": per_step,
        "prior_call_share": prior_ms / step_ms,
        "render_plus_backward_share": render_backward_ms / step_ms,
        "prior_to_render_backward_ratio": prior_ms / render_backward_ms if render_backward_ms else None,
    }
    print(f"step breakdown over {args.steps} steps ({result['config']})")
    print(f"{'phase':<24}{'ms/step':>10}{'share':>9}")
    for name in (*PHASES[:2], "  of which prior call", *PHASES[2:]):
        key = name.strip().removeprefix("of which ")
        if key in per_step:
            print(f"{name:<24}{per_step[key]:>10.1f}{per_step[key] / step_ms:>9.1%}")
    print(f"{'step (wall)':<24}{step_ms:>10.1f}{1:>9.0%}")
    print(
        f"prior call: {result['prior_call_share']:.1%} of the step; render + backward: "
        f"{result['render_plus_backward_share']:.1%}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
