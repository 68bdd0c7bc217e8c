"""The whole run's typed configuration, its Hydra registration and semantic checks.

Hydra composes ``configs/`` on top of :class:`RunConfig`, so an unknown key or a value of the wrong type fails at
composition. :func:`validate` then checks meaning (positive sizes, ordered ranges) and raises a one-line
:class:`~dreamnfsd.utils.errors.UserError` naming the field and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from dataclasses import field as _default

from dreamnfsd.cameras import CameraSamplerConfig
from dreamnfsd.export.config import ExportConfig
from dreamnfsd.guidance.core import GuidanceConfig
from dreamnfsd.guidance.priors import PriorConfig
from dreamnfsd.models.background import BackgroundConfig
from dreamnfsd.models.field import FieldConfig
from dreamnfsd.rendering.occupancy_grid import OccupancyGridConfig
from dreamnfsd.rendering.renderer import RendererConfig
from dreamnfsd.train.config import TrainConfig
from dreamnfsd.utils.errors import UserError


@dataclass
class RunConfig:
    prompt: str = "???"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_root: str = "outputs"
    output_dir: str | None = None  # default: <output_root>/<prompt-slug>/<timestamp>
    resume: str | None = None  # a run folder or a checkpoint file
    prior: PriorConfig = _default(default_factory=PriorConfig)
    guidance: GuidanceConfig = _default(default_factory=GuidanceConfig)
    field: FieldConfig = _default(default_factory=FieldConfig)
    grid: OccupancyGridConfig = _default(default_factory=OccupancyGridConfig)
    renderer: RendererConfig = _default(default_factory=RendererConfig)
    background: BackgroundConfig = _default(default_factory=BackgroundConfig)
    camera: CameraSamplerConfig = _default(default_factory=CameraSamplerConfig)
    train: TrainConfig = _default(default_factory=TrainConfig)
    export: ExportConfig = _default(default_factory=ExportConfig)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def slugify(prompt: str, max_len: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "untitled"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def _positive(value, key: str) -> None:
    _require(isinstance(value, int | float) and value > 0 and math.isfinite(value), key,
             f"must be a positive number, got {value!r} (e.g. {key}=64)")


def validate(cfg: RunConfig) -> None:
    """Semantic checks that the schema cannot express. Raises :class:`UserError`."""
    _require(isinstance(cfg.prompt, str) and cfg.prompt.strip() != "" and cfg.prompt != "???", "prompt",
             'is empty; pass one, e.g. prompt="a red cube"')
    for key in ("camera.height", "camera.width", "train.steps", "train.batch_size", "export.mesh_resolution",
                "export.video_frames", "export.video_resolution", "export.video_fps", "grid.resolution",
                "train.lr_encoding", "train.lr_mlp", "train.lr_background"):
        section, name = key.split(".")
        _positive(getattr(getattr(cfg, section), name), key)
    lo, hi = cfg.guidance.t_range
    _require(0.0 < lo < hi < 1.0, "guidance.t_range",
             f"must satisfy 0 < t_min < t_max < 1, got [{lo}, {hi}] (e.g. guidance.t_range=[0.02,0.98])")
    scale = cfg.guidance.guidance_scale
    _require(scale is None or scale > 0, "guidance.guidance_scale",
             f"must be > 0, got {scale} (NFSD uses about 7.5, SDS about 100)")
    _require(cfg.train.on_nan in ("rollback", "abort"), "train.on_nan",
             f"must be rollback or abort, got {cfg.train.on_nan!r}")
    for key in ("camera.elevation_range", "camera.distance_range", "camera.fov_range"):
        a, b = getattr(cfg.camera, key.split(".")[1])
        _require(a <= b, key, f"must be [low, high] with low <= high, got [{a}, {b}]")
    if cfg.export.threshold != "auto":
        try:
            float(cfg.export.threshold)
        except ValueError:
            raise UserError(f"export.threshold: must be a number or 'auto', got {cfg.export.threshold!r}") from None
