"""The quality benchmark's protocol on the built-in domain: SDS against NFSD at equal steps and seeds.

For each prompt ("a red cube", ...) and method, dreamnfsd is trained with the built-in prior; then

- the exported mesh (exactly as a run exports it) is measured in 3D against the true primitive
  (:mod:`dreamnfsd.eval.geometry`: volumetric IoU, Chamfer, F-score@0.02, normal consistency, mesh sanity, the
  cube's axis-aligned share);
- 14 fixed views at three elevations (side 15°, mid 45°, top 85°) are rendered, shaded as the prior's images are,
  and scored: R-precision (the shipped classifier names shape and colour), silhouette IoU per view group against the
  true primitive maximised over a rotation about the vertical axis (1° grid; truth and render masks both sampled at
  the pixel centres), the top rotation variation (1 - IoU of the top views at 0° and 45°: cube ~0.29, a drum ~0),
  colour error, broken views, and image-space geometry: the rendered normals' mean angular error and the relative
  depth error against the truth, over pixels both masks cover, at the mesh's best rotation;
- a diagnostic beside the silhouette IoU: the same IoU maximised over the object's size too (0.85-1.15).

Each finished run is saved under ``runs/`` (metrics and the resolved config as JSON, written last; the views,
every view's opacity, normals and depth as PNGs; the mesh, quantised, as ``.mesh.npz``): small files a reviewer can
open, and enough to rescore every metric without training (:func:`rescore`). The report is in
:mod:`dreamnfsd.eval.summary`.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from omegaconf import OmegaConf

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.data import COLORS, SHAPES, make_cameras, render_primitives
from dreamnfsd.eval.classifier import classify
from dreamnfsd.eval.geometry import GeometrySettings, mesh_geometry_metrics
from dreamnfsd.eval.metrics import (
    ROTATION_STEP_DEG,
    TRUTH_SUPERSAMPLE,
    best_rotation_iou,
    best_scale_iou,
    broken_views,
    colour_error,
    mask_iou,
)
from dreamnfsd.export.mesh import extract_mesh, level_rays
from dreamnfsd.export.video import normals_to_rgb, to_uint8
from dreamnfsd.guidance.priors.builtin import TEXT_ENCODER_WEIGHTS, UNET_WEIGHTS
from dreamnfsd.train.config import RunConfig
from dreamnfsd.train.trainer import Trainer, render_views
from dreamnfsd.utils.files import atomic_output, atomic_write_bytes
from dreamnfsd.utils.threads import torch_threads

# Ordered so that each block of five names every shape and every colour once: a benchmark stopped part-way (it
# resumes) has covered the shapes evenly.
ALL_PROMPTS = [f"a {COLORS[(i + k) % len(COLORS)]} {SHAPES[i]}" for k in range(len(COLORS)) for i in range(len(SHAPES))]
QUICK_PROMPTS = ["a red cube", "a blue sphere"]
# --quick (CI-sized) measures with 10x fewer surface samples: a nearly untrained mesh is far from the truth, and
# nearest-neighbour queries that far away cost about (distance / sample spacing)^2 each.
QUICK_GEOMETRY = GeometrySettings(n_samples=20_000, lines=128)
# (elevation°, azimuths°): side views, mid views, and a near-overhead pair 45° apart.
VIEW_GROUPS = {"side": (15.0, range(0, 360, 45)), "mid": (45.0, range(0, 360, 90)), "top": (85.0, (0, 45))}
# Sizes tried by the IoU-at-any-scale diagnostic: the prior's training jitter (±10%) and a little beyond.
FIT_SCALES = torch.arange(0.85, 1.151, 0.01)
# The contact sheets' views, in view_cameras order: every other side view (0, 90, 180, 270 deg) and the first top.
CONTACT_VIEWS = [0, 2, 4, 6, 12]
AMBIENT = 0.3  # the built-in domain's renders use 0.3 ambient + 0.7 diffuse
DEPTH_SCALE = 10_000  # depth PNGs are uint16 in units of 1/DEPTH_SCALE (6.5 world units at most)
MESH_QUANT = 65535  # saved mesh vertices are uint16 over [-bound, bound]
PRIOR_WEIGHTS = (UNET_WEIGHTS, TEXT_ENCODER_WEIGHTS)


def view_cameras(resolution: int) -> tuple[CameraBatch, dict[str, slice]]:
    """The 14 fixed views, in VIEW_GROUPS order, and each group's slice."""
    az, el, groups, start = [], [], {}, 0
    for name, (elev, azimuths) in VIEW_GROUPS.items():
        azimuths = list(azimuths)
        az += [math.radians(a) for a in azimuths]
        el += [math.radians(elev)] * len(azimuths)
        groups[name] = slice(start, start + len(azimuths))
        start += len(azimuths)
    return make_cameras(torch.tensor(az), torch.tensor(el), resolution), groups


def run_key(prompt: str, method: str) -> str:
    return f"{prompt.replace(' ', '-')}.{method}"


def prior_id(folder: str | Path) -> str:
    """A short hash of a prior folder's weights: saved runs of another prior must not mix into a report."""
    digest = hashlib.sha256()
    for name in PRIOR_WEIGHTS:
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()[:16]


# --- metrics of one run -------------------------------------------------------------------------------------------
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


def true_geometry_views(shape: str, resolution: int, rotation_deg: float) -> dict[str, torch.Tensor]:
    """The true primitive's normals (V, H, W, 3), depth (V, H, W) and mask (V, H, W) at the fixed views, for an
    object turned by ``rotation_deg`` about the vertical axis (the camera turns back; normals turn with the object).
    """
    cams, _ = view_cameras(resolution)
    v = len(cams)
    t = render_primitives(
        [shape] * v,
        ["red"] * v,
        cams.azimuth - math.radians(rotation_deg),
        cams.elevation,
        resolution,
        supersample=1,
        light_jitter=0.0,
        scale=torch.tensor(1.0),
        generator=torch.Generator(),
    )
    a = math.radians(rotation_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    normal = t["normal"].permute(0, 2, 3, 1) @ rot.T
    return {"normal": normal, "depth": t["depth"][:, 0], "mask": t["mask"][:, 0] > 0.5}


def image_geometry_metrics(
    normal: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, shape: str, rotation_deg: float
) -> dict:
    """Rendered normals' angular error and relative depth error at the fixed views (V, H, W, ...) vs the truth."""
    from dreamnfsd.eval.geometry import image_geometry_errors

    truth = true_geometry_views(shape, mask.shape[-1], rotation_deg)
    return image_geometry_errors(normal, depth, mask, truth["normal"], truth["depth"], truth["mask"])


def quantise_mesh(mesh, bound: float) -> dict[str, np.ndarray]:
    v = np.asarray(mesh.vertices)
    q = np.round((v + bound) / (2 * bound) * MESH_QUANT).clip(0, MESH_QUANT).astype(np.uint16)
    return {"vertices": q, "faces": np.asarray(mesh.faces, dtype=np.int32), "bound": np.float32(bound)}


def load_mesh(path: Path):
    """A mesh saved by :func:`save_run` as a ``trimesh.Trimesh``."""
    import trimesh

    data = np.load(path)
    bound = float(data["bound"])
    vertices = data["vertices"].astype(np.float64) / MESH_QUANT * 2 * bound - bound
    return trimesh.Trimesh(vertices=vertices, faces=data["faces"], process=False)


def evaluate(
    trainer: Trainer, prompt: str, classifier, resolution: int, geometry_settings: GeometrySettings | None = None
) -> tuple[dict, dict]:
    """Metrics of a trained run and what :func:`save_run` keeps of it: {"views" (5, H, W, 3) for the contact sheet,
    "opacity" (V, H, W), "normal" (V, H, W, 3), "depth" (V, H, W), "mesh"}."""
    colour, shape = prompt.split()[1:3]
    cfg = trainer.cfg
    cams, groups = view_cameras(resolution)
    shaded = render_views(trainer.scene, cams, shading="lambertian", ambient=AMBIENT)
    albedo = render_views(trainer.scene, cams, shading="albedo")
    shape_idx, colour_idx, _ = classify(shaded["rgb"].permute(0, 3, 1, 2), classifier)
    correct = (shape_idx == SHAPES.index(shape)) & (colour_idx == COLORS.index(colour))
    masks = shaded["opacity"][..., 0] > 0.5
    ec = cfg.export
    mesh = extract_mesh(
        trainer.scene.field,
        ec.mesh_resolution,
        ec.threshold,
        ec.min_component_fraction,
        ec.max_faces,
        level_rays=level_rays(cfg.camera, cfg.export, torch.device("cpu")),
    )
    gs = geometry_settings or GeometrySettings()
    geometry = mesh_geometry_metrics(mesh, shape, gs)
    result = {
        "r_precision": float(correct.float().mean()),
        "r_precision_by_group": {g: float(correct[s].float().mean()) for g, s in groups.items()},
        **mask_metrics(masks, shape, resolution),
        "colour_error": colour_error(albedo["rgb"], masks[..., None].float(), colour),
        "broken_view_share": float(broken_views(shaded["opacity"]).float().mean()),
        "predicted": [f"a {COLORS[c]} {SHAPES[s]}" for s, c in zip(shape_idx.tolist(), colour_idx.tolist())],
        "geometry": geometry,
        "geometry_settings": asdict(gs),
        "image_geometry": image_geometry_metrics(
            shaded["normal"], shaded["depth"][..., 0], masks, shape, geometry["rotation_deg"]
        ),
    }
    kept = {
        "views": shaded["rgb"][CONTACT_VIEWS],
        "opacity": shaded["opacity"][..., 0],
        "normal": shaded["normal"],
        "depth": shaded["depth"][..., 0],
        "mesh": quantise_mesh(mesh, float(cfg.field.bound)),
    }
    return result, kept


def run_one(
    cfg: RunConfig, prior, classifier, resolution: int, geometry_settings: GeometrySettings | None = None
) -> tuple[dict, dict]:
    """Train one run of a composed config (``cfg: RunConfig``) on the CPU and evaluate it."""
    prompt = cfg.prompt
    # train.num_threads as a run applies it: the NeRF side's bits depend on it (the prior's do not).
    with tempfile.TemporaryDirectory() as tmp, torch_threads(cfg.train.num_threads):
        trainer = Trainer(cfg, Path(tmp), torch.device("cpu"), prior)
        started = time.perf_counter()
        trainer.fit(SimpleNamespace(requested=None))
        wall = time.perf_counter() - started
        metrics, kept = evaluate(trainer, prompt, classifier, resolution, geometry_settings)
    metrics.update(
        prompt=prompt,
        method=cfg.guidance.kind,
        guidance_scale=cfg.guidance.scale,
        field=cfg.field.kind,
        steps=cfg.train.steps,
        seed=cfg.seed,
        wall_time_s=round(wall, 1),
        # The whole resolved config, so a folder says what ran, not only which overrides were typed.
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),  # as a checkpoint records it
    )
    return metrics, kept


# --- the run store ------------------------------------------------------------------------------------------------
def _strip(images: torch.Tensor) -> torch.Tensor:
    return torch.cat(list(images), dim=1)


def save_run(runs_dir: Path, metrics: dict, kept: dict) -> None:
    """One finished run as small files: ``<key>.png`` (the contact sheet's views), ``<key>.opacity.png``,
    ``<key>.normal.png`` (normals as colours, on white), ``<key>.depth.png`` (uint16), ``<key>.mesh.npz`` and
    ``<key>.json`` (metrics), written last: it marks the run done."""
    import imageio.v2 as imageio

    key = run_key(metrics["prompt"], metrics["method"])
    opacity = kept["opacity"][..., None]
    images = {
        f"{key}.png": to_uint8(_strip(kept["views"])),
        f"{key}.opacity.png": to_uint8(_strip(opacity)),
        f"{key}.normal.png": to_uint8(_strip(normals_to_rgb(kept["normal"], opacity))),
        f"{key}.depth.png": (_strip(kept["depth"][..., None])[..., 0] * DEPTH_SCALE)
        .round()
        .clamp(0, 65535)
        .numpy()
        .astype(np.uint16),
    }
    for name, image in images.items():
        with atomic_output(runs_dir / name) as tmp:
            imageio.imwrite(tmp, image, format="png")
    with atomic_output(runs_dir / f"{key}.mesh.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **kept["mesh"])
    atomic_write_bytes((json.dumps(metrics, indent=1) + "\n").encode(), runs_dir / f"{key}.json")


def read_views(path: Path) -> torch.Tensor:
    """A strip of square views saved side by side by :func:`save_run` -> (V, H, W, C), C <= 3; 8-bit images in
    [0, 1], 16-bit ones as stored."""
    import imageio.v2 as imageio

    raw = imageio.imread(path)
    strip = torch.from_numpy(raw.astype(np.float32)) / (255.0 if raw.dtype == np.uint8 else 1.0)
    strip = strip[..., :3] if strip.ndim == 3 else strip[..., None]
    return torch.stack(strip.split(strip.shape[0], dim=1))


def normal_views(runs_dir: Path, key: str) -> torch.Tensor:
    """A saved run's rendered normals (as colours) at the contact sheet's views (V, H, W, 3)."""
    return read_views(runs_dir / f"{key}.normal.png")[CONTACT_VIEWS]


def load_finished(runs_dir: Path, keys: list[str], expect: dict) -> dict[str, tuple[dict, torch.Tensor]]:
    """Saved runs by key: (metrics, contact-sheet views (V, H, W, 3)). A run recorded with other settings than
    ``expect`` (steps, seed, overrides, prior) stops the benchmark instead of mixing into its report."""
    done = {}
    for key in keys:
        path = runs_dir / f"{key}.json"
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        for name, want in expect.items():
            have = metrics.get(name, [] if name == "overrides" else None)
            if have != want:
                raise SystemExit(
                    f"--out-dir: {path} was run with another {name} ({have!r}, this call {want!r}); "
                    "pick a new --out-dir"
                )
        done[key] = (metrics, read_views(runs_dir / f"{key}.png"))
    return done


def rescore(runs_dir: Path, done: dict, resolution: int) -> None:
    """Recomputes every saved run's metrics from its saved files (no training): silhouettes from the opacity PNG,
    3D metrics from the mesh, image geometry from the normal and depth PNGs. Rewrites each JSON."""
    for key, (metrics, _) in done.items():
        shape = metrics["prompt"].split()[2]
        opacity = read_views(runs_dir / f"{key}.opacity.png")[..., 0]
        masks = opacity > 0.5
        old = json.loads(json.dumps({"iou": metrics["iou"], "geometry": metrics.get("geometry", {})}))
        metrics.update(mask_metrics(masks, shape, resolution))
        mesh_path = runs_dir / f"{key}.mesh.npz"
        if mesh_path.exists():
            # Measured as it was (a run saved before settings were recorded used the defaults).
            gs = GeometrySettings(**metrics.get("geometry_settings", {}))
            metrics["geometry"] = mesh_geometry_metrics(load_mesh(mesh_path), shape, gs)
            # Colours back to normals, undoing the compositing over white by opacity.
            rgb = read_views(runs_dir / f"{key}.normal.png")
            normal = (rgb - (1 - opacity[..., None])) / opacity[..., None].clamp(min=1e-3) * 2 - 1
            depth = read_views(runs_dir / f"{key}.depth.png")[..., 0] / DEPTH_SCALE
            metrics["image_geometry"] = image_geometry_metrics(
                normal, depth, masks, shape, metrics["geometry"]["rotation_deg"]
            )
        atomic_write_bytes((json.dumps(metrics, indent=1) + "\n").encode(), runs_dir / f"{key}.json")
        print(
            f"{metrics['prompt']:<18} {metrics['method']:<5} IoU side {old['iou']['side']:.3f} -> "
            f"{metrics['iou']['side']:.3f}  top {old['iou']['top']:.3f} -> {metrics['iou']['top']:.3f}  3D IoU "
            f"{old['geometry'].get('iou', math.nan):.3f} -> {metrics.get('geometry', {}).get('iou', math.nan):.3f}",
            flush=True,
        )


def write_report(out: Path, prompts: list[str], methods: list[str], done: dict, settings: dict) -> str | None:
    """``results.json``, ``results.md`` and ``contact_sheet.png`` under ``out`` from the saved runs ``done``
    (by key: (metrics, views)). Methods are compared on the same prompts only: a prompt counts once every method
    has finished it. Returns the markdown, or None when no prompt is finished by every method yet."""
    import imageio.v2 as imageio

    from dreamnfsd.eval.summary import contact_sheet, markdown, summarise

    paired = [p for p in prompts if all(run_key(p, m) in done for m in methods)]
    if not paired:
        return None
    # Each run's resolved config stays in its own runs/<key>.json; the report would repeat it 50 times.
    runs = [{k: v for k, v in done[run_key(p, m)][0].items() if k != "config"} for p in paired for m in methods]
    summary = summarise(runs)
    missing = [run_key(p, m) for p in prompts for m in methods if p not in paired]
    report = {"summary": summary, "runs": runs, "prompts": prompts, "missing": missing, **settings}
    atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode(), out / "results.json")
    table = markdown(summary, runs, settings.get("overrides", []), missing)
    atomic_write_bytes(table.encode(), out / "results.md")
    sheet = contact_sheet({p: {m: done[run_key(p, m)][1] for m in methods} for p in paired}, methods)
    with atomic_output(out / "contact_sheet.png") as tmp:
        imageio.imwrite(tmp, to_uint8(sheet), format="png")
    # The same views shaded beside their rendered normals, per method: a fog or a bumpy surface shows at once.
    shaded_and_normals = {
        p: {
            f"{m}{part}": done[run_key(p, m)][1] if part == "" else normal_views(out / "runs", run_key(p, m))
            for m in methods
            for part in ("", " normals")
        }
        for p in paired
    }
    labels = [f"{m}{part}" for m in methods for part in ("", " normals")]
    with atomic_output(out / "geometry_sheet.png") as tmp:
        imageio.imwrite(tmp, to_uint8(contact_sheet(shaded_and_normals, labels, upscale=3)), format="png")
    return table
