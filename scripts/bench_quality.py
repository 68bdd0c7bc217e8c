"""Offline quality benchmark on the built-in domain: SDS against NFSD at equal steps and seeds.

For each prompt ("a red cube", ...) and method it trains dreamnfsd with the built-in prior, renders fixed views at
three elevations (15°, 45°, 85°), and scores them with the shipped classifier and the true primitive:

- R-precision: share of views the classifier names as the run's prompt (shape and colour);
- silhouette IoU against the true primitive, per view group (side 15°, top 85°), maximised over a rotation about
  the vertical axis (searched on a 1° grid); truth and render masks are both sampled at the pixel centres;
- top rotation variation: 1 - IoU between the top views at azimuth 0° and 45° (cube ~0.29, disc/drum ~0);
- colour error (RGB distance of the mean albedo to the true albedo), broken views (empty or frame-filling), wall time;
- a diagnostic beside the IoU, not a replacement: the same IoU maximised over the object's size too (0.85-1.15), and
  the size that reaches it. The prior saw every primitive at 1 ± 10% scale, and at 32 px a primitive only 5% off in
  size scores about 0.9 against itself, so this column says how much of an IoU gap is size alone. Two calibrations
  per shape sit beside it: the IoU the prior's own training images score (sizes spread over its jitter), and, with
  ``--prior-sizes``, the size at which the prior itself draws the shape (its DDIM samples, fitted the same way),
  beside the size its own training images measure by that rule.

Writes ``results.json``, ``results.md`` and ``contact_sheet.png`` (one row per prompt: SDS views | NFSD views).
Each finished run is also saved under ``runs/`` as it ends (metrics JSON, views and opacity PNGs: small enough to
commit), so a killed benchmark resumes where it stopped, and
``--shard K/N`` splits the runs over N processes that share one ``--out-dir`` (the last to finish writes the report;
``--report-only`` rebuilds it from whatever runs exist; the summary covers the prompts every method finished;
``--rescore`` first recomputes the saved runs' silhouette metrics from their opacity PNGs, without training).

    .venv/bin/python scripts/bench_quality.py --quick            # 2 prompts, few steps (CI-sized)
    .venv/bin/python scripts/bench_quality.py                    # all 25 prompts, preset steps
    # two 1-thread processes side by side on a small CPU (see README: OMP_WAIT_POLICY=PASSIVE); the thread count
    # comes from the environment, so the runs' recorded overrides stay those of the committed benchmark
    export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
    .venv/bin/python scripts/bench_quality.py --shard 1/2 --out-dir docs/benchmarks/NAME &
    .venv/bin/python scripts/bench_quality.py --shard 2/2 --out-dir docs/benchmarks/NAME
    wait; .venv/bin/python scripts/bench_quality.py --report-only --prior-sizes --out-dir docs/benchmarks/NAME
    # a folder's runs must match the call's steps, seed, prior and overrides (list them after --out-dir): a saved
    # run of other settings stops the benchmark instead of mixing into its report
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.cli import config_dir
from dreamnfsd.data import COLORS, SCALE_JITTER, SHAPES, make_cameras, render_primitives
from dreamnfsd.eval.classifier import classify, load_classifier
from dreamnfsd.eval.metrics import (
    ROTATION_STEP_DEG,
    TRUTH_SUPERSAMPLE,
    best_rotation_iou,
    best_scale_iou,
    broken_views,
    colour_error,
    mask_iou,
    true_masks,
)
from dreamnfsd.export.video import to_uint8
from dreamnfsd.guidance.priors import builtin, load_prior
from dreamnfsd.train.preflight import compose, to_run_config
from dreamnfsd.train.trainer import Trainer, render_views
from dreamnfsd.utils.files import atomic_output, atomic_write_bytes

# Ordered so that each block of five names every shape and every colour once: a benchmark stopped part-way (it
# resumes, see --shard) has covered the shapes evenly.
ALL_PROMPTS = [f"a {COLORS[(i + k) % len(COLORS)]} {SHAPES[i]}" for k in range(len(COLORS)) for i in range(len(SHAPES))]
QUICK_PROMPTS = ["a red cube", "a blue sphere"]
# (elevation°, azimuths°): side views, mid views, and a near-overhead pair 45° apart.
VIEW_GROUPS = {"side": (15.0, range(0, 360, 45)), "mid": (45.0, range(0, 360, 90)), "top": (85.0, (0, 45))}
# Sizes tried by the IoU-at-any-scale diagnostic: the prior's training jitter (±10%) and a little beyond.
FIT_SCALES = torch.arange(0.85, 1.151, 0.01)
# Sizes of the reference "perfect samples": the prior's training images, spread evenly over its size jitter.
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
    result = {
        "r_precision": float(correct.float().mean()),
        "r_precision_by_group": {g: float(correct[s].float().mean()) for g, s in groups.items()},
        **mask_metrics(masks, shape, resolution),
        "colour_error": colour_error(albedo["rgb"], masks[..., None].float(), colour),
        "broken_view_share": float(broken_views(shaded["opacity"]).float().mean()),
        "predicted": [f"a {COLORS[c]} {SHAPES[s]}" for s, c in zip(shape_idx.tolist(), colour_idx.tolist())],
    }
    sheet_views = torch.cat([shaded["rgb"][groups["side"]][::2], shaded["rgb"][groups["top"]][:1]])
    return result, sheet_views, shaded["opacity"][..., 0]


def mask_metrics(masks: torch.Tensor, shape: str, resolution: int) -> dict:
    """The silhouette metrics of one run from its views' masks (V, H, W) bool, in :func:`view_cameras` order: IoU
    per group, its any-size diagnostic, the rotation found, and the top rotation variation."""
    cams, groups = view_cameras(resolution)
    iou, any_scale, rotation = {}, {}, {}
    for g in ("side", "top"):
        s = groups[g]
        iou[g], rotation[g] = best_rotation_iou(masks[s], shape, cams.azimuth[s], cams.elevation[s])
        any_scale[g] = best_scale_iou(masks[s], shape, cams.azimuth[s], cams.elevation[s], rotation[g], FIT_SCALES)
    top = masks[groups["top"]]
    return {
        "iou": iou,
        "iou_any_scale": {g: v[0] for g, v in any_scale.items()},
        "fitted_scale": {g: v[1] for g, v in any_scale.items()},
        "rotation_deg": rotation,
        "rotation_step_deg": ROTATION_STEP_DEG,
        "truth_supersample": TRUTH_SUPERSAMPLE,
        "top_rotation_variation": float(1.0 - mask_iou(top[0], top[1])),
    }


def read_views(path: Path) -> torch.Tensor:
    """A strip of square views saved side by side by :func:`save_run` -> (V, H, W, C) in [0, 1], C <= 3."""
    import imageio.v2 as imageio

    strip = torch.from_numpy(imageio.imread(path)).float() / 255
    strip = strip[..., :3] if strip.ndim == 3 else strip[..., None]
    return torch.stack(strip.split(strip.shape[0], dim=1))


def rescore(runs_dir: Path, done: dict, resolution: int) -> None:
    """Recomputes every saved run's silhouette metrics from its opacity PNG (no training), e.g. after the metric's
    rotation grid or truth sampling changed, and rewrites its JSON."""
    for key, (metrics, _) in done.items():
        masks = read_views(runs_dir / f"{key}.opacity.png")[..., 0] > 0.5
        old = metrics["iou"]
        metrics.update(mask_metrics(masks, metrics["prompt"].split()[2], resolution))
        atomic_write_bytes((json.dumps(metrics, indent=1) + "\n").encode(), runs_dir / f"{key}.json")
        print(
            f"{metrics['prompt']:<18} {metrics['method']:<5} IoU side {old['side']:.3f} -> "
            f"{metrics['iou']['side']:.3f}  top {old['top']:.3f} -> {metrics['iou']['top']:.3f}",
            flush=True,
        )


def size_reference(shape: str, resolution: int, jitter: float = SCALE_JITTER) -> dict[str, float]:
    """Mean IoU, per view group, that the prior's own training images would score: the true primitive at sizes
    spread over the training jitter (1 ± ``jitter``), against the canonical size at the true rotation. A perfect
    sample of the prior lands here on average, so it calibrates the IoU columns (at 32 px a 5% size error costs
    about 0.1)."""
    cams, groups = view_cameras(resolution)
    out = {}
    for g in ("side", "top"):
        az, el = cams.azimuth[groups[g]], cams.elevation[groups[g]]
        truth = true_masks(shape, az, el, resolution)
        ious = [
            float(mask_iou(true_masks(shape, az, el, resolution, s), truth).mean())
            for s in torch.linspace(1 - jitter, 1 + jitter, 9).tolist()
        ]
        out[g] = round(sum(ious) / len(ious), 3)
    return out


def prior_sample_size(components, shape: str, resolution: int, seed: int = 0) -> tuple[float, float]:
    """Medians over the colours of the size at which the prior draws ``shape`` and of the size its own training
    images (the true primitive at scale 1) measure by the same rule: DDIM samples (sampler defaults) at the side
    views' cameras, fitted jointly per colour by the size search a run gets, at the canonical rotation (the
    camera-aware prior draws it there). A silhouette here is every pixel clearly off white, which takes in edge
    pixels under half covered, so even the training images measure over 1 (cylinder 1.06, sphere 1.01): compare
    the two numbers, not the first with 1."""
    cams, groups = view_cameras(resolution)
    az, el = cams.azimuth[groups["side"]], cams.elevation[groups["side"]]
    g = torch.Generator().manual_seed(seed)
    off_white = lambda rgb: (1 - rgb).abs().amax(1) > 0.25  # (V, 3, H, W) -> (V, H, W)
    sizes, reference = [], []
    for colour in COLORS:
        images = builtin.sample(
            components, [f"a {colour} {shape}"] * len(az), make_cameras(az, el, resolution), generator=g
        )
        sizes.append(best_scale_iou(off_white(images), shape, az, el, 0.0, FIT_SCALES)[1])
        truth = render_primitives(
            [shape] * len(az),
            [colour] * len(az),
            az,
            el,
            resolution,
            scale=torch.tensor(1.0),
            generator=torch.Generator().manual_seed(seed),
        )["rgb"]
        reference.append(best_scale_iou(off_white(truth), shape, az, el, 0.0, FIT_SCALES)[1])
    median = lambda xs: round(float(torch.tensor(xs).median()), 3)
    return median(sizes), median(reference)


def run_one(prompt: str, method: str, args, prior, classifier) -> tuple[dict, torch.Tensor, torch.Tensor]:
    overrides = [
        f"prompt={prompt}",
        "prior=builtin",
        f"guidance={method}",
        f"seed={args.seed}",
        f"train.steps={args.steps}",
        "train.val_every=0",
        "train.ckpt_every=0",
        *args.overrides,
    ]
    if args.prior_folder:
        overrides += ["prior.kind=pixel", f"prior.model={args.prior_folder}"]
    cfg = to_run_config(compose(overrides, config_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), torch.device("cpu"), prior)
        started = time.perf_counter()
        trainer.fit(SimpleNamespace(requested=None))
        wall = time.perf_counter() - started
        metrics, views, opacity = evaluate(trainer, prompt, classifier, args.resolution)
    metrics.update(
        prompt=prompt,
        method=method,
        guidance_scale=cfg.guidance.scale,
        steps=args.steps,
        seed=args.seed,
        wall_time_s=round(wall, 1),
    )
    return metrics, views, opacity


def summarise(
    runs: list[dict],
    resolution: int,
    prior_sizes: dict[str, tuple[float, float]] | None = None,
    jitter: float = SCALE_JITTER,
) -> dict:
    out = {}
    for method in sorted({r["method"] for r in runs}):
        rs = [r for r in runs if r["method"] == method]
        mean = lambda xs: sum(xs) / len(xs)
        per_shape = {}
        for shape in SHAPES:
            srs = [r for r in rs if r["prompt"].endswith(shape)]
            if srs:
                per_shape[shape] = {g: round(mean([r["iou"][g] for r in srs]), 3) for g in ("side", "top")}
                per_shape[shape].update(
                    {f"{g}_any_scale": round(mean([r["iou_any_scale"][g] for r in srs]), 3) for g in ("side", "top")}
                )
                reference = size_reference(shape, resolution, jitter)
                per_shape[shape].update({f"{g}_reference": v for g, v in reference.items()})
                per_shape[shape]["fitted_size"] = round(mean([r["fitted_scale"]["side"] for r in srs]), 3)
                if prior_sizes:
                    per_shape[shape]["prior_sample_size"], per_shape[shape]["prior_image_size"] = prior_sizes[shape]
        cubes = [r["top_rotation_variation"] for r in rs if r["prompt"].endswith("cube")]
        out[method] = {
            "guidance_scale": rs[0]["guidance_scale"],
            "r_precision": round(mean([r["r_precision"] for r in rs]), 3),
            "iou_side": round(mean([r["iou"]["side"] for r in rs]), 3),
            "iou_top": round(mean([r["iou"]["top"] for r in rs]), 3),
            "iou_min_shape_group": round(min(min(v[g] for g in ("side", "top")) for v in per_shape.values()), 3),
            "iou_any_scale_side": round(mean([r["iou_any_scale"]["side"] for r in rs]), 3),
            "iou_any_scale_top": round(mean([r["iou_any_scale"]["top"] for r in rs]), 3),
            "iou_per_shape": per_shape,
            "cube_top_rotation_variation": round(mean(cubes), 3) if cubes else None,
            "colour_error": round(mean([r["colour_error"] for r in rs]), 3),
            "broken_view_share": round(mean([r["broken_view_share"] for r in rs]), 3),
            "wall_time_s": round(mean([r["wall_time_s"] for r in rs]), 1),
        }
    return out


def markdown(summary: dict, runs: list[dict], overrides: list[str] = (), missing: list[str] = ()) -> str:
    lines = [
        "| method | scale | R-precision | IoU side | IoU top | worst shape/group IoU | cube top rot. var. | "
        "colour err | broken views | s/run | IoU any size side / top |",
        "|---" * 11 + "|",
    ]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {s['guidance_scale']} | {s['r_precision']:.1%} | {s['iou_side']:.3f} | "
            f"{s['iou_top']:.3f} | {s['iou_min_shape_group']:.3f} | {s['cube_top_rotation_variation']} | "
            f"{s['colour_error']:.3f} | {s['broken_view_share']:.1%} | {s['wall_time_s']} | "
            f"{s['iou_any_scale_side']:.3f} / {s['iou_any_scale_top']:.3f} |"
        )
    lines += [
        "",
        "| shape | method | IoU side | IoU top | IoU any size side / top | training images side / top | "
        "fitted size (side) | prior samples' / its images' size |",
        "|---" * 8 + "|",
    ]
    for shape in SHAPES:
        for m, s in summary.items():
            if shape in s["iou_per_shape"]:
                v = s["iou_per_shape"][shape]
                lines.append(
                    f"| {shape} | {m} | {v['side']:.3f} | {v['top']:.3f} | "
                    f"{v['side_any_scale']:.3f} / {v['top_any_scale']:.3f} | "
                    f"{v['side_reference']:.3f} / {v['top_reference']:.3f} | {v['fitted_size']:.3f} | "
                    f"{v.get('prior_sample_size', '–')} / {v.get('prior_image_size', '–')} |"
                )
    lines += ["", f"Config overrides on the built-in preset: {' '.join(f'`{o}`' for o in overrides) or 'none'}."]
    # Runs saved before these were recorded used a 5° grid and 2x2-supersampled truth (``--rescore`` updates them).
    grids = sorted({r.get("rotation_step_deg", 5.0) for r in runs})
    truth = sorted({r.get("truth_supersample", 2) for r in runs})
    lines += [
        f"Silhouette IoU maximised over a rotation about the vertical axis on a {' / '.join(map(str, grids))}° "
        f"grid, against truth masks sampled {' / '.join(f'{t}x{t}' for t in truth)} per pixel"
        f"{' (mixed: rerun with --rescore)' if len(grids) > 1 or len(truth) > 1 else ''}."
    ]
    if missing:
        lines += [
            f"Not yet run by every method, so left out above ({len(missing)} runs, finished ones kept): "
            f"{', '.join(missing)}."
        ]
    lines += [
        "",
        "| prompt | method | R-precision | IoU side | IoU top | top rot. var. | colour err | fitted size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['prompt']} | {r['method']} | {r['r_precision']:.0%} | {r['iou']['side']:.3f} | "
            f"{r['iou']['top']:.3f} | {r['top_rotation_variation']:.3f} | {r['colour_error']:.3f} | "
            f"{r['fitted_scale']['side']:.2f} / {r['fitted_scale']['top']:.2f} |"
        )
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


def save_run(runs_dir: Path, metrics: dict, views: torch.Tensor, opacity: torch.Tensor) -> None:
    """One finished run as small files a reviewer can open: ``<key>.png`` (the contact sheet's views side by side),
    ``<key>.opacity.png`` (every view's opacity) and ``<key>.json`` (metrics), written last: it marks the run done."""
    import imageio.v2 as imageio

    key = run_key(metrics["prompt"], metrics["method"])
    for name, image in (
        (f"{key}.png", torch.cat(list(views), dim=1)),
        (f"{key}.opacity.png", torch.cat(list(opacity[..., None]), dim=1)),
    ):
        with atomic_output(runs_dir / name) as tmp:
            imageio.imwrite(tmp, to_uint8(image), format="png")
    atomic_write_bytes((json.dumps(metrics, indent=1) + "\n").encode(), runs_dir / f"{key}.json")


PRIOR_WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")


def prior_id(folder: str | Path) -> str:
    """A short hash of a prior folder's weights: saved runs of another prior must not mix into a report."""
    digest = hashlib.sha256()
    for name in PRIOR_WEIGHTS:
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()[:16]


def load_finished(runs_dir: Path, prompts: list[str], methods: list[str], args) -> dict[str, tuple[dict, torch.Tensor]]:
    """Saved runs of this benchmark (same steps, seed, overrides, prior) by run_key: (metrics, views (V, H, W, 3))."""
    done = {}
    for prompt in prompts:
        for method in methods:
            key = run_key(prompt, method)
            path = runs_dir / f"{key}.json"
            if not path.exists():
                continue
            metrics = json.loads(path.read_text())
            if (metrics["steps"], metrics["seed"], metrics.get("overrides", [])) != (
                args.steps,
                args.seed,
                args.overrides,
            ):
                raise SystemExit(
                    f"--out-dir: {path} was run with other settings (steps {metrics['steps']}, seed "
                    f"{metrics['seed']}, overrides {metrics.get('overrides')}); pick a new --out-dir"
                )
            if metrics.get("prior") != args.prior_id:
                raise SystemExit(
                    f"--out-dir: {path} was run with another prior (weights {metrics.get('prior')}, "
                    f"this one {args.prior_id}); pick a new --out-dir"
                )
            done[key] = (metrics, read_views(runs_dir / f"{key}.png"))
    return done


def write_report(out: Path, prompts: list[str], methods: list[str], done: dict, args) -> None:
    import imageio.v2 as imageio

    # Methods are compared on the same prompts only: a prompt counts once every method has finished it.
    paired = [p for p in prompts if all(run_key(p, m) in done for m in methods)]
    if not paired:  # e.g. the first shard of --shard 1/2 (it runs one method) finishing before the second
        print(f"no prompt finished by every method yet under {out / 'runs'}; no report written")
        return
    runs = [done[run_key(p, m)][0] for p in paired for m in methods]
    sheet_rows = {p: {m: done[run_key(p, m)][1] for m in methods} for p in paired}
    prior_sizes = None
    if args.prior_sizes:
        components = builtin.load_components(args.prior_dir)
        shapes = {p.split()[-1] for p in paired}
        prior_sizes = {shape: prior_sample_size(components, shape, args.resolution, args.seed) for shape in shapes}
    # The "training images" calibration uses the size jitter the prior was trained with (older exports: the default).
    jitter = builtin.load_metadata(args.prior_dir).get("scale_jitter", SCALE_JITTER)
    summary = summarise(runs, args.resolution, prior_sizes, jitter)
    missing = [run_key(p, m) for p in prompts for m in methods if p not in paired]
    report = {
        "summary": summary,
        "runs": runs,
        "steps": args.steps,
        "seed": args.seed,
        "prompts": prompts,
        "overrides": args.overrides,
        "missing": missing,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(summary, runs, args.overrides, missing)
    (out / "results.md").write_text(table)
    imageio.imwrite(out / "contact_sheet.png", to_uint8(contact_sheet(sheet_rows, methods)))
    print(table)
    print(f"wrote {out}/results.json, results.md, contact_sheet.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"prompts {QUICK_PROMPTS}, 30 steps")
    parser.add_argument(
        "--prompts", nargs="*", default=None, help='default: all 25 (an item with "=" is taken as a config override)'
    )
    parser.add_argument("--methods", nargs="*", default=["sds", "nfsd"])
    parser.add_argument("--steps", type=int, default=None, help="default: the built-in preset's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--prior-folder", default=None, help="a pixel prior folder instead of the built-in one")
    parser.add_argument("--out-dir", default="outputs/bench_quality")
    parser.add_argument("--shard", default="1/1", help="K/N: run every N-th run starting at the K-th")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from saved runs")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="recompute saved runs' silhouette metrics from their opacity PNGs, then report",
    )
    parser.add_argument(
        "--prior-sizes",
        action="store_true",
        help="also fit the size of the prior's own samples of each shape (seconds a shape)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    if args.prompts:
        # argparse gives "--prompts a b key=value" all to --prompts; no prompt contains "=", overrides always do.
        args.overrides += [p for p in args.prompts if "=" in p]
        args.prompts = [p for p in args.prompts if "=" not in p]
    prompts = args.prompts or (QUICK_PROMPTS if args.quick else ALL_PROMPTS)
    if args.steps is None:
        args.steps = 30 if args.quick else int(compose(["prompt=x", "prior=builtin"], config_dir()).train.steps)

    args.prior_dir = args.prior_folder or builtin.DEFAULT_DIR
    args.prior_id = prior_id(args.prior_dir)
    shard, n_shards = parse_shard(args.shard)
    out = Path(args.out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    done = load_finished(runs_dir, prompts, args.methods, args)
    todo = [(p, m) for p in prompts for m in args.methods][shard - 1 :: n_shards]
    if args.rescore:
        rescore(runs_dir, done, args.resolution)
    todo = [] if args.report_only or args.rescore else [(p, m) for p, m in todo if run_key(p, m) not in done]
    if todo:
        prior_cfg = to_run_config(
            compose(
                ["prompt=a red cube", "prior=builtin"]
                + (["prior.kind=pixel", f"prior.model={args.prior_folder}"] if args.prior_folder else []),
                config_dir(),
            )
        ).prior
        prior = load_prior(prior_cfg, "cpu")
        classifier = load_classifier()
    for prompt, method in todo:
        metrics, views, opacity = run_one(prompt, method, args, prior, classifier)
        metrics["overrides"], metrics["prior"] = args.overrides, args.prior_id
        save_run(runs_dir, metrics, views, opacity)
        done[run_key(prompt, method)] = (metrics, views)
        print(
            f"{prompt:<18} {method:<5} R-prec {metrics['r_precision']:.0%}  IoU side {metrics['iou']['side']:.3f}"
            f"  top {metrics['iou']['top']:.3f}  top-rot {metrics['top_rotation_variation']:.3f}"
            f"  {metrics['wall_time_s']}s",
            flush=True,
        )
    # Sharded processes each report what exists; the last one to finish sees every run.
    done = load_finished(runs_dir, prompts, args.methods, args)
    write_report(out, prompts, args.methods, done, args)


if __name__ == "__main__":
    main()
