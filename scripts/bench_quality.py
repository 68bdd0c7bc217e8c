"""Offline quality benchmark on the built-in domain: SDS against NFSD at equal steps and seeds.

For each prompt ("a red cube", ...) and method it trains dreamnfsd with the built-in prior, renders fixed views at
three elevations (15°, 45°, 85°), and scores them with the shipped classifier and the true primitive:

- R-precision: share of views the classifier names as the run's prompt (shape and colour);
- silhouette IoU against the true primitive, per view group (side 15°, top 85°), maximised over a rotation about
  the vertical axis;
- top rotation variation: 1 - IoU between the top views at azimuth 0° and 45° (cube ~0.29, disc/drum ~0);
- colour error (RGB distance of the mean albedo to the true albedo), broken views (empty or frame-filling), wall time.

Writes ``results.json``, ``results.md`` and ``contact_sheet.png`` (one row per prompt: SDS views | NFSD views).
Each finished run is also saved under ``runs/`` as it ends, so a killed benchmark resumes where it stopped, and
``--shard K/N`` splits the runs over N processes that share one ``--out-dir`` (the last to finish writes the report;
``--report-only`` rebuilds it from whatever runs exist).

    .venv/bin/python scripts/bench_quality.py --quick            # 2 prompts, few steps (CI-sized)
    .venv/bin/python scripts/bench_quality.py                    # all 25 prompts, preset steps
    # two processes side by side on a small CPU (see README: OMP_WAIT_POLICY=PASSIVE)
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_quality.py --shard 1/2 train.num_threads=1 &
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_quality.py --shard 2/2 train.num_threads=1
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.cli import config_dir
from dreamnfsd.data import COLORS, SHAPES, make_cameras
from dreamnfsd.eval.classifier import classify, load_classifier
from dreamnfsd.eval.metrics import best_rotation_iou, broken_views, colour_error, mask_iou
from dreamnfsd.export.video import to_uint8
from dreamnfsd.guidance.priors import load_prior
from dreamnfsd.train.preflight import compose, to_run_config
from dreamnfsd.train.trainer import Trainer, render_views
from dreamnfsd.utils.files import atomic_write_bytes

ALL_PROMPTS = [f"a {c} {s}" for s in SHAPES for c in COLORS]
QUICK_PROMPTS = ["a red cube", "a blue sphere"]
# (elevation°, azimuths°): side views, mid views, and a near-overhead pair 45° apart.
VIEW_GROUPS = {"side": (15.0, range(0, 360, 45)), "mid": (45.0, range(0, 360, 90)), "top": (85.0, (0, 45))}
AMBIENT = 0.3  # the built-in domain's renders use 0.3 ambient + 0.7 diffuse


def view_cameras(resolution: int) -> tuple[CameraBatch, dict[str, slice]]:
    az, el, groups, start = [], [], {}, 0
    for name, (elev, azimuths) in VIEW_GROUPS.items():
        azimuths = list(azimuths)
        az += [math.radians(a) for a in azimuths]
        el += [math.radians(elev)] * len(azimuths)
        groups[name] = slice(start, start + len(azimuths))
        start += len(azimuths)
    return make_cameras(torch.tensor(az), torch.tensor(el), resolution), groups


def evaluate(trainer: Trainer, prompt: str, classifier, resolution: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Metrics, the contact sheet's views (V', H, W, 3) and every view's opacity (V, H, W), kept for later study."""
    colour, shape = prompt.split()[1:3]
    cams, groups = view_cameras(resolution)
    shaded = render_views(trainer.scene, cams, shading="lambertian", ambient=AMBIENT)
    albedo = render_views(trainer.scene, cams, shading="albedo")
    rgb = shaded["rgb"].permute(0, 3, 1, 2)
    shape_idx, colour_idx, _ = classify(rgb, classifier)
    correct = (shape_idx == SHAPES.index(shape)) & (colour_idx == COLORS.index(colour))
    masks = shaded["opacity"][..., 0] > 0.5
    top = masks[groups["top"]]
    result = {
        "r_precision": float(correct.float().mean()),
        "r_precision_by_group": {g: float(correct[s].float().mean()) for g, s in groups.items()},
        "iou": {g: best_rotation_iou(masks[s], shape, cams.azimuth[s], cams.elevation[s])
                for g, s in groups.items() if g != "mid"},
        "top_rotation_variation": float(1.0 - mask_iou(top[0], top[1])),
        "colour_error": colour_error(albedo["rgb"], masks[..., None].float(), colour),
        "broken_view_share": float(broken_views(shaded["opacity"]).float().mean()),
        "predicted": [f"a {COLORS[c]} {SHAPES[s]}" for s, c in zip(shape_idx.tolist(), colour_idx.tolist())],
    }
    sheet_views = torch.cat([shaded["rgb"][groups["side"]][::2], shaded["rgb"][groups["top"]][:1]])
    return result, sheet_views, shaded["opacity"][..., 0]


def run_one(prompt: str, method: str, args, prior, classifier) -> tuple[dict, torch.Tensor, torch.Tensor]:
    overrides = [f"prompt={prompt}", "prior=builtin", f"guidance={method}", f"seed={args.seed}",
                 f"train.steps={args.steps}", "train.val_every=0", "train.ckpt_every=0", *args.overrides]
    if args.prior_folder:
        overrides += ["prior.kind=pixel", f"prior.model={args.prior_folder}"]
    cfg = to_run_config(compose(overrides, config_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), torch.device("cpu"), prior)
        started = time.perf_counter()
        trainer.fit(SimpleNamespace(requested=None))
        wall = time.perf_counter() - started
        metrics, views, opacity = evaluate(trainer, prompt, classifier, args.resolution)
    metrics.update(prompt=prompt, method=method, guidance_scale=cfg.guidance.scale, steps=args.steps,
                   seed=args.seed, wall_time_s=round(wall, 1))
    return metrics, views, opacity


def summarise(runs: list[dict]) -> dict:
    out = {}
    for method in sorted({r["method"] for r in runs}):
        rs = [r for r in runs if r["method"] == method]
        mean = lambda xs: sum(xs) / len(xs)
        per_shape = {}
        for shape in SHAPES:
            srs = [r for r in rs if r["prompt"].endswith(shape)]
            if srs:
                per_shape[shape] = {g: round(mean([r["iou"][g] for r in srs]), 3) for g in ("side", "top")}
        cubes = [r["top_rotation_variation"] for r in rs if r["prompt"].endswith("cube")]
        out[method] = {
            "guidance_scale": rs[0]["guidance_scale"],
            "r_precision": round(mean([r["r_precision"] for r in rs]), 3),
            "iou_side": round(mean([r["iou"]["side"] for r in rs]), 3),
            "iou_top": round(mean([r["iou"]["top"] for r in rs]), 3),
            "iou_min_shape_group": round(min(min(v.values()) for v in per_shape.values()), 3),
            "iou_per_shape": per_shape,
            "cube_top_rotation_variation": round(mean(cubes), 3) if cubes else None,
            "colour_error": round(mean([r["colour_error"] for r in rs]), 3),
            "broken_view_share": round(mean([r["broken_view_share"] for r in rs]), 3),
            "wall_time_s": round(mean([r["wall_time_s"] for r in rs]), 1),
        }
    return out


def markdown(summary: dict, runs: list[dict]) -> str:
    lines = ["| method | scale | R-precision | IoU side | IoU top | worst shape/group IoU | cube top rot. var. | "
             "colour err | broken views | s/run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['guidance_scale']} | {s['r_precision']:.1%} | {s['iou_side']:.3f} | "
                     f"{s['iou_top']:.3f} | {s['iou_min_shape_group']:.3f} | {s['cube_top_rotation_variation']} | "
                     f"{s['colour_error']:.3f} | {s['broken_view_share']:.1%} | {s['wall_time_s']} |")
    lines += ["", "| prompt | method | R-precision | IoU side | IoU top | top rot. var. | colour err |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['prompt']} | {r['method']} | {r['r_precision']:.0%} | {r['iou']['side']:.3f} | "
                     f"{r['iou']['top']:.3f} | {r['top_rotation_variation']:.3f} | {r['colour_error']:.3f} |")
    return "\n".join(lines) + "\n"


def contact_sheet(rows: dict[str, dict[str, torch.Tensor]], methods: list[str], upscale: int = 2) -> torch.Tensor:
    """(rows * H, cols * W, 3): one row per prompt, the methods' views side by side with a grey gap."""
    strips = []
    for views_by_method in rows.values():
        parts = []
        for m in methods:
            views = views_by_method[m]  # (V, H, W, 3)
            parts += [torch.cat(list(views), dim=1), torch.full((views.shape[1], 4, 3), 0.5)]
        strips.append(torch.cat(parts[:-1], dim=1))
    sheet = torch.cat(strips, dim=0)
    return sheet.repeat_interleave(upscale, 0).repeat_interleave(upscale, 1)


def run_key(prompt: str, method: str) -> str:
    return f"{prompt.replace(' ', '-')}.{method}"


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise SystemExit(f"--shard: {text!r} must be K/N with 1 <= K <= N, e.g. --shard 1/2")
    return k, n


def load_finished(runs_dir: Path, prompts: list[str], methods: list[str], args) -> dict[str, tuple[dict, torch.Tensor]]:
    """Saved runs of this benchmark (same steps, seed and overrides), by run_key."""
    done = {}
    for prompt in prompts:
        for method in methods:
            key = run_key(prompt, method)
            path = runs_dir / f"{key}.pt"
            if not path.exists():
                continue
            saved = torch.load(path, weights_only=True)
            metrics = json.loads(saved["metrics"])
            if (metrics["steps"], metrics["seed"], metrics.get("overrides", [])) != (args.steps, args.seed,
                                                                                   args.overrides):
                raise SystemExit(f"--out-dir: {path} was run with other settings (steps {metrics['steps']}, seed "
                                 f"{metrics['seed']}, overrides {metrics.get('overrides')}); pick a new --out-dir")
            done[key] = (metrics, saved["views"])
    return done


def write_report(out: Path, prompts: list[str], methods: list[str], done: dict, steps: int, seed: int) -> None:
    import imageio.v2 as imageio

    runs, sheet_rows = [], {}
    for prompt in prompts:
        if all(run_key(prompt, m) in done for m in methods):
            sheet_rows[prompt] = {m: done[run_key(prompt, m)][1] for m in methods}
        runs += [done[run_key(prompt, m)][0] for m in methods if run_key(prompt, m) in done]
    if not runs:
        raise SystemExit(f"--out-dir: no finished runs under {out / 'runs'}")
    summary = summarise(runs)
    missing = [run_key(p, m) for p in prompts for m in methods if run_key(p, m) not in done]
    (out / "results.json").write_text(json.dumps({"summary": summary, "runs": runs, "steps": steps, "seed": seed,
                                                  "prompts": prompts, "missing": missing}, indent=2) + "\n")
    (out / "results.md").write_text(markdown(summary, runs))
    if sheet_rows:
        imageio.imwrite(out / "contact_sheet.png", to_uint8(contact_sheet(sheet_rows, methods)))
    print(markdown(summary, runs))
    if missing:
        print(f"not finished yet ({len(missing)}): {', '.join(missing)}")
    print(f"wrote {out}/results.json, results.md, contact_sheet.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"prompts {QUICK_PROMPTS}, 30 steps")
    parser.add_argument("--prompts", nargs="*", default=None, help="default: all 25")
    parser.add_argument("--methods", nargs="*", default=["sds", "nfsd"])
    parser.add_argument("--steps", type=int, default=None, help="default: the built-in preset's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out-dir", default="outputs/bench_quality")
    parser.add_argument("--shard", default="1/1", help="K/N: run every N-th run starting at the K-th")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from saved runs")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    prompts = args.prompts or (QUICK_PROMPTS if args.quick else ALL_PROMPTS)
    if args.steps is None:
        args.steps = 30 if args.quick else int(compose(["prompt=x", "prior=builtin"], config_dir()).train.steps)

    shard, n_shards = parse_shard(args.shard)
    out = Path(args.out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    done = load_finished(runs_dir, prompts, args.methods, args)
    todo = [(p, m) for p in prompts for m in args.methods][shard - 1::n_shards]
    todo = [] if args.report_only else [(p, m) for p, m in todo if run_key(p, m) not in done]
    if todo:
        prior_cfg = to_run_config(compose(["prompt=a red cube", "prior=builtin"] + (
            ["prior.kind=pixel", f"prior.model={args.prior_folder}"] if args.prior_folder else []),
            config_dir())).prior
        prior = load_prior(prior_cfg, "cpu")
        classifier = load_classifier()
    for prompt, method in todo:
        metrics, views, opacity = run_one(prompt, method, args, prior, classifier)
        metrics["overrides"] = args.overrides
        atomic_write_bytes(_to_bytes({"metrics": json.dumps(metrics), "views": views.contiguous(),
                                      "opacity": opacity.contiguous()}),
                           runs_dir / f"{run_key(prompt, method)}.pt")
        done[run_key(prompt, method)] = (metrics, views)
        print(f"{prompt:<18} {method:<5} R-prec {metrics['r_precision']:.0%}  IoU side {metrics['iou']['side']:.3f}"
              f"  top {metrics['iou']['top']:.3f}  top-rot {metrics['top_rotation_variation']:.3f}"
              f"  {metrics['wall_time_s']}s", flush=True)
    # Sharded processes each report what exists; the last one to finish sees every run.
    done = load_finished(runs_dir, prompts, args.methods, args)
    write_report(out, prompts, args.methods, done, args.steps, args.seed)


def _to_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
