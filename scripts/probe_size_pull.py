"""Which size each guidance term of a prior prefers: the size pull on exact renders of a primitive (positive grows
the object), at a few scales around the training size, and where each term's pull crosses zero
(dreamnfsd.eval.size_pull). A check for a retrained prior: its terms should prefer scale 1.

    .venv/bin/python scripts/probe_size_pull.py [--shape cube] [--color red] [--n 256] [--prior-folder DIR]
        [--t-range 0.02 0.98] [--supersample 2] [--no-phrase-groups] [--axes z]

With ``--axes z`` the scales stretch the object's height only: which proportions each term prefers. With ``--axes n``
they move the surface along its normals instead (a torus's tube thickness).
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
    parser.add_argument(
        "--t-range",
        type=float,
        nargs=2,
        default=list(SizePullConfig.t_range),
        help="t drawn in [LO, HI] (fractions of T)",
    )
    parser.add_argument(
        "--supersample", type=int, default=SizePullConfig.supersample, help="rays per pixel side (1: pixel centres)"
    )
    parser.add_argument(
        "--axes",
        default=SizePullConfig.axes,
        help="axes the scale acts on: xyz (size), z (height), xy (width); n: the surface offset along its normals",
    )
    parser.add_argument(
        "--edge-radius",
        type=float,
        default=SizePullConfig.edge_radius,
        help="round the edges of a cube, cylinder or cone by this radius, faces in place (a trained surface's edges)",
    )
    parser.add_argument("--no-phrase-groups", action="store_true", help="skip delta_D per degradation group")
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out", default="outputs/size_pull.json")
    args = parser.parse_args(argv)
    if not 0.0 <= args.t_range[0] <= args.t_range[1] <= 1.0:
        parser.error(f"--t-range: {args.t_range} must satisfy 0 <= LO <= HI <= 1; e.g. --t-range 0.02 0.2")
    if args.axes != "n" and (not args.axes or set(args.axes) - set("xyz") or len(set(args.axes)) != len(args.axes)):
        parser.error(f"--axes: {args.axes!r} must be distinct letters of x, y, z, or n; e.g. --axes z")
    if not 0.0 <= args.edge_radius <= 0.2:
        parser.error(f"--edge-radius: {args.edge_radius} must be in [0, 0.2]; e.g. --edge-radius 0.04")
    if args.supersample < 1:
        parser.error(f"--supersample: {args.supersample} must be at least 1; e.g. --supersample 1")

    prior_cfg = PriorConfig(kind="pixel", model=args.prior_folder) if args.prior_folder else PriorConfig(kind="builtin")
    prior = load_prior(prior_cfg)
    prior.validate_prompt(f"a {args.color} {args.shape}")
    cfg = SizePullConfig(
        shape=args.shape,
        color=args.color,
        n=args.n,
        scales=tuple(sorted(args.scales)),
        t_range=tuple(args.t_range),
        supersample=args.supersample,
        axes="".join(sorted(args.axes)),
        edge_radius=args.edge_radius,
        phrase_groups=not args.no_phrase_groups,
    )
    pulls = size_pull(prior, cfg)
    preferred = {name: preferred_scale(list(cfg.scales), [m for m, _ in rows]) for name, rows in pulls.items()}
    columns = [("term", "<22"), *((f"pull at {s:g}", ">16") for s in cfg.scales), ("preferred scale", ">16.3f")]
    rows = [[name, *(f"{m:+.1f} ± {se:.1f}" for m, se in values), preferred[name]] for name, values in pulls.items()]
    what = {"xyz": "size", "n": "surface offset"}.get(cfg.axes, f"stretch along {cfg.axes}")
    print(
        f"{what} pull of each guidance term on renders of a {args.color} {args.shape} ({cfg.n} views per scale, "
        f"t in {cfg.t_range[0]:g}-{cfg.t_range[1]:g} T, {cfg.supersample}x{cfg.supersample} rays a pixel"
        + (f", edges rounded by {cfg.edge_radius:g})" if cfg.edge_radius else ")")
    )
    print(format_table(columns, rows))
    report = {"config": cfg.__dict__, "prior": prior_cfg.__dict__, "pull": pulls, "preferred_scale": preferred}
    print(f"wrote {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
