"""The quality benchmark's report: per-method and per-shape summaries of saved runs, the targets they are held to,
a markdown table and a contact sheet (plain functions of the runs' metric dicts)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dreamnfsd.data import SHAPES

# What the benchmark holds every shape to, with the better method (3D) and both methods (no regression).
TARGETS_3D = {"iou": 0.90, "fscore": 0.85, "normal_consistency": 0.95, "chamfer": 0.02}
TARGET_PROMPT_IOU = 0.8
TARGET_NORMAL_ANGLE = 15.0
TARGET_R_PRECISION = 0.95
TARGET_SILHOUETTE = 0.9
# Per-run geometry metrics averaged per shape: (key in the run's dict, path).
GEOMETRY_KEYS = {
    "iou3d": ("geometry", "iou"),
    "fscore": ("geometry", "fscore"),
    "normal_consistency": ("geometry", "normal_consistency"),
    "chamfer": ("geometry", "chamfer"),
    "area_ratio": ("geometry", "area_ratio"),
    "normal_angle_deg": ("image_geometry", "normal_angle_deg"),
    "depth_rel_error": ("image_geometry", "depth_rel_error"),
    # Size apart from shape (diagnostics; runs scored before they existed lack them and are left out of the mean).
    "fscore_true_volume": ("geometry", "fscore_true_volume"),
}


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def _fmt(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.3f}"


def one_shell(run: dict) -> bool:
    g = run.get("geometry", {})
    return g.get("components") == 1 and g.get("volume", -1.0) > 0


def geometry_means(runs: list[dict]) -> dict:
    """The 3D and image-space metrics over runs that all have them: the means of GEOMETRY_KEYS (a key some runs
    lack is averaged over those that have it), the lowest 3D IoU and the count of one-shell meshes. One block for
    a shape's summary and a method's, so the two cannot read the runs differently."""
    out = {name: round(_mean([r[section].get(key) for r in runs]), 4) for name, (section, key) in GEOMETRY_KEYS.items()}
    out["min_prompt_iou3d"] = round(min(r["geometry"]["iou"] for r in runs), 3)
    out["one_shell"] = sum(one_shell(r) for r in runs)
    return out


def shape_summary(runs: list[dict]) -> dict:
    """Means over one shape's runs of one method: silhouette IoU per group, the 3D and image-space metrics."""
    out = {g: round(_mean([r["iou"][g] for r in runs]), 3) for g in ("side", "top")}
    out.update({f"{g}_any_scale": round(_mean([r["iou_any_scale"][g] for r in runs]), 3) for g in ("side", "top")})
    out["fitted_size"] = round(_mean([r["fitted_scale"]["side"] for r in runs]), 3)
    out["r_precision"] = round(_mean([r["r_precision"] for r in runs]), 3)
    if all("geometry" in r for r in runs):
        out.update(geometry_means(runs))
        out["volume_ratio"] = round(_mean([r["geometry"]["volume"] / r["geometry"]["true_volume"] for r in runs]), 3)
        out["runs"] = len(runs)
        shares = [r["geometry"]["axis_aligned_share"] for r in runs if "axis_aligned_share" in r["geometry"]]
        if shares:
            out["axis_aligned_share"] = round(_mean(shares), 3)
    return out


def summarise(runs: list[dict]) -> dict:
    """{method: {...overall means..., "per_shape": {shape: shape_summary}}} over the runs given."""
    out = {}
    for method in sorted({r["method"] for r in runs}):
        rs = [r for r in runs if r["method"] == method]
        by_shape = {s: [r for r in rs if r["prompt"].endswith(s)] for s in SHAPES}
        per_shape = {s: shape_summary(srs) for s, srs in by_shape.items() if srs}
        cubes = [r["top_rotation_variation"] for r in rs if r["prompt"].endswith("cube")]
        summary = {
            "guidance_scale": rs[0]["guidance_scale"],
            "field": rs[0].get("field", "density"),
            "r_precision": round(_mean([r["r_precision"] for r in rs]), 3),
            "iou_side": round(_mean([r["iou"]["side"] for r in rs]), 3),
            "iou_top": round(_mean([r["iou"]["top"] for r in rs]), 3),
            "iou_min_shape_group": round(min(min(v[g] for g in ("side", "top")) for v in per_shape.values()), 3),
            "iou_any_scale_side": round(_mean([r["iou_any_scale"]["side"] for r in rs]), 3),
            "iou_any_scale_top": round(_mean([r["iou_any_scale"]["top"] for r in rs]), 3),
            "cube_top_rotation_variation": round(_mean(cubes), 3) if cubes else None,
            "colour_error": round(_mean([r["colour_error"] for r in rs]), 3),
            "broken_view_share": round(_mean([r["broken_view_share"] for r in rs]), 3),
            "wall_time_s": round(_mean([r["wall_time_s"] for r in rs]), 1),
            "per_shape": per_shape,
        }
        if all("geometry" in r for r in rs):
            summary.update(geometry_means(rs))
        out[method] = summary
    return out


def shape_passes_3d(v: dict) -> bool:
    return (
        v.get("iou3d", 0) >= TARGETS_3D["iou"]
        and v.get("fscore", 0) >= TARGETS_3D["fscore"]
        and v.get("normal_consistency", 0) >= TARGETS_3D["normal_consistency"]
        and v.get("chamfer", math.inf) <= TARGETS_3D["chamfer"]
    )


def _score_3d(v: dict) -> tuple[bool, float]:
    return shape_passes_3d(v), v["iou3d"] + v["fscore"] + v["normal_consistency"]


def best_method_per_shape(summary: dict) -> dict[str, str]:
    """For each shape, the method with the better 3D result: passing the targets first, then the sum of IoU,
    F-score and normal consistency."""
    best = {}
    for shape in SHAPES:
        have = {m: s["per_shape"][shape] for m, s in summary.items() if shape in s["per_shape"]}
        if have and all("iou3d" in v for v in have.values()):
            best[shape] = max(have, key=lambda m: _score_3d(have[m]))  # noqa: B023 (used at once)
    return best


def check_targets(summary: dict, runs: list[dict]) -> list[tuple[str, str, bool]]:
    """(what, measured, met) for every target of the geometry benchmark."""
    rows = []
    best = best_method_per_shape(summary)
    for shape, method in best.items():
        v = summary[method]["per_shape"][shape]
        measured = (
            f"{method}: IoU {v['iou3d']:.3f}, F {v['fscore']:.3f}, NC {v['normal_consistency']:.3f}, "
            f"Chamfer {v['chamfer']:.4f}"
        )
        rows.append((f"{shape}: 3D targets with the better method", measured, shape_passes_3d(v)))
    for method, s in summary.items():
        if "min_prompt_iou3d" in s:
            rows.append(
                (
                    f"{method}: every prompt's 3D IoU >= {TARGET_PROMPT_IOU}",
                    f"lowest {s['min_prompt_iou3d']:.3f}",
                    s["min_prompt_iou3d"] >= TARGET_PROMPT_IOU,
                )
            )
            n = sum(r["method"] == method for r in runs)
            rows.append(
                (f"{method}: every mesh one positive-volume shell", f"{s['one_shell']} of {n}", s["one_shell"] == n)
            )
            worst = max(v["normal_angle_deg"] for v in s["per_shape"].values())
            rows.append(
                (
                    f"{method}: rendered normals <= {TARGET_NORMAL_ANGLE:.0f}° on every shape",
                    f"worst {worst:.1f}°",
                    worst <= TARGET_NORMAL_ANGLE,
                )
            )
        worst_rp = min(v["r_precision"] for v in s["per_shape"].values())
        rows.append(
            (
                f"{method}: R-precision >= {TARGET_R_PRECISION:.0%} on every shape",
                f"lowest {worst_rp:.1%}",
                worst_rp >= TARGET_R_PRECISION,
            )
        )
        rows.append(
            (
                f"{method}: silhouette IoU >= {TARGET_SILHOUETTE} on every shape and view group",
                f"lowest {s['iou_min_shape_group']:.3f}",
                s["iou_min_shape_group"] >= TARGET_SILHOUETTE,
            )
        )
    return rows


def markdown(summary: dict, runs: list[dict], overrides: Sequence[str] = (), missing: Sequence[str] = ()) -> str:
    """The report: 3D headline per method, per shape, the targets, the silhouette tables and every run."""
    has_3d = all("iou3d" in s for s in summary.values())
    lines = []
    if has_3d:
        lines += [
            "| method | scale | 3D IoU | F-score@0.02 | normal consistency | Chamfer | normals error | depth error | "
            "lowest prompt 3D IoU | one shell | R-precision | silhouette IoU side / top | s/run |",
            "|---" * 13 + "|",
        ]
        for m, s in summary.items():
            n = sum(r["method"] == m for r in runs)
            lines.append(
                f"| {m} | {s['guidance_scale']} | {s['iou3d']:.3f} | {s['fscore']:.3f} | "
                f"{s['normal_consistency']:.3f} | {s['chamfer']:.4f} | {s['normal_angle_deg']:.1f}° | "
                f"{s['depth_rel_error']:.3f} | {s['min_prompt_iou3d']:.3f} | {s['one_shell']}/{n} | "
                f"{s['r_precision']:.1%} | {s['iou_side']:.3f} / {s['iou_top']:.3f} | {s['wall_time_s']} |"
            )
        lines += [
            "",
            "| shape | method | 3D IoU | F-score@0.02 | normal consistency | Chamfer | area / true | normals error | "
            "depth error | lowest prompt 3D IoU | R-precision | silhouette IoU side / top | cube axis-aligned | "
            "volume / true | F at true volume |",
            "|---" * 15 + "|",
        ]
        for shape in SHAPES:
            for m, s in summary.items():
                v = s["per_shape"].get(shape)
                if v:
                    lines.append(
                        f"| {shape} | {m} | {v['iou3d']:.3f} | {v['fscore']:.3f} | {v['normal_consistency']:.3f} | "
                        f"{v['chamfer']:.4f} | {v['area_ratio']:.2f} | {v['normal_angle_deg']:.1f}° | "
                        f"{v['depth_rel_error']:.3f} | {v['min_prompt_iou3d']:.3f} | {v['r_precision']:.1%} | "
                        f"{v['side']:.3f} / {v['top']:.3f} | {v.get('axis_aligned_share', '–')} | "
                        f"{v['volume_ratio']:.3f} | {_fmt(v['fscore_true_volume'])} |"
                    )
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for what, measured, met in check_targets(summary, runs):
            lines.append(f"| {what} | {measured} | {'yes' if met else '**no**'} |")
        lines.append("")
    lines += [
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
    lines += ["", f"Config overrides on the built-in preset: {' '.join(f'`{o}`' for o in overrides) or 'none'}."]
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
        "| prompt | method | 3D IoU | F-score | NC | Chamfer | shells | volume | normals error | R-precision | "
        "IoU side | IoU top | top rot. var. |",
        "|---" * 13 + "|",
    ]
    for r in runs:
        g, ig = r.get("geometry"), r.get("image_geometry", {})
        geo = (
            f"{g['iou']:.3f} | {g['fscore']:.3f} | {g['normal_consistency']:.3f} | {g['chamfer']:.4f} | "
            f"{g['components']} | {g['volume']:.3f} | {ig.get('normal_angle_deg', math.nan):.1f}°"
            if g
            else "– | – | – | – | – | – | –"
        )
        lines.append(
            f"| {r['prompt']} | {r['method']} | {geo} | {r['r_precision']:.0%} | {r['iou']['side']:.3f} | "
            f"{r['iou']['top']:.3f} | {r['top_rotation_variation']:.3f} |"
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
