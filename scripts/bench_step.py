"""Where a text-to-3D training step spends its time: the prior call against rendering plus backward.

Runs the real :class:`~dreamnfsd.train.trainer.Trainer` on the CPU preset (``prior=builtin``) and times each phase
of the step side by side in one run (dreamnfsd.benchmarks.step). Absolute times on a shared machine are noise; the
shares are the result.

    .venv/bin/python scripts/bench_step.py [--steps 20] [--out outputs/bench_step.json] [override ...]
"""

from __future__ import annotations

import argparse

from dreamnfsd.benchmarks.common import write_json
from dreamnfsd.benchmarks.step import breakdown_table, cpu_preset_breakdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out", default="outputs/bench_step.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=1")
    args = parser.parse_args(argv)

    result = cpu_preset_breakdown(args.overrides, args.steps, args.warmup, args.prior_folder)
    print(f"step breakdown over {args.steps} steps ({result['config']})")
    print(breakdown_table(result))
    print(
        f"prior call: {result['prior_call_share']:.1%} of the step; render + backward: "
        f"{result['render_plus_backward_share']:.1%}"
    )
    print(f"wrote {write_json(result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
