"""Which size each guidance term of a prior prefers: the size pull on exact renders of a primitive (positive grows
the object), at a few scales around the training size, and where each term's pull crosses zero
(dreamnfsd.eval.size_pull). A check for a retrained prior: its terms should prefer scale 1.

    .venv/bin/python scripts/probe_size_pull.py [--shape cube] [--color red] [--n 256] [--prior-folder DIR]
"""

from __future__ import annotations

import argparse

from dreamnfsd.benchmarks.common import format_table, write_json
from dreamnfsd.eval.size_pull import SizePullConfig, preferred_scale, size_pull
from dreamnfsd.guidance.priors import PriorConfig, load_prior


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default=SizePullConfig.shape)
    parser.add_argument("--color", default=SizePullConfig.color)
    parser.add_argument("--n", type=int, default=SizePullConfig.n, help="images per scale")
    parser.add_argument("--scales", type=float, nargs="+", default=list(SizePullConfig.scales))
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out", default="outputs/size_pull.json")
    args = parser.parse_args(argv)

    prior_cfg = PriorConfig(kind="pixel", model=args.prior_folder) if args.prior_folder else PriorConfig(kind="builtin")
    prior = load_prior(prior_cfg)
    prior.validate_prompt(f"a {args.color} {args.shape}")
    cfg = SizePullConfig(shape=args.shape, color=args.color, n=args.n, scales=tuple(sorted(args.scales)))
    pulls = size_pull(prior, cfg)
    preferred = {name: preferred_scale(list(cfg.scales), [m for m, _ in rows]) for name, rows in pulls.items()}
    columns = [("term", "<22"), *((f"pull at {s:g}", ">16") for s in cfg.scales), ("preferred scale", ">16.3f")]
    rows = [[name, *(f"{m:+.1f} ± {se:.1f}" for m, se in values), preferred[name]] for name, values in pulls.items()]
    print(f"size pull of each guidance term on renders of a {args.color} {args.shape} ({cfg.n} views per scale)")
    print(format_table(columns, rows))
    report = {"config": cfg.__dict__, "prior": prior_cfg.__dict__, "pull": pulls, "preferred_scale": preferred}
    print(f"wrote {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
