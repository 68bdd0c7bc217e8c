"""Training of the built-in prior (:mod:`dreamnfsd.guidance.priors.builtin`) on procedural primitive renders.

:func:`train` is a whole run: render (or load) the dataset, resume or start, step AdamW on a weighted epsilon MSE,
keep an EMA of the weights (diffusers' ``EMAModel``), checkpoint, and export the EMA model with its model card.
``scripts/train_builtin_prior.py`` is its command line.

Options changed between stages of a run (seed, learning rate, EMA decay, Min-SNR weighting, the x0 weight, the cube
weight, the object size) are recorded as [step, value] pairs, and the pose embedding with the step it was added at
(:class:`OptionHistory`), so the model card can give the commands that rebuild an export stage by stage.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel, compute_snr
from safetensors.torch import load_file, save_file
from torch import Tensor

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.data import SCALE_JITTER, SHAPES, make_cameras, make_dataset
from dreamnfsd.guidance.priors import calibration
from dreamnfsd.guidance.priors.builtin import (
    DEFAULT_DIR,
    MAX_LENGTH,
    POSE_HARMONICS,
    UNET_WEIGHTS,
    VOCABULARY,
    PriorComponents,
    build_builtin_pipeline_components,
    camera_mse,
    load_components,
    load_metadata,
    predict_noise,
    save_components,
    write_metadata,
)
from dreamnfsd.guidance.priors.pixel import SPEC_FILE
from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.files import atomic_output

log = logging.getLogger(__name__)

SCRIPT = "scripts/train_builtin_prior.py"  # what the model card's reproduce commands run
BLEND_SCRIPT = "scripts/blend_builtin_prior.py"


@dataclass
class PriorTrainConfig:
    """Settings of one training run (the script's options; see its ``--help`` for why each default)."""

    seed: int = 0
    steps: int = 100_000  # stop after this many total optimiser steps
    max_minutes: float = 130.0  # wall-clock budget, counted from the start of :func:`train`
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 300  # linear learning-rate warm-up steps (restarted by each ``init_from``)
    ema: float = 0.999  # EMA decay
    n_data: int = 50_000  # rendered training images
    min_snr_gamma: float = 5.0  # Min-SNR weight min(snr, gamma) / snr of the epsilon loss; 0 disables
    x0_weight_cap: float = 10.0  # also weight by clamp(1 / snr, 1, cap); 0 disables
    cube_weight: float = 2.0  # sampling weight of cube images (the only azimuth-dependent shape)
    pose_harmonics: int = POSE_HARMONICS  # azimuth harmonics of the UNet's pose embedding; 0: ray channels only
    pose_lr_mult: float = 3.0  # learning-rate multiplier of the pose embedding
    scale_jitter: float = SCALE_JITTER  # objects drawn at 1 +- this size
    edge_round: float = 0.0  # cube, cylinder and cone edges rounded by a radius uniform in [0, this]
    init_from: Path | None = None  # start from an exported prior folder's weights, with a fresh optimiser
    # The size calibration (dreamnfsd.guidance.priors.calibration): its term's weight (0: off), the shapes whose mean
    # size and height pulls it zeroes (space-separated; the rest are held at the teacher's predictions), the weight of
    # the per-image pulls in it, images per step, calibration images, their edge rounding and size spread.
    calib_weight: float = 0.0
    calib_shapes: str = " ".join(SHAPES)
    calib_pull_weight: float = 1.0
    calib_batch: int = 20
    calib_n: int = 1500
    calib_edge_round: float = 0.04
    calib_scale_spread: float = 0.06
    calib_offset: str = ""  # shapes whose surface-offset pulls are zeroed too (a torus's tube thickness)
    camera_drop: float = 0.1  # fraction of images trained without camera (the text-only input)
    caption_drop: float = 0.1  # fraction of images trained with the empty caption (classifier-free guidance)
    threads: int = 2
    work_dir: Path = Path("work_data")  # dataset cache, checkpoint and loss log
    out: Path = DEFAULT_DIR  # exported model folder
    resume: bool = False
    checkpoint_minutes: float = 5.0
    export_every: int = 500  # export the EMA model every N steps (0: only at the end)
    log_every: int = 25


# Options a stage may change, in the order the model card's commands give them. Records from before the full
# [step, value] history held one change per option (the step under this key) from the value after it.
LEGACY_CHANGES = {
    "min_snr_gamma": ("min_snr_from_step", 0),
    "cube_weight": ("cube_weight_from_step", 1),
    "x0_weight_cap": ("x0_weight_from_step", 0),
    "scale_jitter": ("scale_jitter_from_step", SCALE_JITTER),
}
CALIB_OPTIONS = ("weight", "shapes", "pull_weight", "batch", "n", "edge_round", "scale_spread", "offset")
CALIB_TARGET_OPTIONS = ("calib_shapes", "calib_n", "calib_edge_round", "calib_scale_spread", "calib_offset")
# Options added after the [step, value] history: records without them had the value here from step 0.
LATER_OPTIONS = {
    "edge_round": 0.0,
    "warmup": 300,
    "n_data": 50_000,
    **{f"calib_{k}": getattr(PriorTrainConfig, f"calib_{k}") for k in CALIB_OPTIONS},
}
STAGE_OPTIONS = ("seed", "lr", "ema", *LEGACY_CHANGES, *LATER_OPTIONS)


@dataclass
class OptionHistory:
    """How a run's options changed, as checkpoints and exports store it (same key names)."""

    option_values: dict[str, list[list]] = field(default_factory=dict)  # option: [step, value] pairs, one per change
    pose_from_step: int = 0  # the step the pose embedding was added at (0: from the start)
    init_steps: list[int] = field(default_factory=list)  # steps at which training restarted from an export
    # [step, start step, weight]: the export at step was blended back toward the step-``start`` export (:func:`blend`)
    blends: list[list] = field(default_factory=list)

    @property
    def warmup_from_step(self) -> int:
        """Each restart from an export has a fresh optimiser, so the learning-rate warm-up starts again there."""
        return self.init_steps[-1] if self.init_steps else 0


@dataclass
class TrainState:
    """Everything a checkpoint holds. ``ema_model`` is a second copy of the components that receives the EMA
    weights for exports and diagnostics; ``ema`` owns the averaged weights themselves."""

    model: PriorComponents
    ema_model: PriorComponents
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    history: OptionHistory
    step: int = 0
    loss_avg: float = math.nan
    calib_generator: torch.Generator | None = None  # draws the calibration images of each step


# --- parameters and state -------------------------------------------------------------------------------------------
def split_params(components: PriorComponents) -> tuple[list, list]:
    """(everything but the pose embedding, the pose embedding). Checkpoints from before the embedding hold only the
    first list, in this order."""
    named = list(components.unet.named_parameters())
    base = [p for n, p in named if not n.startswith("class_embedding.")]
    pose = [p for n, p in named if n.startswith("class_embedding.")]
    return base + list(components.text_encoder.parameters()), pose


def prior_parameters(components: PriorComponents) -> list:
    """Every trained parameter, pose embedding last: the order of the EMA's shadow weights."""
    base, pose = split_params(components)
    return base + pose


def make_ema(components: PriorComponents, decay: float, step: int = 0) -> EMAModel:
    """An EMA of ``components``' weights. Its warm-up decay (1 + k) / (10 + k) counts from ``step``."""
    ema = EMAModel(prior_parameters(components), decay=decay, foreach=True)
    ema.optimization_step = step
    return ema


def fresh_state(cfg: PriorTrainConfig, pose_group: bool = True) -> TrainState:
    """Newly initialised components (deterministic in ``cfg.seed``) and optimiser. ``pose_group=False`` leaves the
    pose embedding out of the optimiser, for a resume that loads an optimiser state saved without it."""
    model = build_builtin_pipeline_components(cfg.seed, cfg.pose_harmonics)
    ema_model = copy.deepcopy(model)
    for p in prior_parameters(ema_model):
        p.requires_grad_(False)
    base, pose = split_params(model)
    optimizer = torch.optim.AdamW(base, lr=cfg.lr, weight_decay=0.01)
    if pose and pose_group:
        optimizer.add_param_group({"params": pose, "lr_mult": cfg.pose_lr_mult})
    return TrainState(
        model=model,
        ema_model=ema_model,
        ema=make_ema(model, cfg.ema),
        optimizer=optimizer,
        generator=torch.Generator().manual_seed(cfg.seed),
        history=OptionHistory(option_values={o: [[0, getattr(cfg, o)]] for o in STAGE_OPTIONS}),
    )


def continued(pairs: list[list], step: int, value) -> list[list]:
    """A [step, value] history carried on at ``step`` with ``value``: a new pair only where the value changes."""
    return [*pairs, [step, value]] if pairs[-1][1] != value else [list(p) for p in pairs]


def recorded_values(record: dict, values: dict) -> dict[str, list[list]]:
    """The [step, value] history of each of :data:`STAGE_OPTIONS` in a checkpoint or an export's metadata
    ``record``, whose options had ``values`` at its step (a checkpoint's ``args``). Older records kept an EMA and a
    seed history, one change per other option (:data:`LEGACY_CHANGES`) and no learning rate (the default then); an
    option missing from ``values`` had not been added yet, so it kept its earlier value."""
    later = {option: [[0, value]] for option, value in LATER_OPTIONS.items()}  # unless the record has them
    if "option_values" in record:
        return later | {option: [list(p) for p in pairs] for option, pairs in record["option_values"].items()}
    history = {
        "seed": [list(p) for p in record.get("seed_history", [[0, values["seed"]]])],
        "lr": [[0, values.get("lr", PriorTrainConfig.lr)]],
        "ema": [list(p) for p in record.get("ema_history", [[0, values["ema"]]])],
    }
    for option, (key, earlier) in LEGACY_CHANGES.items():
        value, since = values.get(option), record.get(key, 0)
        history[option] = [[0, earlier]] if value is None else [[0, earlier], [since, value]] if since else [[0, value]]
    return history | later


def export_values(meta: dict) -> dict[str, list[list]]:
    """The option histories of an export's metadata (which names the EMA decay ``ema_decay``)."""
    return recorded_values(meta, {**meta, "ema": meta["ema_decay"]})


def continued_values(history: dict[str, list[list]], step: int, cfg: PriorTrainConfig) -> dict[str, list[list]]:
    """Every option's history carried on at ``step`` with its value in ``cfg``."""
    return {option: continued(history[option], step, getattr(cfg, option)) for option in STAGE_OPTIONS}


def value_at(pairs: list[list], step: int):
    """The value a [step, value] history held at ``step``."""
    return [value for since, value in pairs if since <= step][-1]


def init_steps(record: dict) -> list[int]:
    """The steps at which training restarted from an export's weights (``init_from_step``: one restart, older)."""
    if "init_steps" in record:
        return list(record["init_steps"])
    return [record["init_from_step"]] if record.get("init_from_step") else []


def init_from_export(cfg: PriorTrainConfig, state: TrainState) -> None:
    """Load the exported prior ``cfg.init_from`` into ``state`` and take over its option history and step; the
    optimiser and random streams stay fresh. Raises :class:`UserError` if its pose embedding differs."""
    assert cfg.init_from is not None  # callers only come here with an export to start from
    meta = load_metadata(cfg.init_from)
    if meta.get("pose_harmonics", 0) != cfg.pose_harmonics:
        raise UserError(
            f"--init-from: {cfg.init_from} has pose_harmonics={meta.get('pose_harmonics', 0)} — "
            f"pass --pose-harmonics {meta.get('pose_harmonics', 0)}"
        )
    src = load_components(cfg.init_from)
    for target in (state.model, state.ema_model):
        target.unet.load_state_dict(src.unet.state_dict())
        target.text_encoder.load_state_dict(src.text_encoder.state_dict())
    step = meta["train_steps"]
    history = OptionHistory(
        option_values=continued_values(export_values(meta), step, cfg),
        pose_from_step=meta.get("pose_from_step", 0),
        init_steps=[*init_steps(meta), step],
        blends=meta.get("blends", []),
    )
    # The export is an EMA already: the average continues at full decay instead of warming up from it again.
    state.ema = make_ema(state.model, cfg.ema, step)
    state.history, state.step = history, step
    log.info("initialised from %s (step %d); fresh optimiser", cfg.init_from, step)


def _load_unet(unet: torch.nn.Module, weights: dict, adding_pose: bool) -> None:
    missing, unexpected = unet.load_state_dict(weights, strict=not adding_pose)
    assert not unexpected and all(k.startswith("class_embedding.") for k in missing), (missing, unexpected)


def _load_ema(cfg: PriorTrainConfig, state: TrainState, ck: dict, adding_pose: bool) -> None:
    _, pose = split_params(state.model)
    if "ema" in ck:
        saved = dict(ck["ema"])
        # A newly added pose embedding's average starts from its (zero-output) initial weights.
        extra = [p.detach().clone() for p in pose] if adding_pose else []
        saved["shadow_params"] = [*saved["shadow_params"], *extra]
        state.ema.load_state_dict(saved)
    else:  # checkpoints from before EMAModel stored the averaged weights as module state dicts
        _load_unet(state.ema_model.unet, ck["ema_unet"], adding_pose)
        state.ema_model.text_encoder.load_state_dict(ck["ema_text_encoder"])
        state.ema = make_ema(state.ema_model, cfg.ema, ck["step"])
    state.ema.decay = cfg.ema  # the saved decay is the earlier stage's


def resumed_history(cfg: PriorTrainConfig, ck: dict, adding_pose: bool) -> OptionHistory:
    """The option history of checkpoint ``ck`` continued under ``cfg``: an option changed on the resume takes its new
    value at the checkpoint's step."""
    step = ck["step"]
    return OptionHistory(
        option_values=continued_values(recorded_values(ck, ck["args"]), step, cfg),
        pose_from_step=step if adding_pose else ck.get("pose_from_step", 0),
        init_steps=init_steps(ck),
        blends=ck.get("blends", []),
    )


def resume_state(cfg: PriorTrainConfig, ck: dict) -> TrainState:
    """The training state of checkpoint ``ck``. A checkpoint from before the pose embedding lacks exactly its
    weights: they keep their zero-output init and join the optimiser as a new group."""
    state = fresh_state(cfg, pose_group=False)
    _, pose = split_params(state.model)
    adding_pose = bool(pose) and not any(k.startswith("class_embedding.") for k in ck["unet"])
    _load_unet(state.model.unet, ck["unet"], adding_pose)
    state.model.text_encoder.load_state_dict(ck["text_encoder"])
    _load_ema(cfg, state, ck, adding_pose)
    group = {"params": pose, "lr_mult": cfg.pose_lr_mult}
    if adding_pose:
        state.optimizer.load_state_dict(ck["opt"])
        state.optimizer.add_param_group(group)
    else:
        if pose:
            state.optimizer.add_param_group(group)
        state.optimizer.load_state_dict(ck["opt"])
    state.generator.set_state(ck["generator"])
    if ck.get("calib_generator") is not None:
        state.calib_generator = torch.Generator()
        state.calib_generator.set_state(ck["calib_generator"])
    torch.set_rng_state(ck["torch_rng"])
    state.step, state.loss_avg = ck["step"], ck["loss_avg"]
    state.history = resumed_history(cfg, ck, adding_pose)
    log.info("resumed at step %d%s", state.step, " (pose embedding added)" if adding_pose else "")
    return state


def checkpoint_path(cfg: PriorTrainConfig) -> Path:
    return cfg.work_dir / f"prior_ckpt_seed{cfg.seed}.pt"


def config_record(cfg: PriorTrainConfig) -> dict:
    """``cfg`` as plain values, as checkpoints store it."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}


def save_checkpoint(cfg: PriorTrainConfig, state: TrainState) -> None:
    """Write the whole training state (weights, EMA, optimiser, random streams, option history) crash-safely."""
    ck = {
        "unet": state.model.unet.state_dict(),
        "text_encoder": state.model.text_encoder.state_dict(),
        "ema": state.ema.state_dict(),
        "opt": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "step": state.step,
        "loss_avg": state.loss_avg,
        "calib_generator": None if state.calib_generator is None else state.calib_generator.get_state(),
        "args": config_record(cfg),
        **dataclasses.asdict(state.history),
    }
    with atomic_output(checkpoint_path(cfg), "the previous checkpoint is intact") as tmp:
        torch.save(ck, tmp)


def load_or_start(cfg: PriorTrainConfig) -> TrainState:
    """Resume from the work folder's checkpoint (with ``cfg.resume``), else start fresh or from ``cfg.init_from``."""
    path = checkpoint_path(cfg)
    if cfg.resume and path.exists():
        log.info("resuming from %s", path)
        return resume_state(cfg, torch.load(path, weights_only=False))
    state = fresh_state(cfg)
    if cfg.init_from is not None:
        init_from_export(cfg, state)
    return state


# --- data and loss --------------------------------------------------------------------------------------------------
def dataset_cache_path(cfg: PriorTrainConfig) -> Path:
    jitter = "" if cfg.scale_jitter == SCALE_JITTER else f"_jitter{cfg.scale_jitter:g}"
    rounded = f"_round{cfg.edge_round:g}" if cfg.edge_round else ""
    return cfg.work_dir / f"prior_data_seed{cfg.seed}_n{cfg.n_data}{jitter}{rounded}.pt"


def load_data(cfg: PriorTrainConfig, tokenizer) -> dict:
    """The rendered dataset (cached in the work folder) with captions tokenised: ``input_ids`` (N, MAX_LENGTH),
    ``empty_ids`` (1, MAX_LENGTH) for the dropped caption."""
    cache = dataset_cache_path(cfg)
    if cache.exists():
        data = torch.load(cache)
    else:
        t0 = time.time()
        data = make_dataset(cfg.n_data, seed=cfg.seed + 1000, scale_jitter=cfg.scale_jitter, edge_round=cfg.edge_round)
        log.info("rendered %d images in %.0fs", cfg.n_data, time.time() - t0)
        with atomic_output(cache) as tmp:
            torch.save(data, tmp)
    data["input_ids"] = tokenizer(
        data["captions"], padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    data["empty_ids"] = tokenizer([""], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    return data


def calibration_key(cfg: PriorTrainConfig) -> dict:
    """What a stage's calibration images and targets depend on besides the teacher (its weights may change)."""
    return {"seed": cfg.seed, **{k: getattr(cfg, k) for k in CALIB_TARGET_OPTIONS}}


def check_calibration(cfg: PriorTrainConfig, resuming: bool) -> None:
    """Raise :class:`UserError` naming the option where the calibration options cannot run."""
    unknown = sorted(set(cfg.calib_shapes.split()) - set(SHAPES))
    if unknown or not cfg.calib_shapes.split():
        raise UserError(f"--calib-shapes: {cfg.calib_shapes!r} must name shapes of {' '.join(SHAPES)}")
    if set(cfg.calib_offset.split()) - set(cfg.calib_shapes.split()):
        raise UserError(
            f"--calib-offset: {cfg.calib_offset!r} must name shapes of --calib-shapes ({cfg.calib_shapes}), the "
            "shapes whose pulls are zeroed"
        )
    if cfg.calib_batch < len(SHAPES) or cfg.calib_n < len(SHAPES) * (cfg.calib_batch // len(SHAPES)):
        raise UserError(
            f"--calib-batch {cfg.calib_batch} / --calib-n {cfg.calib_n}: each step draws batch // {len(SHAPES)} "
            f"images of every shape from n // {len(SHAPES)}; e.g. --calib-batch 20 --calib-n 1500"
        )
    if cfg.calib_weight and cfg.init_from is None and not resuming:
        raise UserError(
            "--calib-weight: the calibration holds the starting prior's predictions in place; pass --init-from "
            "FOLDER (the export it starts from), or --resume a calibrated stage"
        )


def calibration_path(cfg: PriorTrainConfig) -> Path:
    return cfg.work_dir / f"prior_calib_seed{cfg.seed}.pt"


def load_calibration(cfg: PriorTrainConfig, state: TrainState, resuming: bool) -> dict | None:
    """The calibration images and anchored targets of a stage with ``cfg.calib_weight`` (None without). A stage
    that starts from ``cfg.init_from`` computes them from that export (the teacher) and keeps them in the work folder;
    a resumed stage loads them from there."""
    if not cfg.calib_weight:
        return None
    path = calibration_path(cfg)
    if resuming:
        saved = torch.load(path, weights_only=False) if path.exists() else None
        if saved is None or saved["key"] != calibration_key(cfg):
            raise UserError(
                f"--resume: {path} is missing or was made with another --seed or other calibration images or shapes "
                "(--calib-shapes, --calib-n, --calib-edge-round, --calib-scale-spread, --calib-offset); resume with "
                "the stage's, or start the stage again with --init-from"
            )
        return saved["cal"]
    assert cfg.init_from is not None  # check_calibration
    t0 = time.time()
    cal = calibration.calibration_set(
        cfg.calib_n, cfg.seed + 5000, cfg.calib_edge_round, cfg.calib_scale_spread, tuple(cfg.calib_offset.split())
    )
    teacher = load_components(cfg.init_from)
    cal.update(calibration.anchored_targets(teacher, cal, cfg.seed + 7000, tuple(cfg.calib_shapes.split())))
    log.info("calibration targets of %d images from %s in %.0fs", cfg.calib_n, cfg.init_from, time.time() - t0)
    with atomic_output(path) as tmp:
        torch.save({"key": calibration_key(cfg), "cal": cal}, tmp)
    state.calib_generator = torch.Generator().manual_seed(cfg.seed + 6000)
    return cal


def sampling_weights(shape_idx: Tensor, cube_weight: float) -> Tensor:
    """Per-image sampling weights (N,) from shape indices (N,): cubes carry nearly all of the azimuth signal."""
    return 1.0 + (cube_weight - 1.0) * (shape_idx == SHAPES.index("cube")).float()


def make_batch(
    data: dict, idx: Tensor, cfg: PriorTrainConfig, g: torch.Generator
) -> tuple[Tensor, Tensor, CameraBatch, Tensor]:
    """Images (B, 3, 32, 32) in [-1, 1], token ids (B, L) with caption dropout, cameras, and keep-camera flags (B,)
    of 0/1 (0: the image trains the "no camera" input)."""
    b = idx.shape[0]
    x0 = data["rgb"][idx].float() / 127.5 - 1.0
    ids = data["input_ids"][idx].clone()
    drop_text = torch.rand(b, generator=g) < cfg.caption_drop
    ids[drop_text] = data["empty_ids"][0]
    camera = make_cameras(data["azimuth"][idx], data["elevation"][idx], x0.shape[-1])
    keep_cam = (torch.rand(b, generator=g) >= cfg.camera_drop).float()
    return x0, ids, camera, keep_cam


def loss_weights(snr: Tensor, min_snr_gamma: float, x0_weight_cap: float) -> Tensor:
    """Per-image weights (B,) of the epsilon MSE at signal-to-noise ratios ``snr`` (B,).

    Min-SNR-gamma (Hang et al. 2023), min(snr, gamma) / snr: the plain loss is dominated by small t, leaving the
    large-t predictions that set an image's mean colour poorly trained. Then clamp(1 / snr, 1, cap): the epsilon
    loss scales x0 errors by snr, so at large t, where outline and orientation are decided and the camera is the only
    clue to them, it barely asked for them. Either is off at 0.
    """
    w = torch.ones_like(snr)
    if min_snr_gamma > 0:
        w = w * snr.clamp(max=min_snr_gamma) / snr
    if x0_weight_cap > 0:
        w = w * snr.reciprocal().clamp(1.0, x0_weight_cap)
    return w


def diffusion_loss(
    model: PriorComponents,
    x0: Tensor,
    ids: Tensor,
    camera: CameraBatch,
    keep_cam: Tensor,
    noise: Tensor,
    t: Tensor,
    cfg: PriorTrainConfig,
) -> Tensor:
    """The weighted epsilon MSE (scalar) of clean images x0 (B, 3, H, W) noised with ``noise`` at timesteps t (B,)."""
    noisy = model.scheduler.add_noise(x0, noise, t)
    text_emb = model.text_encoder(ids).last_hidden_state
    eps = predict_noise(model.unet, noisy, t, text_emb, camera, keep_cam)
    per_image = (eps - noise).square().mean(dim=(1, 2, 3))
    weights = loss_weights(compute_snr(model.scheduler, t), cfg.min_snr_gamma, cfg.x0_weight_cap)
    return (per_image * weights).mean()


def learning_rate(cfg: PriorTrainConfig, step: int, warmup_from: int) -> float:
    return cfg.lr * min(1.0, (step - warmup_from + 1) / cfg.warmup)


def train_step(cfg: PriorTrainConfig, state: TrainState, data: dict, weights: Tensor, cal: dict | None = None) -> float:
    """One optimiser step and EMA update on a fresh batch (and, with ``cal``, the calibration term on calibration
    images drawn by ``state.calib_generator``); returns the learning rate used."""
    model, g = state.model, state.generator
    lr = learning_rate(cfg, state.step, state.history.warmup_from_step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    idx = torch.multinomial(weights, cfg.batch, replacement=True, generator=g)
    x0, ids, camera, keep_cam = make_batch(data, idx, cfg, g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(model.scheduler.config.num_train_timesteps, (cfg.batch,), generator=g)
    loss = diffusion_loss(model, x0, ids, camera, keep_cam, noise, t, cfg)
    if cal is not None:
        assert state.calib_generator is not None  # set with the calibration
        idx = calibration.draw(cal, cfg.calib_batch, state.calib_generator)
        loss = loss + cfg.calib_weight * calibration.anchor_loss(model, cal, idx, cfg.calib_pull_weight)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = prior_parameters(model)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    state.optimizer.step()
    state.ema.step(params)
    state.step += 1
    value = loss.item()
    state.loss_avg = value if math.isnan(state.loss_avg) else 0.98 * state.loss_avg + 0.02 * value
    return lr


# --- the run --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM (plain ``kill PID``) or a first Ctrl-C sets, so the loop ends with a checkpoint and an
    export instead of losing the steps since the last checkpoint; a second Ctrl-C interrupts at once. The previous
    handlers are restored on exit."""
    stop = threading.Event()

    def first_interrupt(*_):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in ((signal.SIGTERM, lambda *_: stop.set()), (signal.SIGINT, first_interrupt))
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def camera_diagnostic(components: PriorComponents) -> str:
    components.unet.eval()
    true, yawed = camera_mse(components, 0.0), camera_mse(components, 45.0)
    components.unet.train()
    return f"camera MSE true {true:.5f} yawed-45 {yawed:.5f} ratio {yawed / true:.3f}"


def train(cfg: PriorTrainConfig) -> TrainState:
    """Train until ``cfg.steps``, the time budget, SIGTERM or Ctrl-C; checkpoint every ``cfg.checkpoint_minutes`` and at
    the end, export the EMA model to ``cfg.out``. With ``cfg.steps`` at or below the resumed step, only exports."""
    start = time.time()
    torch.set_num_threads(cfg.threads)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    resuming = cfg.resume and checkpoint_path(cfg).exists()
    check_calibration(cfg, resuming)
    state = load_or_start(cfg)
    if cfg.steps <= state.step:
        export(cfg, state)
        log.info("exported step %d to %s", state.step, cfg.out)
        return state

    data = load_data(cfg, state.model.tokenizer)
    weights = sampling_weights(data["shape_idx"], cfg.cube_weight)
    cal = load_calibration(cfg, state, resuming)
    n_params = sum(p.numel() for p in prior_parameters(state.model))
    log.info("training %.2fM params on %d images, from step %d", n_params / 1e6, data["rgb"].shape[0], state.step)
    state.model.unet.train()
    state.model.text_encoder.train()
    last_ckpt, t_log, step_log = time.time(), time.time(), state.step
    log_path = cfg.work_dir / f"prior_loss_seed{cfg.seed}.csv"
    with stop_on_signals() as stop, log_path.open("a") as csv:
        if state.step == 0:
            csv.write("step,loss,lr,elapsed_s,steps_per_s\n")
        while state.step < cfg.steps and (time.time() - start) / 60 < cfg.max_minutes and not stop.is_set():
            lr = train_step(cfg, state, data, weights, cal)
            step = state.step
            if step % cfg.log_every == 0:
                rate = (step - step_log) / (time.time() - t_log)
                t_log, step_log = time.time(), step
                elapsed = time.time() - start
                csv.write(f"{step},{state.loss_avg:.5f},{lr:.2e},{elapsed:.0f},{rate:.3f}\n")
                csv.flush()
                log.info("step %d loss %.4f lr %.1e %.2f it/s %.1f min", step, state.loss_avg, lr, rate, elapsed / 60)
            if time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
                save_checkpoint(cfg, state)
                last_ckpt = time.time()
            if cfg.export_every and step % cfg.export_every == 0:
                export(cfg, state)
                log.info("exported step %d to %s; EMA %s", step, cfg.out, camera_diagnostic(state.ema_model))
        save_checkpoint(cfg, state)
        export(cfg, state)
        if stop.is_set():
            log.info(
                "stopped by a signal at step %d: checkpoint and export written; continue with --resume", state.step
            )
    log.info("done: step %d loss %.4f; exported to %s", state.step, state.loss_avg, cfg.out)
    return state


# --- export and model card ------------------------------------------------------------------------------------------
def export_metadata(cfg: PriorTrainConfig, state: TrainState) -> dict:
    h = state.history
    return {
        "train_steps": state.step,
        "final_loss": round(state.loss_avg, 5),
        "seed": cfg.seed,
        "lr": cfg.lr,
        "ema_decay": cfg.ema,
        "batch_size": cfg.batch,
        "n_train_images": cfg.n_data,
        "min_snr_gamma": cfg.min_snr_gamma,
        "cube_weight": cfg.cube_weight,
        "pose_harmonics": cfg.pose_harmonics,
        "pose_from_step": h.pose_from_step,
        "x0_weight_cap": cfg.x0_weight_cap,
        "scale_jitter": cfg.scale_jitter,
        "edge_round": cfg.edge_round,
        "option_values": h.option_values,
        "init_steps": h.init_steps,
        **({"blends": h.blends} if h.blends else {}),
        "loss_note": "final_loss is the running mean of the (Min-SNR weighted) epsilon MSE",
    }


def export(cfg: PriorTrainConfig, state: TrainState) -> None:
    """Write the EMA model and its model card to ``cfg.out`` (:func:`write_export`)."""
    state.ema.copy_to(prior_parameters(state.ema_model))
    write_export(state.ema_model, export_metadata(cfg, state), cfg.out)


def write_export(components: PriorComponents, meta: dict, out: Path) -> None:
    """Write ``components`` with their model card to ``out`` (:func:`building`)."""
    with building(out) as tmp:
        save_components(components, tmp, meta)
        (tmp / "README.md").write_text(model_card(meta))


@contextlib.contextmanager
def building(out: Path) -> Iterator[Path]:
    """Yield an empty sibling folder to build ``out`` in; when the block ends, it replaces ``out`` by renames, so a
    complete export is always on disk."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def blend(start: str | Path, end: str | Path, weight: float | str, out: Path = DEFAULT_DIR) -> dict:
    """Write to ``out`` the export ``end`` with its UNet weights ``start + weight * (end - start)``: the change of
    ``end``'s last stage (which started from ``start`` with ``init_from``) taken at part strength, for a fine-tune
    that overshoots. Every other file is ``end``'s, the text encoder included. Returns the written metadata; raises
    :class:`UserError` on bad input, before anything is written. Takes the command line's strings too."""
    start, end = Path(start), Path(end)
    try:
        weight = float(weight)
    except ValueError:
        raise UserError(f"WEIGHT must be a number, got {weight!r}; e.g. 0.5") from None
    if not 0 < weight < 1:
        raise UserError(f"WEIGHT must be between 0 and 1 (exclusive), got {weight}; e.g. 0.5")
    for name, folder in (("START", start), ("END", end)):
        if not (folder / SPEC_FILE).is_file():
            raise UserError(f"{name} {folder} is not an exported prior folder (no {SPEC_FILE})")
    a, b = load_metadata(start), load_metadata(end)
    inits = init_steps(b)
    if not inits or inits[-1] != a["train_steps"]:
        raise UserError(
            f"END {end} must be the export of a stage started from START {start} with --init-from "
            f"(END's last restart is at step {inits[-1] if inits else 'none'}; START is at step {a['train_steps']})"
        )
    if any(s == b["train_steps"] for s, _, _ in b.get("blends", [])):
        raise UserError(f"END {end} is a blend already; blend the stage's own export")
    # The weight files themselves, not modules loaded and saved again, so every other file stays byte for byte END's.
    wa, wb = load_file(start / UNET_WEIGHTS), load_file(end / UNET_WEIGHTS)
    if wa.keys() != wb.keys() or any(wa[k].shape != v.shape for k, v in wb.items()):
        raise UserError(f"START {start} and END {end} have different UNets; END must be a stage started from START")
    meta = {**b, "blends": [*b.get("blends", []), [b["train_steps"], a["train_steps"], weight]]}
    blended = {k: wa[k] + weight * (v - wa[k]) for k, v in wb.items()}
    with building(out) as tmp:
        shutil.copytree(end, tmp)
        save_file(blended, tmp / UNET_WEIGHTS, metadata={"format": "pt"})
        write_metadata(tmp, meta)
        (tmp / "README.md").write_text(model_card(meta))
    log.info("wrote %s: %s's UNet weights at %s of the way from %s's", out, end, weight, start)
    return meta


def model_card(meta: dict) -> str:
    """The exported folder's README.md, from its metadata."""
    values = export_values(meta)
    return f"""# dreamnfsd built-in prior

A small camera-aware text-to-image diffusion model, trained from scratch on procedural renders of single primitives
on a white background. Pixel space (no VAE), 32x32 RGB in [-1, 1], epsilon prediction, DDPM schedule
`squaredcos_cap_v2` with 1000 steps. Weights are float32 safetensors.

- UNet input: 6 channels = 3 noisy RGB + 3 per-pixel world ray directions
  (`dreamnfsd.cameras.ray_direction_channels`; zeros = no camera, used for 10% of training images).
- Camera pose embedding: `dreamnfsd.cameras.camera_pose_features` (sin/cos of k*azimuth for
  k = 1..{meta["pose_harmonics"]}, sin/cos elevation) through diffusers' `class_embed_type="projection"`, added to
  the timestep embedding; zeroed with the ray channels when the camera is dropped. Added (zero-initialised) at
  step {meta["pose_from_step"]}.
- Cameras: distance 3, vertical fov 40 degrees, azimuth 0-360, elevation -10 to 45 degrees, z-up world.
  The cube is axis-aligned and cylinder, cone and torus stand along z, so the prior knows their orientation.
- Text: captions "a <colour> <shape>", 10% dropped to "" for classifier-free guidance; about 15% of images are
  degraded and captioned with words of the NFSD negative prompt.
- Vocabulary: {" ".join(VOCABULARY)}
- Training: {meta["train_steps"]} steps at batch {meta["batch_size"]}, {changes(values["n_data"])} rendered images,
  AdamW at learning rate {changes(values["lr"])}, warmed up linearly over the first
  {changes(values["warmup"])} steps of each start, EMA of the weights (the export) with decay
  {changes(values["ema"])}, seed {changes(values["seed"])}; final loss {meta["final_loss"]}.
- Loss: epsilon MSE times min(snr, gamma) / snr (Min-SNR-gamma) with gamma {changes(values["min_snr_gamma"])}, and
  times clamp(1/snr, 1, cap) (x0-space weight at large t) with cap {changes(values["x0_weight_cap"])}; 0 turns
  either off. The final loss above is the running mean of the weighted loss.
- Cube images drawn with weight {changes(values["cube_weight"])} (1: uniform): the cube carries the azimuth signal.
- Object size: the canonical primitive's times 1 ± jitter, jitter {changes(values["scale_jitter"])}.
- Edges of cubes, cylinders and cones rounded by a radius uniform in [0, r] (faces in place),
  r {changes(values["edge_round"])}.{calibration_note(meta, values)}{init_note(meta)}{blend_note(meta)}

Reproduce (each option above took its value at its step, so one command per stage; a stage may be stopped and
resumed at any step, since the checkpoint holds the optimiser and random states):

{reproduce_commands(meta, values)}

Load: `dreamnfsd.guidance.priors.builtin.load_components(folder)`; sample with `builtin.sample(...)`.
"""


def changes(pairs: list[list]) -> str:
    """A [step, value] history in words: "0.999 from step 0, 0.995 from step 2782", or the one value."""
    if len(pairs) == 1:
        return str(pairs[0][1])
    return ", ".join(f"{value} from step {step}" for step, value in pairs)


def offset_note(offset: str | bool) -> str:
    """The card's words for a calib_offset value (records from before per-shape offsets hold a bool: all shapes)."""
    if offset is True:
        return " the surface offset too,"
    return f" the surface offset too for {offset}," if offset else ""


def calibration_note(meta: dict, values: dict[str, list[list]]) -> str:
    """The model card's line on the size calibration: each span of steps it ran in, with its options."""
    calib = {k: values[f"calib_{k}"] for k in CALIB_OPTIONS}
    starts = sorted({s for pairs in calib.values() for s, _ in pairs})
    spans = []
    for start, end in zip(starts, [*starts[1:], meta["train_steps"]]):
        v = {k: value_at(pairs, start) for k, pairs in calib.items()}
        if v["weight"]:
            spans.append(
                f"steps {start + 1}-{end}: weight {v['weight']}, shapes {v['shapes']},"
                f"{offset_note(v['offset'])} per-image pull weight "
                f"{v['pull_weight']}, {v['batch']} of {v['n']} calibration images a step, edges rounded up to "
                f"{v['edge_round']}, sizes 1 ± {v['scale_spread']}"
            )
    if not spans:
        return ""
    return (
        "\n- Size calibration (`dreamnfsd.guidance.priors.calibration`): the starting export's predictions held in "
        "place except\n  for delta_C's and delta_D's mean size and height pulls on true renders, zeroed for the "
        f"shapes named; {'; '.join(spans)}."
    )


def init_note(meta: dict) -> str:
    inits = init_steps(meta)
    if not inits:
        return ""
    ends = [*inits[1:], meta["train_steps"]]
    spans = "; ".join(f"steps {s + 1}-{e} from the step-{s} export" for s, e in zip(inits, ends))
    return (
        f"\n- Continued from exported weights with a fresh optimiser ({spans}; those training checkpoints were "
        "not kept), so the chain below restarts there with `--init-from`."
    )


def blend_note(meta: dict) -> str:
    spans = "; ".join(
        f"the export at step {step} has the UNet weights of the step-{start} export plus {weight} times the change "
        f"of steps {start + 1}-{step} (its text encoder is the step-{step} one)"
        for step, start, weight in meta.get("blends", [])
    )
    return f"\n- Blended (`{BLEND_SCRIPT}`): {spans}." if spans else ""


def flag_text(flag: str, value) -> str:
    """An option as the command line takes it: a switch alone when on (off is its default, left out)."""
    return flag if value is True else f"{flag} {value}"


def reproduce_commands(meta: dict, values: dict[str, list[list]]) -> str:
    """The stage-by-stage commands that rebuild an export from its recorded option ``values``."""
    options = {  # flag: [step, value] history, in the commands' order
        "--min-snr-gamma": values["min_snr_gamma"],
        "--cube-weight": values["cube_weight"],
        "--pose-harmonics": [[0, 0], [meta["pose_from_step"], meta["pose_harmonics"]]],
        "--x0-weight-cap": values["x0_weight_cap"],
        "--scale-jitter": values["scale_jitter"],
        "--edge-round": values["edge_round"],
        "--lr": values["lr"],
        "--ema": values["ema"],
        "--n-data": values["n_data"],
        "--warmup": values["warmup"],
        **{f"--calib-{k.replace('_', '-')}": values[f"calib_{k}"] for k in CALIB_OPTIONS},
    }
    defaults = {
        "--scale-jitter": SCALE_JITTER,
        "--lr": PriorTrainConfig.lr,
        **{f"--{o.replace('_', '-')}": v for o, v in LATER_OPTIONS.items()},
    }
    left_out = {f"{flag} {value}" for flag, value in defaults.items()}  # as in older cards
    inits = init_steps(meta)
    blended = {step: (origin, weight) for step, origin, weight in meta.get("blends", [])}
    changed = {s for pairs in (*options.values(), values["seed"]) for s, _ in pairs}
    stops = sorted({s for s in changed | set(inits) if s > 0} | {meta["train_steps"]})
    lines, start = [], 0
    for stop in stops:
        opts = [flag_text(flag, value_at(pairs, start)) for flag, pairs in options.items()]
        opts = [o for o in opts if o not in left_out]
        since = [s for s in inits if s <= start]  # the restart this stage's work dir belongs to
        if start == 0:
            how = ""
        elif start in inits:
            how = f" --init-from work_data/prior_step{start} --work-dir work_data/from_step{start}"
        else:
            how = " --resume" + (f" --work-dir work_data/from_step{since[-1]}" if since else "")
        out = f" --out work_data/prior_step{stop}" if stop in inits else ""
        seed = value_at(values["seed"], start)
        full = f"work_data/prior_step{stop}_full"  # a blended stage's own export; the blend goes where it would
        stage_out = f" --out {full}" if stop in blended else out
        lines.append(f"    python {SCRIPT} --seed {seed}{how} --steps {stop} {' '.join(opts)}{stage_out}")
        if stop in blended:
            origin, weight = blended[stop]
            lines.append(f"    python {BLEND_SCRIPT} work_data/prior_step{origin} {full} {weight}{out}")
        start = stop
    return "\n".join(lines)
