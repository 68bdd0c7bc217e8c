"""The run schema's Hydra registration and its checks, every one before anything is written.

Hydra composes ``configs/`` on top of :class:`~dreamnfsd.train.config.RunConfig`, so an unknown key or a value of the
wrong type fails at composition. :func:`validate` then checks every value against this module's tables: a range for
each number (:data:`RANGES`), the allowed words for each choice (:data:`CHOICES`), then the ordered pairs and the
settings that depend on each other. :func:`check_memory` refuses sizes this machine cannot hold. Each failure is a
one-line :class:`~dreamnfsd.utils.errors.UserError` naming the field, what it must be and a value that works.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path

from dreamnfsd.guidance.core import ANNEAL_SCHEDULES, GUIDANCE_KINDS, WEIGHTINGS
from dreamnfsd.guidance.priors import PRIOR_KINDS
from dreamnfsd.models.field import FIELD_KINDS
from dreamnfsd.train.config import RunConfig
from dreamnfsd.train.metrics_log import LOGGERS
from dreamnfsd.train.shading import LIGHTS
from dreamnfsd.utils.errors import UserError


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def slugify(prompt: str, max_len: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "untitled"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def check_pair(value, key: str, example: str) -> tuple[float, float]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    _require(ok, key, f"must be two numbers [low, high], got {value!r} (e.g. {key}={example})")
    return float(value[0]), float(value[1])


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


@dataclass(frozen=True)
class Range:
    """Allowed numbers: ``lo <= x <= hi`` (``<`` where open); ``meaning`` goes into the message."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    meaning: str = ""

    def contains(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return math.isfinite(x) and above and below

    def __str__(self) -> str:
        show = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"
        return f"{'(' if self.lo_open else '['}{show(self.lo)}, {show(self.hi)}{')' if self.hi_open else ']'}"


BIG = 1e9  # "no sensible upper bound" for counts and periods
SHARE = Range(0, 1, meaning="a share")
POSITIVE_RATE = Range(0, 10, lo_open=True)
WEIGHT = Range(0, 1e6, meaning="a loss weight; 0 turns it off")
# Every number of RunConfig (tests/test_bad_input.py checks that none is missing). Optional ones may be null.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**31 - 1),
    "guidance.guidance_scale": Range(0, 1000, lo_open=True, meaning="NFSD uses about 7.5, SDS about 100"),
    "guidance.t_anneal_end": SHARE,
    "guidance.grad_clip": Range(0, BIG, lo_open=True),
    "guidance.nfsd_t_threshold": Range(0, 1000, meaning="a diffusion timestep"),
    "field.encoding.n_levels": Range(1, 32),
    "field.encoding.n_features_per_level": Range(1, 8),
    "field.encoding.log2_hashmap_size": Range(4, 26),
    "field.encoding.base_resolution": Range(1, 4096),
    "field.encoding.per_level_scale": Range(1, 4),
    "field.encoding.init_scale": Range(0, 1, lo_open=True),
    "field.encoding.cpu_tasks": Range(0, 4096, meaning="0 encodes the levels at once on every core, 1 in turn"),
    "field.hidden_dim": Range(1, 1024),
    "field.n_hidden_layers": Range(0, 16),
    "field.bound": Range(0, 100, lo_open=True, meaning="the scene box half-size"),
    "field.blob_density": Range(0, 100),
    "field.blob_radius": Range(0, 100, lo_open=True),
    "field.fd_eps": Range(0, 0.5, lo_open=True, meaning="a finite-difference step in world units"),
    "field.sdf.init_radius": Range(0, 100, lo_open=True),
    "field.sdf.sharpness_start": Range(0, 1e5, lo_open=True),
    "field.sdf.sharpness_end": Range(0, 1e5, lo_open=True),
    "field.sdf.sharpness_ramp": SHARE,
    "field.sdf.curvature_huber": Range(0, 1e4, meaning="a Laplacian magnitude, 1 / the smallest radius smoothed"),
    "grid.resolution": Range(8, 1024, meaning="cells per axis"),
    "grid.update_every": Range(1, BIG),
    "grid.warmup_steps": Range(0, BIG),
    "grid.ema_decay": SHARE,
    "grid.threshold": Range(0, BIG),
    "grid.update_fraction": Range(0, 1, lo_open=True),
    "grid.chunk": Range(1, 2**27),
    "renderer.num_steps": Range(1, 8192, meaning="samples along the box diagonal"),
    "renderer.step_size": Range(0, 100, lo_open=True),
    "renderer.chunk_rays": Range(1, 2**24),
    "renderer.early_stop_eps": Range(0, 1, hi_open=True),
    "renderer.early_stop_block": Range(1, 8192),
    "renderer.normal_weight_eps": Range(0, 1, hi_open=True),
    "renderer.near": Range(0, 100),
    "background.n_frequencies": Range(0, 16),
    "background.hidden_dim": Range(1, 1024),
    "background.n_hidden_layers": Range(0, 16),
    "camera.height": Range(1, 8192, meaning="pixels"),
    "camera.width": Range(1, 8192, meaning="pixels"),
    "camera.pixel_jitter": Range(0, 1, meaning="a fraction of a pixel; 0 turns it off"),
    "camera.center_perturb": Range(0, 10),
    "camera.target_perturb": Range(0, 10),
    "camera.up_perturb": Range(0, 10),
    "train.steps": Range(1, BIG),
    "train.batch_size": Range(1, 4096, meaning="views per step"),
    "train.lr_encoding": POSITIVE_RATE,
    "train.lr_mlp": POSITIVE_RATE,
    "train.lr_background": POSITIVE_RATE,
    "train.adam_eps": Range(0, 1, lo_open=True),
    "train.shading_warmup_steps": Range(0, BIG),
    "train.albedo_ratio": SHARE,
    "train.textureless_ratio": SHARE,
    "train.ambient": SHARE,
    "train.light_jitter": Range(0, 10),
    "train.background_jitter": Range(0, 1, meaning="0 turns it off"),
    "train.lambda_entropy": WEIGHT,
    "train.lambda_sparsity": WEIGHT,
    "train.lambda_orientation": WEIGHT,
    "train.lambda_distortion": WEIGHT,
    "train.lambda_normal_tv": WEIGHT,
    "train.normal_tv_radius": Range(0, 0.5, lo_open=True, meaning="a distance in world units"),
    "train.normal_tv_points": Range(1, 1_000_000),
    "train.lambda_eikonal": WEIGHT,
    "train.lambda_curvature": WEIGHT,
    "train.lambda_curvature_final": WEIGHT,
    "train.coarse_share": Range(0, 1, hi_open=True, meaning="a share of train.steps; 0 starts the SDF as a sphere"),
    "train.coarse_resolution": Range(16, 256, meaning="lattice points per axis"),
    "train.coarse_fit_iters": Range(1, 100_000),
    "train.lr_final_share": Range(0, 1, lo_open=True, meaning="1 keeps the learning rates constant"),
    "train.ema_decay": Range(0, 1, hi_open=True, meaning="0 exports the last step's field"),
    "train.log_every": Range(1, BIG, meaning="steps between metrics records"),
    "train.val_every": Range(0, BIG, meaning="0 disables validation images"),
    "train.val_views": Range(1, 1000),
    "train.ckpt_every": Range(0, BIG, meaning="0 disables periodic checkpoints"),
    "train.max_consecutive_skips": Range(1, BIG, meaning="NaN/inf steps in a row before train.on_nan acts"),
    "train.rollback_lr_factor": Range(
        0, 1, lo_open=True, meaning="learning rates are multiplied by it on each rollback"
    ),
    "train.num_threads": Range(0, 4096, meaning="0 keeps torch's default"),
    "prior.num_threads": Range(0, 4096, meaning="0 uses every thread torch starts with"),
    "prior.batch_parts": Range(0, 4096, meaning="0 splits the prior's batch over its threads, 1 never"),
    "export.mesh_resolution": Range(8, 4096, meaning="marching-cubes lattice points per axis"),
    "export.min_component_fraction": SHARE,
    "export.max_faces": Range(0, BIG, meaning="0 keeps every face"),
    "export.texture_size": Range(16, 16384, meaning="texels per side"),
    "export.video_frames": Range(1, 100_000),
    "export.video_fps": Range(1, 240),
    "export.video_resolution": Range(8, 8192, meaning="pixels"),
    "export.video_elevation": Range(-90, 90, meaning="degrees"),
    "export.ambient": SHARE,
}
# Every word-valued setting and the words it takes (None: any text).
CHOICES: dict[str, tuple[str, ...] | None] = {
    "prompt": None,
    "output_root": None,
    "output_dir": None,
    "resume": None,
    "logger": LOGGERS,
    "device": None,  # auto | cpu | mps | cuda | cuda:N, checked by pattern
    "prior.kind": PRIOR_KINDS,
    "prior.model": None,
    "prior.dtype": ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16"),
    "guidance.kind": GUIDANCE_KINDS,
    "guidance.t_anneal_schedule": ANNEAL_SCHEDULES,
    "guidance.weighting": WEIGHTINGS,
    "guidance.negative_prompt": None,
    "field.kind": FIELD_KINDS,
    "field.encoding.backend": ("auto", "torch", "tcnn"),
    "field.density_activation": ("trunc_exp", "softplus"),
    "field.normal_mode": ("finite_difference", "autograd"),
    "renderer.backend": ("auto", "torch", "nerfacc"),
    "renderer.normal_mode": ("finite_difference", "autograd"),
    "background.kind": ("mlp", "constant"),
    "train.on_nan": ("rollback", "abort"),
    "train.light": LIGHTS,
    "export.threshold": None,  # "auto" or a number, checked below
}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def default_of(key: str):
    """The schema's default for a dotted key (the example in messages: a value that works)."""
    node = RunConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _value(cfg: RunConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_ranges(cfg: RunConfig, prefix: str = "") -> None:
    """Every number in its :data:`RANGES` entry; every word among its :data:`CHOICES` (only the keys that start
    with ``prefix``)."""
    for key, allowed in RANGES.items():
        if not key.startswith(prefix):
            continue
        value = _value(cfg, key)
        if value is None and default_of(key) is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and allowed.contains(float(value))):
            meaning = f" ({allowed.meaning})" if allowed.meaning else ""
            raise UserError(f"{key}: must be in {allowed}{meaning}, got {value!r}; e.g. {key}={default_of(key)}")
    for key, words in CHOICES.items():
        if not key.startswith(prefix):
            continue
        value = _value(cfg, key)
        if words is not None and value not in words and not (value is None and default_of(key) is None):
            raise UserError(f"{key}: {value!r} is not one of {', '.join(words)}; e.g. {key}={default_of(key)}")


def validate(cfg: RunConfig) -> None:
    """Every check that needs no machine state (see :func:`check_memory` for that). Raises :class:`UserError`."""
    _require(
        isinstance(cfg.prompt, str) and cfg.prompt.strip() != "" and cfg.prompt != "???",
        "prompt",
        'is empty; pass one, e.g. prompt="a red cube"',
    )
    _require(
        isinstance(cfg.device, str) and bool(_DEVICE.match(cfg.device)),
        "device",
        f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}",
    )
    check_ranges(cfg)
    _require(
        cfg.logger != "tensorboard" or importlib.util.find_spec("tensorboard") is not None,
        "logger",
        "tensorboard needs the tensorboard package: pip install tensorboard (or use logger=jsonl)",
    )
    _require(cfg.grid.resolution % 2 == 0, "grid.resolution", f"must be even, got {cfg.grid.resolution}; e.g. 64")
    _require(
        cfg.field.sdf.init_radius < cfg.field.bound,
        "field.sdf.init_radius",
        f"must be inside the scene box (field.bound={cfg.field.bound}), got {cfg.field.sdf.init_radius}; e.g. 0.5",
    )
    _require(
        not (cfg.field.sdf.curvature_l1 and cfg.field.sdf.curvature_huber > 0),
        "field.sdf.curvature_huber",
        "and field.sdf.curvature_l1 are two forms of one term; set one, e.g. field.sdf.curvature_huber=0",
    )
    check_t_range(cfg.guidance.t_range)
    pairs = {}
    for key in ("camera.elevation_range", "camera.azimuth_range", "camera.distance_range", "camera.fov_range"):
        a, b = pairs[key] = check_pair(_value(cfg, key), key, PAIR_EXAMPLES[key])
        _require(a <= b, key, f"must be [low, high] with low <= high, got [{a}, {b}]")
    a, b = pairs["camera.elevation_range"]
    _require(a >= -90 and b <= 90, "camera.elevation_range", f"must lie in [-90, 90] degrees, got [{a}, {b}]")
    a, b = pairs["camera.distance_range"]
    _require(
        cfg.field.bound * math.sqrt(3.0) < a and b < 1000,
        "camera.distance_range",
        f"must keep the cameras outside the scene box and under 1000, got [{a}, {b}]; e.g. [3,3]",
    )
    a, b = pairs["camera.fov_range"]
    _require(a > 0 and b < 180, "camera.fov_range", f"must lie inside (0, 180) degrees, got [{a}, {b}]")
    a, b = check_pair(
        cfg.train.light_distance_range, "train.light_distance_range", PAIR_EXAMPLES["train.light_distance_range"]
    )
    _require(0 < a <= b < 1000, "train.light_distance_range", f"must be 0 < low <= high, got [{a}, {b}]")
    _require(
        cfg.train.albedo_ratio + cfg.train.textureless_ratio <= 1,
        "train.textureless_ratio",
        "plus train.albedo_ratio must not exceed 1 (the rest is Lambertian shading)",
    )
    jitter = cfg.train.background_jitter
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


# --- memory -------------------------------------------------------------------------------------------------------
GIB = 1 << 30


def available_memory(device) -> int:
    """Bytes free for a run on ``device``: the GPU's free memory, or the host's available memory."""
    import torch

    if getattr(device, "type", device) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _training_bytes(cfg: RunConfig) -> int:
    """A rough upper estimate of one training step's memory: the rays' candidate samples while marching, and the
    autograd activations of the field evaluations (a share of the candidates survive the grid and early stopping;
    each keeps its encoding's corner indices and features and the MLP's activations for the backward pass)."""
    rays = cfg.train.batch_size * cfg.camera.height * cfg.camera.width
    candidates = cfg.renderer.num_steps + 1
    enc = cfg.field.encoding
    evals = 5 if cfg.field.kind == "sdf" else 7  # SDF: centre + tetrahedron; density: one + six for normals
    per_eval = enc.n_levels * (8 * 8 + 8 * 4 * enc.n_features_per_level) + 3 * 4 * cfg.field.hidden_dim * (
        cfg.field.n_hidden_layers + 1
    )
    kept = min(candidates, 64)
    return rays * candidates * 40 + rays * kept * evals * per_eval


def memory_needs(cfg: RunConfig) -> list[tuple[tuple[str, ...], str, int]]:
    """(the settings that set it, what it is, bytes) for each big allocation of a run."""
    from dreamnfsd.export.mesh import lattice_bytes
    from dreamnfsd.rendering.occupancy_grid import grid_bytes

    ec = cfg.export
    return [
        (("grid.resolution",), "the occupancy grid", grid_bytes(cfg.grid.resolution)),
        (
            ("camera.height", "camera.width", "train.batch_size", "renderer.num_steps"),
            "one training step",
            _training_bytes(cfg),
        ),
        (
            ("export.mesh_resolution",),
            "the marching-cubes lattice",
            lattice_bytes(ec.mesh_resolution) if ec.mesh else 0,
        ),
        (("export.texture_size",), "the texture bake", 64 * ec.texture_size**2 if ec.mesh else 0),
        (
            ("export.video_resolution", "export.video_frames"),
            "the turntable frames",
            ec.video_frames * ec.video_resolution**2 * 3 * 4 * 6 if ec.video else 0,
        ),
    ]


def _largest_fitting(cfg: RunConfig, key: str, what: str, budget: int) -> int:
    """The largest integer value of ``key`` (others fixed) whose ``what`` fits in ``budget`` bytes."""
    import copy

    lo, hi = 1, int(_value(cfg, key))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = copy.deepcopy(cfg)
        section, _, name = key.rpartition(".")
        setattr(_value(trial, section) if section else trial, name, mid)
        need = next(b for _, w, b in memory_needs(trial) if w == what)
        lo, hi = (mid, hi) if need <= budget else (lo, mid - 1)
    return lo


def check_memory(cfg: RunConfig, device, available: int | None = None) -> None:
    """Refuse sizes this machine cannot hold, naming the setting and the largest value that would fit. A run's
    parts do not all live at once, so each is held to the memory free now."""
    budget = available_memory(device) if available is None else available
    for keys, what, need in memory_needs(cfg):
        if need <= budget:
            continue
        # Name the setting that, at its default, would shrink it most: the one furthest above its default.
        key = max(keys, key=lambda k: float(_value(cfg, k)) / max(float(default_of(k)), 1.0))
        fits = _largest_fitting(cfg, key, what, budget)
        raise UserError(
            f"{key}: {_value(cfg, key)} needs about {need / GIB:.1f} GiB for {what}, more than the "
            f"{budget / GIB:.1f} GiB free on this machine; the largest that fits is about {fits} "
            f"(e.g. {key}={min(fits, default_of(key))})"
        )
