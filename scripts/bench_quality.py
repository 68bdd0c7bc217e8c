"""Offline quality benchmark on the built-in domain: SDS against NFSD, measured in 3D and in images.

The protocol and the metrics are in :mod:`dreamnfsd.eval.benchmark` (see its docstring); this is its command line.
Writes ``results.json``, ``results.md``, ``contact_sheet.png`` and ``report.html`` (SDS beside NFSD per prompt,
every mesh in 3D) under ``--out-dir``, and every finished run under ``runs/`` as it ends, so a killed benchmark
resumes where it stopped; ``--shard K/N`` splits the runs over N processes sharing one ``--out-dir`` (the last to
finish writes the report); ``--report-only`` rebuilds the report; ``--rescore`` recomputes the saved runs' metrics
from their saved files first, without training.

    .venv/bin/python scripts/bench_quality.py --quick            # 2 prompts, few steps (CI-sized)
    .venv/bin/python scripts/bench_quality.py                    # all 25 prompts, preset steps
    # two 1-thread processes side by side on a small CPU (see README: OMP_WAIT_POLICY=PASSIVE)
    export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
    .venv/bin/python scripts/bench_quality.py --shard 1/2 --out-dir docs/benchmarks/NAME &
    .venv/bin/python scripts/bench_quality.py --shard 2/2 --out-dir docs/benchmarks/NAME
    wait; .venv/bin/python scripts/bench_quality.py --report-only --out-dir docs/benchmarks/NAME
    # a folder's runs must match the call's steps, seed, prior and overrides (list them after --out-dir)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.app.report import build_benchmark_report, report_or_warn
from dreamnfsd.eval import benchmark as bench
from dreamnfsd.eval.classifier import load_classifier
from dreamnfsd.guidance.priors import builtin, load_prior


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"prompts {bench.QUICK_PROMPTS}, 30 steps")
    parser.add_argument("--prompts", nargs="*", default=None, help='default: all 25 (an item with "=" is an override)')
    parser.add_argument("--methods", nargs="*", default=["sds", "nfsd"])
    parser.add_argument("--steps", type=int, default=None, help="default: the built-in preset's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out-dir", default="outputs/bench_quality")
    parser.add_argument("--shard", default="1/1", help="K/N: run every N-th run starting at the K-th")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from saved runs")
    parser.add_argument("--rescore", action="store_true", help="recompute saved runs' metrics, then report")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    # argparse gives "--prompts a b key=value" all to --prompts; prompts and methods never contain "=".
    for name in ("prompts", "methods"):
        items = getattr(args, name) or []
        args.overrides += [p for p in items if "=" in p]
        setattr(args, name, [p for p in items if "=" not in p] or None)
    args.methods = args.methods or ["sds", "nfsd"]
    try:
        k, n = (int(v) for v in args.shard.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        parser.error(f"--shard: {args.shard!r} must be K/N with 1 <= K <= N, e.g. --shard 1/2")
    args.shard_k, args.shard_n = k, n
    return args


def main() -> None:
    args = parse_args()
    prompts = args.prompts or (bench.QUICK_PROMPTS if args.quick else bench.ALL_PROMPTS)
    prior_args = ["prior.kind=pixel", f"prior.model={args.prior_folder}"] if args.prior_folder else []

    def make_cfg(prompt: str, method: str, steps: int | None = None):
        steps_arg = [f"train.steps={steps}"] if steps is not None else []
        overrides = [f"prompt={prompt}", "prior=builtin", f"guidance={method}", f"seed={args.seed}", *steps_arg]
        overrides += ["train.val_every=0", "train.ckpt_every=0", *prior_args, *args.overrides]
        return to_run_config(compose(overrides))

    steps = args.steps or (30 if args.quick else make_cfg("a red cube", "sds").train.steps)
    prior_dir = args.prior_folder or builtin.DEFAULT_DIR
    expect = {"steps": steps, "seed": args.seed, "overrides": args.overrides, "prior": bench.prior_id(prior_dir)}
    out = Path(args.out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    keys = [bench.run_key(p, m) for p in prompts for m in args.methods]
    done = bench.load_finished(runs_dir, keys, expect)
    if args.rescore:
        bench.rescore(runs_dir, done, args.resolution)
    todo = [(p, m) for p in prompts for m in args.methods][args.shard_k - 1 :: args.shard_n]
    todo = [] if args.report_only or args.rescore else [(p, m) for p, m in todo if bench.run_key(p, m) not in done]
    if todo:
        prior = load_prior(make_cfg("a red cube", "sds").prior, "cpu")
        classifier = load_classifier()
    for prompt, method in todo:
        geometry = bench.QUICK_GEOMETRY if args.quick else None
        metrics, kept = bench.run_one(make_cfg(prompt, method, steps), prior, classifier, args.resolution, geometry)
        metrics.update(overrides=args.overrides, prior=expect["prior"])
        bench.save_run(runs_dir, metrics, kept)
        g = metrics["geometry"]
        print(
            f"{prompt:<18} {method:<5} 3D IoU {g['iou']:.3f} F {g['fscore']:.3f} NC {g['normal_consistency']:.3f} "
            f"Chamfer {g['chamfer']:.4f}  R-prec {metrics['r_precision']:.0%}  IoU side {metrics['iou']['side']:.3f}"
            f" top {metrics['iou']['top']:.3f}  {metrics['wall_time_s']}s",
            flush=True,
        )
    # Sharded processes each report what exists; the last one to finish sees every run.
    done = bench.load_finished(runs_dir, keys, expect)
    settings = {k: expect[k] for k in ("steps", "seed", "overrides")}
    table = bench.write_report(out, prompts, args.methods, done, settings)
    if table is None:
        print(f"no prompt finished by every method yet under {runs_dir}; no report written")
    else:
        print(table)
        print(f"wrote {out}/results.json, results.md, contact_sheet.png")
        if (report := report_or_warn(build_benchmark_report, out)) is not None:
            print(f"report (SDS beside NFSD, every mesh in 3D): {report.path}")


if __name__ == "__main__":
    main()
