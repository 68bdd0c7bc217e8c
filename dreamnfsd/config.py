"""The whole run's typed configuration, its Hydra registration and semantic checks.

Hydra composes ``configs/`` on top of :class:`RunConfig`, so an unknown key or a value of the wrong type fails at
composition. :func:`validate` then checks meaning (positive sizes, ordered ranges) and raises a one-line
:class:`~dreamnfsd.utils.errors.UserError` naming the field and the fix.
"""

from __future__ import annotations

import importlib.util
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
    logger: str = "jsonl"  # jsonl (metrics.jsonl in the run folder) | tensorboard (that too, and TensorBoard events)
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


def _positive(value, key: str, example: object = 64) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    _require(ok, key, f"must be a positive number, got {value!r} (e.g. {key}={example})")


def _at_least(value, low: int, key: str, meaning: str) -> None:
    _require(isinstance(value, int) and value >= low, key, f"must be an integer >= {low} ({meaning}), got {value!r}")


def check_pair(value, key: str, example: str) -> tuple[float, float]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    _require(ok, key, f"must be two numbers [low, high], got {value!r} (e.g. {key}={example})")
    return float(value[0]), float(value[1])


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# Positive sizes and rates, with an example value for the message.
_POSITIVE = {
    "camera.height": 64,
    "camera.width": 64,
    "train.steps": 5000,
    "train.batch_size": 1,
    "grid.resolution": 64,
    "export.mesh_resolution": 128,
    "export.video_frames": 60,
    "export.video_resolution": 128,
    "export.video_fps": 24,
    "train.lr_encoding": 0.01,
    "train.lr_mlp": 0.001,
    "train.lr_background": 0.001,
    "train.adam_eps": 1e-15,
}
# Periods where 0 means "never".
_PERIODS = {
    "train.val_every": "0 disables validation images",
    "train.ckpt_every": "0 disables periodic checkpoints",
    "train.num_threads": "0 keeps torch's default",
}


# Tuple-typed fields and an example value for each, used in their error messages.
PAIR_EXAMPLES = {
    "guidance.t_range": "[0.02,0.98]",
    "camera.elevation_range": "[-10,45]",
    "camera.azimuth_range": "[-180,180]",
    "camera.distance_range": "[3,3]",
    "camera.fov_range": "[40,40]",
    "train.light_distance_range": "[0.8,1.5]",
}


def check_t_range(value) -> tuple[float, float]:
    """``guidance.t_range`` as (low, high) with 0 < low < high < 1, or :class:`UserError`."""
    lo, hi = check_pair(value, "guidance.t_range", PAIR_EXAMPLES["guidance.t_range"])
    _require(
        0.0 < lo < hi < 1.0,
        "guidance.t_range",
        f"must satisfy 0 < t_min < t_max < 1, got [{lo}, {hi}] (e.g. guidance.t_range=[0.02,0.98])",
    )
    return lo, hi


def validate(cfg: RunConfig) -> None:
    """Semantic checks that the schema cannot express. Raises :class:`UserError`."""
    _require(
        isinstance(cfg.prompt, str) and cfg.prompt.strip() != "" and cfg.prompt != "???",
        "prompt",
        'is empty; pass one, e.g. prompt="a red cube"',
    )
    _require(cfg.logger in ("jsonl", "tensorboard"), "logger", f"must be jsonl or tensorboard, got {cfg.logger!r}")
    _require(
        cfg.logger != "tensorboard" or importlib.util.find_spec("tensorboard") is not None,
        "logger",
        "tensorboard needs the tensorboard package: pip install tensorboard (or use logger=jsonl)",
    )
    _require(
        isinstance(cfg.device, str) and bool(_DEVICE.match(cfg.device)),
        "device",
        f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}",
    )
    for key, example in _POSITIVE.items():
        section, name = key.split(".")
        _positive(getattr(getattr(cfg, section), name), key, example)
    for key, meaning in _PERIODS.items():
        _at_least(getattr(cfg.train, key.split(".")[1]), 0, key, meaning)
    _at_least(cfg.train.log_every, 1, "train.log_every", "steps between progress-bar updates")
    _at_least(
        cfg.train.max_consecutive_skips,
        1,
        "train.max_consecutive_skips",
        "NaN/inf steps in a row before train.on_nan acts",
    )
    _require(
        cfg.train.on_nan in ("rollback", "abort"),
        "train.on_nan",
        f"must be rollback or abort, got {cfg.train.on_nan!r}",
    )
    factor = cfg.train.rollback_lr_factor
    _require(
        0 < factor <= 1,
        "train.rollback_lr_factor",
        f"must be in (0, 1] (learning rates are multiplied by it on each NaN rollback), got {factor}",
    )
    check_t_range(cfg.guidance.t_range)
    scale = cfg.guidance.guidance_scale
    _require(
        scale is None or (math.isfinite(scale) and scale > 0),
        "guidance.guidance_scale",
        f"must be > 0, got {scale} (NFSD uses about 7.5, SDS about 100)",
    )
    pairs = {}
    for key in ("camera.elevation_range", "camera.azimuth_range", "camera.distance_range", "camera.fov_range"):
        a, b = pairs[key] = check_pair(getattr(cfg.camera, key.split(".")[1]), key, PAIR_EXAMPLES[key])
        _require(a <= b, key, f"must be [low, high] with low <= high, got [{a}, {b}]")
    a, b = pairs["camera.distance_range"]
    _require(a > 0, "camera.distance_range", f"must be positive distances, got [{a}, {b}]")
    a, b = pairs["camera.fov_range"]
    _require(a > 0 and b < 180, "camera.fov_range", f"must lie inside (0, 180) degrees, got [{a}, {b}]")
    pj = cfg.camera.pixel_jitter
    _require(
        0 <= pj <= 1, "camera.pixel_jitter", f"must be in [0, 1] (a fraction of a pixel; 0 turns it off), got {pj}"
    )
    for key in ("train.albedo_ratio", "train.textureless_ratio"):
        value = getattr(cfg.train, key.split(".")[1])
        _require(0 <= value <= 1, key, f"must be a share in [0, 1], got {value}")
    jitter = cfg.train.background_jitter
    _require(0 <= jitter <= 1, "train.background_jitter", f"must be in [0, 1] (0 turns it off), got {jitter}")
    _require(
        jitter == 0 or cfg.background.kind == "constant",
        "train.background_jitter",
        f"needs background.kind=constant (got {cfg.background.kind}); set train.background_jitter=0",
    )
    if cfg.export.threshold != "auto":
        try:
            float(cfg.export.threshold)
        except ValueError:
            raise UserError(f"export.threshold: must be a number or 'auto', got {cfg.export.threshold!r}") from None
