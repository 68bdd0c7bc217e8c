#!/usr/bin/env python
"""Benchmark of the NeRF core on CPU: field throughput against a nerfstudio-style reference, and rendering speed.

What is measured and how: dreamnfsd.benchmarks.render. On a shared 2-core machine a second intra-op thread can make
every op wait for a descheduled core; ``--threads 1`` gives steadier numbers there.

Usage: python scripts/bench_render.py [--quick] [--threads N] [--out outputs/bench_render.json]
Smoke run: python scripts/bench_render.py --points 4096 --train-steps 8 --render-res 16 --reps 1 --no-compile
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without installing the package too

from dreamnfsd.benchmarks.common import write_json  # noqa: E402
from dreamnfsd.benchmarks.render import RenderBenchConfig, run, summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer training steps and repetitions")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    ap.add_argument("--train-steps", type=int, default=None, help="fitting steps (default 300; 60 with --quick)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; 3 with --quick)")
    ap.add_argument("--points", type=int, nargs="+", default=None, help="field batch sizes (default 65536 262144)")
    ap.add_argument("--render-res", type=int, default=RenderBenchConfig.render_res, help="held-out view size")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_render.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RenderBenchConfig(
        points=tuple(args.points or RenderBenchConfig.points),
        reps=args.reps or (3 if args.quick else RenderBenchConfig.reps),
        compile=not args.no_compile,
        train_steps=args.train_steps or (60 if args.quick else RenderBenchConfig.train_steps),
        render_res=args.render_res,
    )
    report = run(cfg)
    print(summary(report))
    print(f"\nwrote {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
