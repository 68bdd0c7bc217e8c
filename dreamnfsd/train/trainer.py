"""The text-to-3D training loop: render random views, score them with the prior, step the NeRF."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dreamnfsd.cameras import CameraBatch, RandomCameraSampler, turntable_cameras
from dreamnfsd.export.video import image_grid, normals_to_rgb, to_uint8, write_image
from dreamnfsd.guidance import Guidance
from dreamnfsd.guidance.priors.base import Prior
from dreamnfsd.models.sdf_field import SDFField
from dreamnfsd.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from dreamnfsd.train.coarse import (
    checkpoint_field_kind,
    coarse_steps,
    field_progress,
    in_coarse_stage,
    sdf_from_density,
    stage_config,
    stage_progress,
    with_field_kind,
)
from dreamnfsd.train.config import RunConfig
from dreamnfsd.train.metrics_log import MetricsLog
from dreamnfsd.train.regularizers import normal_variation, opacity_entropy, opacity_sparsity, surface_points
from dreamnfsd.train.scene import Scene, build_scene
from dreamnfsd.train.shading import choose_shading, jittered_backgrounds, light_positions
from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.memory import keep_freed_buffers
from dreamnfsd.utils.timing import PhaseTimer

log = logging.getLogger(__name__)

MAX_ROLLBACKS = 5  # NaN rollbacks (each lowering the learning rates) before training gives up


class NonFiniteTrainingError(UserError):
    """Training kept producing NaN/inf and the configured policy is to abort."""


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar, detached
    t_mean: torch.Tensor  # scalar, detached
    finite: bool
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the loss's parts, unweighted, detached
    grad_norm: torch.Tensor | None = None  # on logged steps


def render_views(
    scene: Scene, cameras: CameraBatch, shading: str = "albedo", chunk: int = 4, ambient: float = 0.1
) -> dict:
    """Render fixed views without gradient, a few cameras at a time, lit from the camera.

    Returns rgb, opacity, normal and depth, each (N, H, W, C).
    """
    keys = ("rgb", "opacity", "normal", "depth")
    outs = []
    with torch.no_grad():
        for i in range(0, len(cameras), chunk):
            cams = _slice(cameras, slice(i, i + chunk))
            origins, dirs = cams.rays()
            lights = cams.c2w[:, :3, 3] * 1.2
            out = scene.renderer.render(
                origins, dirs, shading=shading, light_positions=lights, ambient=ambient, need_normals=True
            )
            outs.append({k: out[k] for k in keys})
    return {k: torch.cat([o[k] for o in outs]) for k in keys}


def _slice(c: CameraBatch, s: slice) -> CameraBatch:
    return CameraBatch(c.c2w[s], c.fov[s], c.azimuth[s], c.elevation[s], c.distance[s], c.height, c.width)


class Trainer:
    """Owns the scene, the optimizer and every RNG, so a checkpoint captures the whole training state."""

    def __init__(self, cfg: RunConfig, run_dir: Path, device: torch.device, prior: Prior):
        self.cfg, self.run_dir, self.device, self.prior = cfg, Path(run_dir), device, prior
        if device.type == "cpu":
            keep_freed_buffers()  # each step's sample buffers are reused, not mapped afresh (speed only)
        torch.manual_seed(cfg.seed)
        # Host RNG for cameras, shading and timesteps; a device RNG for sample offsets and grid jitter.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.render_generator = torch.Generator(device).manual_seed(cfg.seed + 1)
        self.scene = build_scene(stage_config(cfg, 0), device, self.render_generator)
        self.sampler = RandomCameraSampler(cfg.camera)
        self.guidance = Guidance(prior, cfg.guidance, cfg.prompt)
        self.optimizer = self._make_optimizer()
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.step = 0
        self.lr_scale = 1.0
        self.consecutive_skips = 0
        self.total_skips = 0
        self.rollbacks = 0
        self.wall_time = 0.0
        self.ema: dict[str, torch.Tensor] | None = None  # the final field's averaged parameters (train.ema_decay)
        if (decay := ema_decay(cfg)) < cfg.train.ema_decay:
            log.info(
                "train.ema_decay %g averages over about %d steps, more than a quarter of the final field's %d; "
                "using %.4g",
                cfg.train.ema_decay,
                round(1 / (1 - cfg.train.ema_decay)),
                cfg.train.steps - coarse_steps(cfg),
                decay,
            )
        self.timer = PhaseTimer(enabled=False)  # scripts/bench_step.py turns it on
        self.metrics = MetricsLog(self.run_dir, tensorboard=cfg.logger == "tensorboard")
        self._log_mark = (0, 0.0)  # (step, wall time) at the last logged step, for steps/s
        self.val_cameras = turntable_cameras(
            max(cfg.train.val_views, 1),
            elevation_deg=15.0,
            distance=float(sum(cfg.camera.distance_range) / 2),
            fov_deg=float(sum(cfg.camera.fov_range) / 2),
            height=cfg.camera.height,
            width=cfg.camera.width,
            device=device,
        )

    def _make_optimizer(self) -> torch.optim.Adam:
        tc = self.cfg.train
        return torch.optim.Adam(
            [
                {"params": list(self.scene.field.encoding_parameters()), "lr": tc.lr_encoding},
                {"params": list(self.scene.field.mlp_parameters()), "lr": tc.lr_mlp},
                {"params": list(self.scene.background.parameters()), "lr": tc.lr_background},
            ],
            betas=(0.9, 0.99),
            eps=tc.adam_eps,
        )

    def _use_field_kind(self, kind: str) -> None:
        """Give the scene a fresh field of ``kind`` (for a state to be loaded into) unless it has one."""
        if self.scene.field.cfg.kind != kind:
            self.scene = build_scene(with_field_kind(self.cfg, kind), self.device, self.render_generator)
            self.optimizer = self._make_optimizer()
            self._apply_lr()

    def _start_sdf(self) -> None:
        """End of the coarse stage: a new SDF scene fitted to the density field's surface, a fresh optimizer."""
        coarse = self.scene
        self.scene = build_scene(self.cfg, self.device, self.render_generator)
        self.scene.background.load_state_dict(coarse.background.state_dict())
        fit_rng = torch.Generator().manual_seed(self.cfg.seed + 2)
        assert isinstance(self.scene.field, SDFField)  # only an SDF run has a coarse stage
        facts = sdf_from_density(coarse.field, self.scene.field, self.cfg, fit_rng)
        self.ema = None  # it averages the final field only
        self.scene.renderer.mark_occupancy(self.render_generator)
        self.optimizer = self._make_optimizer()
        self._apply_lr()
        log.info(
            "step %d: the SDF starts from the density field's surface (solid %.1f%% of the box, fit error %.4f)",
            self.step,
            100 * facts["solid_share"],
            facts["fit_error"],
        )

    # --- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        from omegaconf import OmegaConf

        return {
            "step": self.step,
            "prompt": self.cfg.prompt,
            "config": OmegaConf.to_container(OmegaConf.structured(self.cfg)),
            "scene": self.scene.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "render_generator": self.render_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "lr_scale": self.lr_scale,
            "total_skips": self.total_skips,
            "rollbacks": self.rollbacks,
            "wall_time": self.wall_time,
            "ema": self.ema,
        }

    def load_state_dict(self, state: dict) -> None:
        # What the checkpoint holds decides (a resume that raised train.steps has moved the stage boundary).
        self._use_field_kind(checkpoint_field_kind(state["scene"]["field"]))
        self.scene.load_state_dict(state["scene"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.render_generator.set_state(state["render_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.lr_scale = float(state["lr_scale"])
        self.total_skips = int(state["total_skips"])
        self.rollbacks = int(state["rollbacks"])
        self.wall_time = float(state["wall_time"])
        ema = state.get("ema")  # checkpoints from before train.ema_decay have none
        self.ema = None if ema is None else {k: v.to(self.device).clone() for k, v in ema.items()}
        self._apply_lr()
        self._log_mark = (self.step, self.wall_time)

    def save(self) -> Path:
        return save_checkpoint(self.state_dict(), self.run_dir, self.step)

    def _apply_lr(self) -> None:
        decay = lr_decay(self.cfg, self.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.lr_scale * decay

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.cfg.train.mixed_precision
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=enabled)

    # --- one step ---------------------------------------------------------------------------------------------
    def train_step(self) -> StepResult:
        tc = self.cfg.train
        timer = self.timer
        progress = self.step / max(tc.steps - 1, 1)
        self.scene.field.set_progress(field_progress(self.cfg, self.step))
        self._apply_lr()
        with timer("render"), self._autocast():
            cams = self.sampler.sample(tc.batch_size, self.generator, self.device)
            shading = choose_shading(self.step, tc, self.generator)
            lights = light_positions(cams, tc, self.generator) if shading != "albedo" else None
            need_normals = shading != "albedo" or (tc.lambda_orientation > 0 and self.step >= tc.shading_warmup_steps)
            backgrounds = (
                None
                if tc.background_jitter == 0
                else jittered_backgrounds(self.scene.background.color, len(cams), tc.background_jitter, self.generator)
            )
            origins, dirs = cams.rays(pixel_jitter_at(self.cfg, self.step), self.generator)
            out = self.scene.renderer.render(
                origins,
                dirs,
                shading=shading,
                light_positions=lights,
                ambient=tc.ambient,
                need_normals=need_normals,
                generator=self.render_generator,
                background_color=backgrounds,
                need_distortion=tc.lambda_distortion > 0,
            )
        with timer("guidance"):
            z = self.prior.to_model_space(out["rgb"].float().permute(0, 3, 1, 2))  # (B, 3, H, W) -> model space
            g = self.guidance.step(z, cams, self.generator, progress)
            terms, weights = {"guidance": g.loss}, {"guidance": 1.0}
            if tc.lambda_entropy > 0:
                terms["entropy"], weights["entropy"] = opacity_entropy(out["opacity"]), tc.lambda_entropy
            if tc.lambda_sparsity > 0:
                terms["sparsity"], weights["sparsity"] = opacity_sparsity(out["opacity"]), tc.lambda_sparsity
            if tc.lambda_normal_tv > 0 and self.scene.field.cfg.kind == "sdf":
                pts = surface_points(origins, dirs, out["depth"], out["opacity"], tc.normal_tv_points, self.generator)
                normals_fn = self.scene.field.normals
                terms["normal_tv"] = normal_variation(normals_fn, pts, tc.normal_tv_radius, self.generator)
                weights["normal_tv"] = tc.lambda_normal_tv
            for name, weight in (
                ("distortion", tc.lambda_distortion),
                ("orientation", tc.lambda_orientation),
                ("eikonal", tc.lambda_eikonal),
                ("curvature", curvature_weight(tc, progress)),
            ):
                if weight > 0 and f"{name}_loss" in out:
                    terms[name], weights[name] = out[f"{name}_loss"], weight
            loss = sum(weights[k] * v for k, v in terms.items())
            assert isinstance(loss, torch.Tensor)  # terms always holds the guidance loss, so the sum is a tensor
        with timer("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with timer("optimizer"):
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            # One host sync per step decides whether to apply it (as AMP's GradScaler does): a NaN must never
            # reach Adam's moments.
            finite = torch.isfinite(loss) & torch.stack([torch.isfinite(p.grad).all() for p in params]).all()
            ok = bool(finite)
            logged = (self.step + 1) % tc.log_every == 0 or self.step + 1 == tc.steps
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) if logged else None
            if ok:
                self.optimizer.step()
                self._update_ema()
            self.step += 1
        with timer("occupancy"):
            self.scene.renderer.update_occupancy(self.step, self.render_generator)
        coarse_done = self.step >= coarse_steps(self.cfg)
        if coarse_done and self.scene.field.cfg.kind != self.cfg.field.kind:  # the coarse density field's last step
            self._start_sdf()
        if self.step == tc.steps and self.ema is not None:
            self._load_ema()
        terms = {k: v.detach() for k, v in terms.items()}
        return StepResult(loss.detach(), g.t.float().mean(), ok, terms, grad_norm)

    def _update_ema(self) -> None:
        decay = ema_decay(self.cfg)
        field = self.scene.field
        if decay == 0 or field.cfg.kind != self.cfg.field.kind:  # off, or still the coarse stage's density field
            return
        with torch.no_grad():
            if self.ema is None:
                self.ema = {k: p.detach().clone() for k, p in field.named_parameters()}
            else:
                for k, p in field.named_parameters():
                    self.ema[k].lerp_(p.detach(), 1.0 - decay)

    def _load_ema(self) -> None:
        """The last step: the field takes the averaged parameters, and the occupancy grid follows its surface."""
        assert self.ema is not None
        with torch.no_grad():
            for k, p in self.scene.field.named_parameters():
                p.copy_(self.ema[k])
        self.scene.renderer.mark_occupancy(self.render_generator)

    # --- the loop ---------------------------------------------------------------------------------------------
    def fit(self, stop) -> str:
        """Train until ``cfg.train.steps``. Returns "completed" or "interrupted"."""
        tc = self.cfg.train
        bar = tqdm(
            total=tc.steps,
            initial=self.step,
            desc=self.cfg.prompt[:40],
            dynamic_ncols=True,
            mininterval=1.0,
            unit="step",
        )
        try:
            while self.step < tc.steps:
                started = time.perf_counter()
                result = self.train_step()
                self.wall_time += time.perf_counter() - started
                self._after_step(result, bar)
                if stop.requested:
                    self.save()
                    return "interrupted"
            return "completed"
        finally:
            bar.close()
            self.metrics.flush()

    def _after_step(self, result: StepResult, bar) -> None:
        tc = self.cfg.train
        if not result.finite:
            self._handle_nonfinite()
        else:
            self.consecutive_skips = 0
        if self.step % tc.log_every == 0 or self.step == tc.steps:
            self._log(result)
            bar.set_postfix(
                loss=f"{float(result.loss):.4g}",
                t=f"{float(result.t_mean):.0f}",
                skipped=self.total_skips,
                refresh=False,
            )
        bar.update(1)
        if tc.val_every > 0 and (self.step % tc.val_every == 0 or self.step == tc.steps):
            self.validate()
        if tc.ckpt_every > 0 and (self.step % tc.ckpt_every == 0 or self.step == tc.steps):
            self.save()

    def _log(self, result: StepResult) -> None:
        """One metrics.jsonl record: the loss and its parts, t, the gradient norm, learning rates, speed, skips."""
        last_step, last_wall = self._log_mark
        speed = (self.step - last_step) / (self.wall_time - last_wall) if self.wall_time > last_wall else math.nan
        self._log_mark = (self.step, self.wall_time)
        groups = ("encoding", "mlp", "background")
        scalars: dict[str, torch.Tensor | float] = {
            "loss": result.loss,
            "t": result.t_mean,
            **{f"loss_{k}": v for k, v in result.terms.items()},
        }
        if result.grad_norm is not None:
            scalars["grad_norm"] = result.grad_norm
        scalars.update({f"lr_{n}": g["lr"] for n, g in zip(groups, self.optimizer.param_groups)})
        scalars.update(steps_per_s=speed, skipped=self.total_skips)
        sharpness = getattr(self.scene.field, "sharpness", None)  # an SDF field's NeuS sharpness (a buffer)
        if sharpness is not None:
            scalars["sharpness"] = sharpness
        self.metrics.log(self.step, {k: float(v) for k, v in scalars.items()})

    def _handle_nonfinite(self) -> None:
        tc = self.cfg.train
        self.consecutive_skips += 1
        self.total_skips += 1
        log.warning(
            "step %d: non-finite loss or gradient, step skipped (%d in a row)", self.step, self.consecutive_skips
        )
        if self.consecutive_skips < tc.max_consecutive_skips:
            return
        checkpoints = list_checkpoints(self.run_dir)
        if tc.on_nan == "abort" or not checkpoints or self.rollbacks >= MAX_ROLLBACKS:
            why = (
                ""
                if tc.on_nan == "abort"
                else " with no checkpoint to roll back to"
                if not checkpoints
                else f" after {self.rollbacks} rollbacks"
            )
            raise NonFiniteTrainingError(
                f"train: {self.consecutive_skips} steps in a row gave NaN/inf at step {self.step}{why}; lower "
                "train.lr_encoding / train.lr_mlp or guidance.guidance_scale"
            )
        state = load_checkpoint(checkpoints[-1], map_location=self.device)
        lr_scale = self.lr_scale * tc.rollback_lr_factor
        total_skips, rollbacks = self.total_skips, self.rollbacks + 1
        self.load_state_dict(state)
        self.metrics.rewind(self.step)
        # The learning rate and the counters carry over the rollback; everything else is the checkpoint's.
        self.lr_scale, self.total_skips, self.rollbacks = lr_scale, total_skips, rollbacks
        self.consecutive_skips = 0
        self._apply_lr()
        log.warning("rolled back to step %d with learning rates x%.3g", self.step, self.lr_scale)

    def validate(self) -> Path:
        """Rows of the fixed views: shaded (Lambertian, light at the camera), albedo, normals, opacity."""
        shaded = render_views(self.scene, self.val_cameras, shading="lambertian", ambient=self.cfg.export.ambient)
        albedo = render_views(self.scene, self.val_cameras, shading="albedo")
        normals = normals_to_rgb(shaded["normal"], shaded["opacity"])
        grid = image_grid(shaded["rgb"], albedo["rgb"], normals, shaded["opacity"])
        path = write_image(grid, self.run_dir / "validation" / f"step_{self.step:06d}.png")
        self.metrics.image(self.step, "validation", to_uint8(grid))
        return path


def lr_decay(cfg: RunConfig, step: int) -> float:
    """The learning rates' factor at ``step``: geometric from 1 to ``train.lr_final_share`` over the final field's
    stage (the coarse density field, being replaced, trains at a constant rate)."""
    share = cfg.train.lr_final_share
    if share == 1.0 or in_coarse_stage(cfg, step):
        return 1.0
    return share ** stage_progress(cfg, step)


EMA_MAX_STAGE_SHARE = 0.25  # the average spans at most this share of the final field's stage


def ema_decay(cfg: RunConfig) -> float:
    """The decay the final field's average uses: ``train.ema_decay``, lowered where its window, about
    1 / (1 - decay) steps, would exceed a quarter of the final field's stage. A short run's average would otherwise
    be mostly the field the stage started from (after 80 steps at 0.99, 45% of it is still the first step's)."""
    decay = cfg.train.ema_decay
    stage = cfg.train.steps - coarse_steps(cfg)
    return max(0.0, min(decay, 1.0 - 1.0 / (EMA_MAX_STAGE_SHARE * stage))) if decay > 0 and stage > 0 else decay


def pixel_jitter_at(cfg: RunConfig, step: int) -> float:
    """The training rays' ``camera.pixel_jitter`` at ``step``: none in an SDF run's coarse density stage, where
    jittered rays let the fog close tori's holes before the SDF is carved from it (docs/benchmarks/quality_pjit)."""
    return 0.0 if in_coarse_stage(cfg, step) else cfg.camera.pixel_jitter


def curvature_weight(tc, progress: float) -> float:
    """The curvature term's weight at training ``progress``: constant, or geometric towards its final value."""
    if tc.lambda_curvature_final is None:
        return tc.lambda_curvature
    return tc.lambda_curvature * (tc.lambda_curvature_final / tc.lambda_curvature) ** min(max(progress, 0.0), 1.0)


def steps_per_second(trainer: Trainer) -> float:
    return trainer.step / trainer.wall_time if trainer.wall_time > 0 else math.nan
