"""One run from start to finish: train (or resume), then export the mesh and turntable videos."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamnfsd.train.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class RunStatus:
    status: str  # completed | interrupted | failed
    exit_code: int
    in_sweep: bool = False


def pick_device(name: str) -> torch.device:
    from dreamnfsd.utils.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} asked for but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


def write_json(data: dict, path: Path) -> None:
    atomic_write_bytes((json.dumps(data, indent=2) + "\n").encode(), path)


def export_outputs(scene, cfg, out_dir: Path) -> dict:
    """Mesh (obj/ply/glb) and the two turntable videos into ``out_dir``. Returns {name: path or message}."""
    from dreamnfsd.cameras import turntable_cameras
    from dreamnfsd.export.mesh import EmptySurfaceError, extract_mesh, write_meshes
    from dreamnfsd.export.video import normals_to_rgb, side_by_side, write_video
    from dreamnfsd.train.trainer import render_views

    ec, outputs = cfg.export, {}
    out_dir = Path(out_dir)
    if ec.mesh:
        field = scene.field
        try:
            mesh = extract_mesh(
                field.density, lambda x: field(x)["albedo"], ec.mesh_resolution, cfg.field.bound, ec.threshold,
                ec.min_component_fraction,
            )
            for path in write_meshes(mesh, out_dir):
                outputs[path.suffix[1:]] = str(path)
            outputs["mesh_watertight"] = bool(mesh.is_watertight)
        except EmptySurfaceError as e:
            print(f"dreamnfsd: no mesh written: {e}", file=sys.stderr)
            outputs["mesh_error"] = str(e)
    if ec.video:
        device = next(scene.field.parameters()).device
        cams = turntable_cameras(
            ec.video_frames, ec.video_elevation, float(sum(cfg.camera.distance_range) / 2),
            float(sum(cfg.camera.fov_range) / 2), ec.video_resolution, ec.video_resolution, device,
        )
        views = render_views(scene, cams, shading="albedo")
        outputs["turntable"] = str(write_video(views["rgb"], out_dir / "turntable.mp4", ec.video_fps))
        panels = side_by_side(views["rgb"], normals_to_rgb(views["normal"], views["opacity"]), views["opacity"])
        outputs["turntable_panels"] = str(write_video(panels, out_dir / "turntable_rgb_normal_opacity.mp4",
                                                      ec.video_fps))
    return outputs


def train_run(cfg, run_dir: Path, resolved_yaml: str) -> RunStatus:
    from dreamnfsd.guidance.priors import load_prior
    from dreamnfsd.train.checkpoint import load_checkpoint, resolve_checkpoint
    from dreamnfsd.train.signals import StopRequest
    from dreamnfsd.train.trainer import Trainer, steps_per_second

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    device = pick_device(cfg.device)
    if not cfg.resume or not (run_dir / "config.yaml").exists():
        atomic_write_bytes(resolved_yaml.encode(), run_dir / "config.yaml")
    prior = load_prior(cfg.prior, device)
    prior.validate_prompt(cfg.prompt)
    trainer = Trainer(cfg, run_dir, device, prior)
    if cfg.resume:
        trainer.load_state_dict(load_checkpoint(resolve_checkpoint(cfg.resume), map_location=device))
        print(f"dreamnfsd: resuming {run_dir} at step {trainer.step}", file=sys.stderr)
    summary = {"prompt": cfg.prompt, "guidance": cfg.guidance.kind, "seed": cfg.seed, "run_dir": str(run_dir),
               "steps": cfg.train.steps}
    write_json({**summary, "status": "running", "step": trainer.step}, run_dir / "run.json")
    with StopRequest() as stop:
        status = trainer.fit(stop)
    summary.update(step=trainer.step, wall_time_s=round(trainer.wall_time, 2),
                   steps_per_s=round(steps_per_second(trainer), 3), nan_skips=trainer.total_skips,
                   rollbacks=trainer.rollbacks)
    if status == "interrupted":
        write_json({**summary, "status": "interrupted"}, run_dir / "run.json")
        print(f"dreamnfsd: stopped at step {trainer.step}; checkpoint saved. Resume with:\n"
              f"  dreamnfsd resume={run_dir}", file=sys.stderr)
        return RunStatus("interrupted", 130)
    started = time.perf_counter()
    out_dir = run_dir
    if (run_dir / "mesh.obj").exists() or (run_dir / "turntable.mp4").exists():
        # Trained further after it had finished once: its earlier outputs are kept, the new ones go beside them.
        out_dir = run_dir / "exports" / f"step{trainer.step:06d}-{time.strftime('%Y%m%d-%H%M%S')}"
        out_dir.mkdir(parents=True, exist_ok=True)
    outputs = export_outputs(trainer.scene, cfg, out_dir)
    summary.update(export_time_s=round(time.perf_counter() - started, 2), outputs=outputs)
    write_json({**summary, "status": "completed"}, run_dir / "run.json")
    print(f"dreamnfsd: done in {trainer.wall_time:.0f}s of training. Outputs in {out_dir}:")
    for name in ("obj", "ply", "glb", "turntable", "turntable_panels"):
        if name in outputs:
            print(f"  {outputs[name]}")
    return RunStatus("completed", 0)


def run_from_hydra(dcfg) -> RunStatus:
    """Hydra task body: check the config, run, and turn failures into a status (a sweep goes on past them)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from dreamnfsd.config import validate
    from dreamnfsd.train.preflight import to_run_config
    from dreamnfsd.utils.errors import UserError

    hc = HydraConfig.get()
    in_sweep = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        cfg = to_run_config(dcfg)
        validate(cfg)
        status = train_run(cfg, run_dir, OmegaConf.to_yaml(dcfg, resolve=True))
        status.in_sweep = in_sweep
        return status
    except UserError as e:
        print(f"dreamnfsd: error: {e}", file=sys.stderr)
        _record_failure(dcfg, run_dir, str(e))
        return RunStatus("failed", 2, in_sweep)
    except Exception:
        if not in_sweep:
            raise
        # One broken job must not take the sweep down: keep its traceback beside its outputs.
        text = traceback.format_exc()
        print(text, file=sys.stderr)
        _record_failure(dcfg, run_dir, text.strip().splitlines()[-1])
        return RunStatus("failed", 1, in_sweep)


def _record_failure(dcfg, run_dir: Path, message: str) -> None:
    if not run_dir.exists():
        return
    try:
        write_json({"prompt": str(dcfg.get("prompt", "")), "guidance": str(dcfg.guidance.kind),
                    "seed": int(dcfg.seed), "status": "failed", "error": message, "run_dir": str(run_dir)},
                   run_dir / "run.json")
    except Exception:  # the failure being recorded may be the disk itself
        log.warning("could not record failure in %s", run_dir)


def reexport(args) -> Path:
    """``dreamnfsd-export``: rebuild the scene from a checkpoint and export into ``<run>/exports/<time>/``."""
    from datetime import datetime

    from omegaconf import OmegaConf

    from dreamnfsd.config import RunConfig
    from dreamnfsd.train.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of
    from dreamnfsd.train.scene import build_scene

    ckpt = resolve_checkpoint(args.run)
    state = load_checkpoint(ckpt)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), state["config"]))
    for key, value in (("mesh_resolution", args.mesh_resolution), ("threshold", args.threshold),
                       ("video_resolution", args.video_resolution), ("video_frames", args.video_frames)):
        if value is not None:
            setattr(cfg.export, key, value)
    cfg.export.mesh, cfg.export.video = not args.no_mesh, not args.no_video
    device = pick_device(args.device)
    torch.manual_seed(cfg.seed)
    scene = build_scene(cfg, device)
    scene.load_state_dict(state["scene"])
    out_dir = run_dir_of(ckpt) / "exports" / f"step{state['step']:06d}-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=False)
    export_outputs(scene, cfg, out_dir)
    return out_dir
