"""Typed configuration of the training loop, and of a whole run (:class:`RunConfig`, the schema Hydra composes)."""

from __future__ import annotations

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


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 1  # views rendered per step
    lr_encoding: float = 1e-2
    lr_mlp: float = 1e-3
    lr_background: float = 1e-3
    adam_eps: float = 1e-15  # hash tables get sparse updates; a tiny eps keeps their effective step size sane
    # DreamFusion shading: albedo only for the warm-up, then a random mix with a point light near the camera.
    shading_warmup_steps: int = 500
    albedo_ratio: float = 0.2
    textureless_ratio: float = 0.3
    ambient: float = 0.1
    # point: DreamFusion's point light near the camera (at light_distance_range times the camera's distance);
    # directional: a light far along the jittered camera direction, so every point is lit from one direction, as in
    # the built-in prior's training images (a point light a few units away shades a flat face with a gradient).
    light: str = "point"
    light_distance_range: tuple[float, float] = (0.8, 1.5)  # as a multiple of the camera distance
    light_jitter: float = 0.3  # the light's offset from the camera direction, in camera distances (std per axis)
    # Each training view's background is the background colour times a random grey in [1 - jitter, 1]: a surface
    # coloured like the background (a membrane across a hole) then shows, so the prior can object to it.
    background_jitter: float = 0.0
    # Regulariser weights.
    lambda_entropy: float = 1e-3
    lambda_sparsity: float = 0.0
    lambda_orientation: float = 1e-2
    # Mip-NeRF 360's distortion loss (mean over rays, world units): thins the soft shell that makes silhouettes
    # seen past an edge-on face a pixel too large.
    lambda_distortion: float = 0.0
    # SDF fields only (field.kind=sdf): the Eikonal term (|grad f| - 1)^2 keeps f a distance, the curvature term
    # (laplacian f)^2 smooths the surface; both are means over the rendered samples.
    lambda_eikonal: float = 0.1
    lambda_curvature: float = 0.0
    # When set, the curvature weight moves geometrically from lambda_curvature to this over training.
    lambda_curvature_final: float | None = None
    # SDF fields only: the normals' total variation at normal_tv_radius (world units), mean |n(x) - n(x + r u)| over
    # normal_tv_points points where the step's rays meet the surface. It charges a wavy face all along and an edge
    # for its length and angle, not its sharpness, as the curvature term does (docs/benchmarks/quality_normal_tv).
    lambda_normal_tv: float = 0.0
    normal_tv_radius: float = 0.05
    normal_tv_points: int = 1024
    # SDF fields only (a density field ignores it): the first coarse_share of the steps train a density field, then
    # the SDF starts from its surface (fitted on a coarse_resolution^3 lattice in coarse_fit_iters Adam steps)
    # instead of a sphere, which cannot open a hole.
    coarse_share: float = 0.0
    coarse_resolution: int = 64
    coarse_fit_iters: int = 300
    # Fit the SDF's albedo to the density field's median surface colour too (else it restarts from grey, and the
    # guidance's first pushes towards the colour also move the surface, which shares the network).
    coarse_fit_albedo: bool = False
    # The SDF's sharpness ramp starts again at the hand-over (true) or follows the whole run (false).
    coarse_restart_sharpness: bool = True
    # The learning rates fall geometrically to this share of their value over the final field's stage (the whole
    # run, or the SDF stage after a coarse one). At a constant rate, SDS's noisy steps leave the surface wherever
    # the last few pushed it; a falling rate lets it settle. 1 keeps them constant.
    lr_final_share: float = 1.0
    # An exponential moving average of the final field's parameters, loaded into the field at the last step (so
    # the export and the final checkpoint have it); 0 keeps the last step's field. Guidance noise moves the surface
    # from step to step, so the last iterate lands anywhere in that wobble; the average sits near its middle.
    ema_decay: float = 0.0
    # Bookkeeping.
    log_every: int = 10
    val_every: int = 200
    val_views: int = 4
    ckpt_every: int = 200
    # NaN/inf guard: skip bad steps; after this many in a row, roll back (lower lr) or abort.
    max_consecutive_skips: int = 10
    on_nan: str = "rollback"  # rollback | abort
    rollback_lr_factor: float = 0.5
    num_threads: int = 0  # 0: leave torch's default
    mixed_precision: bool = True  # fp16 autocast for the field on CUDA (the prior's weights are fp16 there anyway)


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
