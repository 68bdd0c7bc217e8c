"""Where a text-to-3D training step spends its time: the prior call against rendering plus backward.

Runs the real :class:`~dreamnfsd.train.trainer.Trainer` on the CPU preset (``prior=builtin``) and times each phase
of the step side by side in one run (dreamnfsd.benchmarks.step). Absolute times on a shared machine are noise; the
shares are the result.

    .venv/bin/python scripts/bench_step.py [--steps 20] [--out outputs/bench_step.json] [override ...]

``--prior-threads 1 2`` instead steps trainers that differ only in ``prior.num_threads`` in turn (blocks of
``--block`` steps, side by side in one process), and checks that they end bit-identical; ``--prior-parts 1 0``
does the same for ``prior.batch_parts`` (1: the prior's batch unsplit; 0: split over the threads), and
``--encoding-tasks 1 0`` for ``field.encoding.cpu_tasks`` (1: the hash grid's levels in turn; 0: at once).
``--compare renderer.num_steps=64 renderer.num_steps=48`` steps any overrides side by side the same way, for speed
only: variants that change results are not expected to end bit-identical.
"""

from __future__ import annotations

import argparse

from dreamnfsd.benchmarks.common import write_json
from dreamnfsd.benchmarks.step import breakdown_table, cpu_preset_breakdown, side_by_side, side_by_side_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out", default="outputs/bench_step.json")
    parser.add_argument("--prior-threads", type=int, nargs="+", default=None, help="compare these prior.num_threads")
    parser.add_argument("--prior-parts", type=int, nargs="+", default=None, help="compare these prior.batch_parts")
    parser.add_argument("--encoding-tasks", type=int, nargs="+", default=None, help="compare these cpu_tasks")
    parser.add_argument("--compare", nargs="+", default=None, help="compare these overrides' speed (any results)")
    parser.add_argument("--block", type=int, default=10, help="side-by-side modes: steps per turn")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=1")
    args = parser.parse_args(argv)

    variants = [f"prior.num_threads={n}" for n in args.prior_threads or []]
    variants += [f"prior.batch_parts={n}" for n in args.prior_parts or []]
    variants += [f"field.encoding.cpu_tasks={n}" for n in args.encoding_tasks or []]
    same_bits_expected = bool(variants)
    variants += args.compare or []
    if variants:
        blocks = max(1, args.steps // args.block)
        result = side_by_side(args.overrides, variants, blocks, args.block, args.warmup)
        print(f"side by side over {blocks * args.block} steps each ({result['config']})")
        print(side_by_side_table(result))
        print(f"states bit-identical: {result['identical']}")
        print(f"wrote {write_json(result, args.out)}")
        return 0 if result["identical"] or not same_bits_expected else 1

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
