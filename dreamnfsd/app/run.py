"""One run from start to finish: train (or resume), then export the mesh and turntable videos."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from dreamnfsd.train.coarse import checkpoint_field_kind, with_field_kind
from dreamnfsd.train.config import RunConfig
from dreamnfsd.train.scene import Scene, build_scene
from dreamnfsd.train.trainer import NonFiniteTrainingError, Trainer, render_views, steps_per_second
from dreamnfsd.utils.files import REEXPORT_HINT, atomic_write_bytes, run_lock

log = logging.getLogger(__name__)


SHEET_FRAMES = 6  # frames in turntable.png


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


def export_outputs(scene: Scene, cfg: RunConfig, out_dir: Path) -> dict:
    """Mesh (obj/ply/glb), the turntable videos and a still of them into ``out_dir``. Returns {name: path or
    message}."""
    from dreamnfsd.cameras import turntable_cameras
    from dreamnfsd.export.mesh import EmptySurfaceError, extract_mesh, level_rays
    from dreamnfsd.export.texture import TextureFitError, write_textured_meshes
    from dreamnfsd.export.video import (
        evenly_spaced,
        image_grid,
        normals_to_rgb,
        side_by_side,
        write_image,
        write_video,
    )

    ec = cfg.export
    outputs: dict[str, Any] = {}
    out_dir = Path(out_dir)
    device = next(scene.field.parameters()).device
    if ec.mesh:
        try:
            origins, dirs = level_rays(cfg.camera, cfg.export, device)
            mesh = extract_mesh(
                scene.field,
                ec.mesh_resolution,
                ec.threshold,
                ec.min_component_fraction,
                ec.max_faces,
                level_rays=(origins, dirs),
            )
            albedo_fn = lambda x: scene.field(x)["albedo"]
            paths = write_textured_meshes(mesh, albedo_fn, out_dir, ec.texture_size, device=device)
            outputs.update({name: str(path) for name, path in paths.items()})
            outputs["mesh_watertight"] = bool(mesh.is_watertight)
            outputs["mesh_volume"] = float(mesh.volume)
        except (EmptySurfaceError, TextureFitError) as e:  # the videos still show the object
            print(f"dreamnfsd: no mesh written: {e} ({REEXPORT_HINT})", file=sys.stderr)
            outputs["mesh_error"] = str(e)
    if ec.video:
        distance, fov = float(sum(cfg.camera.distance_range) / 2), float(sum(cfg.camera.fov_range) / 2)
        res = ec.video_resolution
        cams = turntable_cameras(ec.video_frames, ec.video_elevation, distance, fov, res, res, device)
        shaded = render_views(scene, cams, shading="lambertian", ambient=ec.ambient)
        albedo = render_views(scene, cams, shading="albedo")
        outputs["turntable"] = str(write_video(shaded["rgb"], out_dir / "turntable.mp4", ec.video_fps))
        normals = normals_to_rgb(shaded["normal"], shaded["opacity"])
        panels = side_by_side(shaded["rgb"], normals, shaded["opacity"])
        outputs["turntable_panels"] = str(
            write_video(panels, out_dir / "turntable_rgb_normal_opacity.mp4", ec.video_fps)
        )
        outputs["turntable_albedo"] = str(write_video(albedo["rgb"], out_dir / "turntable_albedo.mp4", ec.video_fps))
        # A still to glance at (and lossless: video compression smears the normals): 6 frames, shaded over normals.
        picks = evenly_spaced(len(cams), SHEET_FRAMES)
        sheet = image_grid(shaded["rgb"][picks], normals[picks])
        outputs["turntable_sheet"] = str(write_image(sheet, out_dir / "turntable.png"))
    return outputs


def _finished_export_step(run_dir: Path) -> int | None:
    try:
        status = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if "outputs_step" in status:
        return int(status["outputs_step"])
    if status.get("status") == "completed" and (
        (run_dir / "mesh.obj").exists() or (run_dir / "turntable.mp4").exists()
    ):
        return int(status.get("step", 0))  # written before outputs_step existed
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint ``resume=`` names, or None for a run folder killed before its first checkpoint."""
    from dreamnfsd.train.checkpoint import list_checkpoints, resolve_checkpoint

    path = Path(resume).expanduser()
    if path.is_dir() and not list_checkpoints(path):
        return None
    return resolve_checkpoint(resume)


def train_run(cfg: RunConfig, run_dir: Path, resolved_yaml: str) -> RunStatus:
    """Train and export one run on ``train.num_threads`` CPU threads, giving the count back afterwards: a sweep's
    basic launcher runs its jobs one after another in this process, and each must start from torch's default."""
    from dreamnfsd.utils.threads import torch_threads

    with torch_threads(cfg.train.num_threads):
        return _train_run(cfg, Path(run_dir), resolved_yaml)


def _train_run(cfg: RunConfig, run_dir: Path, resolved_yaml: str) -> RunStatus:
    from dreamnfsd.app.preflight import take_preloaded_prior
    from dreamnfsd.guidance.priors import load_prior
    from dreamnfsd.train.checkpoint import load_checkpoint
    from dreamnfsd.utils.errors import UserError

    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if not cfg.resume or not (run_dir / "config.yaml").exists():
        atomic_write_bytes(resolved_yaml.encode(), run_dir / "config.yaml")
    prior = take_preloaded_prior(cfg.prior, device)
    if prior is None:
        prior = load_prior(cfg.prior, device)
        prior.validate_prompt(cfg.prompt)
    trainer = Trainer(cfg, run_dir, device, prior)
    if cfg.resume:
        ckpt = _resume_checkpoint(cfg.resume, run_dir)
        if ckpt is None:
            print(f"dreamnfsd: {run_dir} has no checkpoint yet; starting it again from step 0", file=sys.stderr)
        else:
            try:
                trainer.load_state_dict(load_checkpoint(ckpt, map_location=device))
            except (RuntimeError, KeyError, ValueError, TypeError) as e:
                raise UserError(
                    f"resume: {ckpt} does not fit this run's config ({_first_line(e)}); resume with "
                    "the config it was trained with"
                ) from e
            print(f"dreamnfsd: resuming {run_dir} at step {trainer.step}", file=sys.stderr)
    # Locked only now: a resume refused above has touched nothing in the run folder.
    with run_lock(run_dir):
        # The log continues from the step training continues from: a run killed before its first checkpoint
        # restarts at 0 and must not keep the steps it logged (nor may a refused resume rewind a live run's log).
        trainer.metrics.rewind(trainer.step)
        return _train_and_export(cfg, run_dir, trainer)


def _train_and_export(cfg: RunConfig, run_dir: Path, trainer: Trainer) -> RunStatus:
    from dreamnfsd.train.checkpoint import list_checkpoints
    from dreamnfsd.train.signals import Interrupted, StopRequest, exit_code

    summary = {
        "prompt": cfg.prompt,
        "guidance": cfg.guidance.kind,
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "steps": cfg.train.steps,
    }
    # The step whose finished export lies in run_dir itself (kept when training further); None: nothing finished
    # there yet (a new run, or one killed during its export, which is then simply redone).
    outputs_step = _finished_export_step(run_dir)
    if outputs_step is not None:
        summary["outputs_step"] = outputs_step

    def record(status: str, **extra) -> None:
        summary.update(
            step=trainer.step,
            wall_time_s=round(trainer.wall_time, 2),
            steps_per_s=round(steps_per_second(trainer), 3),
            nan_skips=trainer.total_skips,
            rollbacks=trainer.rollbacks,
            **extra,
        )
        write_json({**summary, "status": status}, run_dir / "run.json")

    def interrupted(signal: str | None, message: str) -> RunStatus:
        """Records the stop, tells the user how to carry on (``message``), and the status to exit with."""
        record("interrupted", signal=signal)
        print(f"dreamnfsd: {message}", file=sys.stderr)
        return RunStatus("interrupted", exit_code(signal))

    write_json({**summary, "status": "running", "step": trainer.step}, run_dir / "run.json")
    with StopRequest() as stop:
        status = trainer.fit(stop)
    if status == "interrupted":
        return interrupted(
            stop.requested,
            f"{stop.requested} — stopped at step {trainer.step}; checkpoint saved. Resume with:\n"
            f"  dreamnfsd resume={run_dir}",
        )
    if not any(p.name == f"step_{trainer.step:06d}.pt" for p in list_checkpoints(run_dir)):
        trainer.save()  # the final state is always kept (re-export, training further), whatever ckpt_every says
    record("exporting")
    started = time.perf_counter()
    out_dir = run_dir
    if outputs_step is not None:
        # Trained further after it had finished once: its earlier outputs are kept, the new ones go beside them.
        out_dir = run_dir / "exports" / f"step{trainer.step:06d}-{time.strftime('%Y%m%d-%H%M%S')}"
        out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with StopRequest(immediate=True):
            outputs = export_outputs(trainer.scene, cfg, out_dir)
    except Interrupted as e:
        return interrupted(
            e.signal_name,
            f"{e.signal_name} during export; training is finished and saved. Export again with:\n"
            f"  dreamnfsd-export {run_dir}",
        )
    if out_dir == run_dir:
        summary["outputs_step"] = trainer.step
    record("completed", export_time_s=round(time.perf_counter() - started, 2), outputs=outputs)
    print(f"dreamnfsd: done in {trainer.wall_time:.0f}s of training. Outputs in {out_dir}:")
    for name in ("glb", "obj", "ply", "turntable", "turntable_panels", "turntable_albedo", "turntable_sheet"):
        if name in outputs:
            print(f"  {outputs[name]}")
    return RunStatus("completed", 0)


def _os_error_message(e: OSError) -> str:
    reason = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
    where = f" {e.filename}" if e.filename else ""
    return (
        f"output: could not write{where} ({reason}); free space or choose another output_root — "
        "earlier checkpoints are intact"
    )


def run_from_hydra(dcfg) -> RunStatus:
    """Hydra task body: check the config, run, and turn failures into a status (a sweep goes on past them); then,
    whatever the outcome, write the run's ``report.html`` and print its path last.

    Exit codes: 0 completed; 1 failed while running (disk full, NaN abort, a bug); 2 bad input; 130/143 stopped by
    SIGINT/SIGTERM with a checkpoint saved.
    """
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _run_and_record(dcfg, run_dir)
    finally:
        report_run(run_dir)


def report_run(run_dir: Path) -> None:
    """The run's ``report.html`` (any state: an interrupted or failed run's says so); a report that cannot be
    written only warns, since the run itself is recorded already."""
    try:
        from dreamnfsd.app.report import build_run_report, report_or_warn
    except ImportError as e:  # an install without the report's package: the run itself is whole
        log.warning("report.html not written (%s); reinstall dreamnfsd, then run dreamnfsd-report %s", e, run_dir)
        return
    if Path(run_dir).is_dir() and (report := report_or_warn(build_run_report, run_dir)) is not None:
        print(f"dreamnfsd: report: {report.path}", flush=True)


def _run_and_record(dcfg, run_dir: Path) -> RunStatus:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from dreamnfsd.app.compose import to_run_config
    from dreamnfsd.app.preflight import check_device
    from dreamnfsd.app.schema import validate
    from dreamnfsd.utils.errors import UserError
    from dreamnfsd.utils.files import OutputWriteError

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        cfg = to_run_config(dcfg)
        validate(cfg)
        check_device(cfg.device)
        status = train_run(cfg, run_dir, OmegaConf.to_yaml(dcfg, resolve=True))
        status.in_sweep = in_sweep
        return status
    except (OutputWriteError, NonFiniteTrainingError) as e:
        message, code = str(e), 1
    except UserError as e:
        message, code = str(e), 2
    except KeyboardInterrupt:  # Ctrl-C before training started (loading, building the scene): nothing to save
        print(
            f"dreamnfsd: interrupted before training started; start it again with dreamnfsd resume={run_dir}",
            file=sys.stderr,
        )
        _record_failure(dcfg, run_dir, "interrupted before training started", status="interrupted")
        return RunStatus("interrupted", 130, in_sweep)
    except OSError as e:  # a write outside the checkpoint code (validation image, mesh, video)
        if in_sweep is False and os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message, code = _os_error_message(e), 1
    except Exception:
        text = traceback.format_exc()
        _record_failure(dcfg, run_dir, text.strip().splitlines()[-1])  # so that its report says it failed
        if not in_sweep:
            raise
        # One broken job must not take the sweep down: keep its traceback beside its outputs.
        print(text, file=sys.stderr)
        return RunStatus("failed", 1, in_sweep)
    print(f"dreamnfsd: error: {message}", file=sys.stderr)
    _record_failure(dcfg, run_dir, message)
    return RunStatus("failed", code, in_sweep)


def _record_failure(dcfg, run_dir: Path, message: str, status: str = "failed") -> None:
    if not run_dir.exists():
        return
    row = {
        "prompt": str(dcfg.get("prompt", "")),
        "guidance": str(dcfg.guidance.kind),
        "seed": int(dcfg.seed),
        "steps": int(dcfg.train.steps),
        "run_dir": str(run_dir),
    }
    status_file = run_dir / "run.json"
    try:
        if status_file.is_file():  # keep what the run had recorded (its step, timings)
            row = {**json.loads(status_file.read_text()), **row}
    except (OSError, ValueError):
        pass
    try:
        write_json({**row, "status": status, "error": message}, status_file)
    except Exception:  # the failure being recorded may be the disk itself
        log.warning("could not record failure in %s", run_dir)


# The export settings dreamnfsd-export takes as flags: export.<field> is --<field, dashed>.
REEXPORT_FIELDS = ("mesh_resolution", "threshold", "video_resolution", "video_frames", "texture_size")


def reexport(args) -> Path:
    """``dreamnfsd-export``: rebuild the scene from a checkpoint and export into ``<run>/exports/<time>/``."""
    from datetime import datetime

    from omegaconf import OmegaConf

    from dreamnfsd.app.schema import check_ranges
    from dreamnfsd.train.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of

    ckpt = resolve_checkpoint(args.run)
    state = load_checkpoint(ckpt)
    saved = state["config"]
    renderer = saved.get("renderer", {})
    if "normals_mode" in renderer:  # checkpoints written before the setting was renamed
        renderer["normal_mode"] = renderer.pop("normals_mode")
    # to_object of a structured RunConfig builds a RunConfig instance (its stub says any container).
    cfg = cast(RunConfig, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), saved)))
    for key in REEXPORT_FIELDS:
        if (value := getattr(args, key)) is not None:
            setattr(cfg.export, key, value)
    # The flags above, as a run's overrides would be; the rest was checked when the run started (a run from an
    # older version may hold values today's ranges refuse, and the user cannot change them here).
    check_ranges(cfg, prefix="export.")
    cfg.export.mesh, cfg.export.video = not args.no_mesh, not args.no_video
    device = pick_device(args.device)
    torch.manual_seed(cfg.seed)
    # A checkpoint of the coarse stage holds a density field.
    scene = build_scene(with_field_kind(cfg, checkpoint_field_kind(state["scene"]["field"])), device)
    scene.load_state_dict(state["scene"])
    base = run_dir_of(ckpt) / "exports" / f"step{state['step']:06d}-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir, n = base, 1
    while out_dir.exists():  # two exports in the same second must not share a folder
        out_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    out_dir.mkdir(parents=True)
    export_outputs(scene, cfg, out_dir)
    return out_dir
