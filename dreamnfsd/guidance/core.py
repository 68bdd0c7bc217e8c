"""The one guidance step shared by SDS and NFSD; the methods differ only in their combine function.

A step: sample t per sample, noise z -> z_t, ONE batched ``prior.predict_noise`` call holding exactly the
predictions the method needs (null and cond always; negative rows only for NFSD samples with t >= threshold),
combine, weight by w(t), sanitise, and express the gradient as a loss whose d/dz is grad / B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.data.primitives import NEGATIVE_PROMPT
from dreamnfsd.guidance.nfsd import nfsd_direction, nfsd_needs_negative
from dreamnfsd.guidance.priors.base import Prior
from dreamnfsd.guidance.prompts import PromptEmbeddings, TextEmbeddings
from dreamnfsd.guidance.sds import sds_direction
from dreamnfsd.utils.errors import UserError

GUIDANCE_KINDS = ("nfsd", "sds")
WEIGHTINGS = ("one_minus_alpha_bar", "uniform", "sqrt_alpha_bar_one_minus_alpha_bar")
ANNEAL_SCHEDULES = ("linear", "sqrt")
DEFAULT_SCALE = {"sds": 100.0, "nfsd": 7.5}
# NFSD's p_neg, the paper's words. One copy: the built-in prior's degraded training images are captioned with them.
DEFAULT_NEGATIVE = NEGATIVE_PROMPT


@dataclass
class GuidanceConfig:
    kind: str = "nfsd"  # nfsd | sds
    guidance_scale: float | None = None  # None -> 100 for SDS, 7.5 for NFSD
    t_range: tuple[float, float] = (0.02, 0.98)  # fractions of T
    t_anneal: bool = False  # move t_max from t_range[1] to t_anneal_end over training
    t_anneal_end: float = 0.5
    t_anneal_schedule: str = "linear"  # linear | sqrt (in training progress)
    weighting: str = "one_minus_alpha_bar"  # | uniform | sqrt_alpha_bar_one_minus_alpha_bar
    grad_clip: float | None = None  # elementwise clamp of the weighted gradient
    nan_to_num: bool = True
    negative_prompt: str = DEFAULT_NEGATIVE  # NFSD's p_neg
    nfsd_t_threshold: int = 200
    view_dependent_prompts: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``UserError`` naming the first bad field."""
        if self.kind not in GUIDANCE_KINDS:
            raise UserError(
                f"guidance.kind: {self.kind!r} is not one of {', '.join(GUIDANCE_KINDS)}; e.g. guidance.kind=nfsd"
            )
        if self.weighting not in WEIGHTINGS:
            raise UserError(
                f"guidance.weighting: {self.weighting!r} is not one of {', '.join(WEIGHTINGS)}; "
                "e.g. guidance.weighting=one_minus_alpha_bar"
            )
        if self.t_anneal_schedule not in ANNEAL_SCHEDULES:
            raise UserError(
                f"guidance.t_anneal_schedule: {self.t_anneal_schedule!r} is not linear or sqrt; "
                "e.g. guidance.t_anneal_schedule=linear"
            )
        lo, hi = self.t_range
        # Looser than the app's config.check_t_range on purpose: library callers may pin t (low == high).
        if not 0.0 <= lo <= hi <= 1.0:
            raise UserError(
                f"guidance.t_range: {tuple(self.t_range)} must satisfy 0 <= low <= high <= 1; "
                "e.g. guidance.t_range=[0.02,0.98]"
            )
        if self.t_anneal and not lo <= self.t_anneal_end <= hi:
            raise UserError(
                f"guidance.t_anneal_end: {self.t_anneal_end} must lie inside t_range {tuple(self.t_range)}; "
                "e.g. guidance.t_anneal_end=0.5"
            )
        if self.kind == "nfsd" and not self.negative_prompt.strip():
            raise UserError(
                "guidance.negative_prompt: NFSD needs a negative prompt (its delta_D for t >= nfsd_t_threshold); "
                "drop the override to use the paper's default"
            )
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise UserError(
                f"guidance.grad_clip: {self.grad_clip} must be positive, or null to disable; e.g. guidance.grad_clip=1"
            )

    @property
    def scale(self) -> float:
        return DEFAULT_SCALE[self.kind] if self.guidance_scale is None else float(self.guidance_scale)


@dataclass
class GuidanceOutput:
    """``loss``: scalar to add to the training loss (d loss / dz = grad / B). ``grad`` (B, C, h, w) detached.
    ``t`` (B,) long. ``stats``: scalar/vector tensors for logging (call .item() only when logging)."""

    loss: Tensor
    grad: Tensor
    t: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


def t_bounds(cfg: GuidanceConfig, progress: float) -> tuple[float, float]:
    """(t_min, t_max) as fractions of T at training ``progress`` in [0, 1]; only t_max anneals."""
    lo, hi = cfg.t_range
    if cfg.t_anneal:
        p = min(max(float(progress), 0.0), 1.0)
        f = math.sqrt(p) if cfg.t_anneal_schedule == "sqrt" else p
        hi = max(lo, hi + (cfg.t_anneal_end - hi) * f)
    return lo, hi


def sample_timesteps(
    batch_size: int, num_train_timesteps: int, bounds: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """(B,) integer timesteps uniform in [round(lo T), round(hi T)], capped at T-1, on the generator's device."""
    lo = min(round(bounds[0] * num_train_timesteps), num_train_timesteps - 1)
    hi = min(max(round(bounds[1] * num_train_timesteps), lo), num_train_timesteps - 1)
    return torch.randint(lo, hi + 1, (batch_size,), generator=generator, device=generator.device)


def timestep_weights(alpha_bar: Tensor, weighting: str) -> Tensor:
    """w(t) from alpha-bar_t (B,): 1 - ab | 1 | sqrt(ab)(1 - ab). Returns (B,)."""
    if weighting == "one_minus_alpha_bar":
        return 1 - alpha_bar
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    if weighting == "sqrt_alpha_bar_one_minus_alpha_bar":
        return alpha_bar.sqrt() * (1 - alpha_bar)
    raise UserError(f"guidance.weighting: {weighting!r} is not one of {', '.join(WEIGHTINGS)}")


def select_cameras(camera: CameraBatch | None, index: Tensor) -> CameraBatch | None:
    """Rows ``index`` (N,) of a camera batch, so each prior row gets the camera of its sample."""
    if camera is None:
        return None
    index = index.to(camera.c2w.device)
    return CameraBatch(
        camera.c2w[index],
        camera.fov[index],
        camera.azimuth[index],
        camera.elevation[index],
        camera.distance[index],
        camera.height,
        camera.width,
    )


def guidance_step(
    prior: Prior,
    z: Tensor,
    text: TextEmbeddings,
    camera: CameraBatch | None,
    generator: torch.Generator,
    cfg: GuidanceConfig,
    progress: float = 0.0,
) -> GuidanceOutput:
    """One SDS/NFSD step on model-space images ``z`` (B, C, h, w), which carry the graph back to the NeRF.

    ``text.cond`` is (B, L, D) (view-dependent prompts differ per sample); ``text.uncond``/``text.negative`` are
    (1, L, D). Randomness comes only from ``generator``.
    """
    b = z.shape[0]
    t_gen = sample_timesteps(b, prior.num_train_timesteps, t_bounds(cfg, progress), generator)
    noise = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
    # Row selection is done on the generator's device (CPU in training) so it costs no device sync.
    rows = torch.arange(b, device=t_gen.device)
    needs_neg = nfsd_needs_negative(t_gen, cfg.nfsd_t_threshold)
    if cfg.kind != "nfsd":  # only NFSD ever uses the negative prompt
        needs_neg = torch.zeros_like(needs_neg)
    neg_rows = rows[needs_neg]
    t = t_gen.to(z.device)
    neg_rows_dev = neg_rows.to(z.device)
    k = neg_rows.shape[0]

    alpha_bar = prior.alphas_cumprod.to(z.device)[t]  # (B,)
    ab = alpha_bar.view(-1, 1, 1, 1)
    z0 = z.detach().float()
    z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise

    # One call: [null x B | cond x B | negative x k]. The prior is frozen; no_grad keeps it out of the graph even
    # if a prior implementation forgets its own decorator.
    x_in = torch.cat([z_t, z_t, z_t[neg_rows_dev]])
    t_in = torch.cat([t, t, t[neg_rows_dev]])
    emb = [text.uncond.expand(b, -1, -1), text.cond]
    if k:
        assert text.negative is not None, "NFSD needs p_neg's embedding"  # validate() refuses an empty prompt
        emb.append(text.negative.expand(k, -1, -1))
    with torch.no_grad():
        eps_all = prior.predict_noise(
            x_in, t_in, torch.cat(emb), select_cameras(camera, torch.cat([rows, rows, neg_rows]))
        ).float()
    eps_null, eps_y = eps_all[:b], eps_all[b : 2 * b]

    if cfg.kind == "nfsd":
        eps_neg = torch.zeros_like(eps_null).index_copy(0, neg_rows_dev, eps_all[2 * b :])
        direction = nfsd_direction(eps_null, eps_y, eps_neg, t, cfg.scale, cfg.nfsd_t_threshold)
    else:
        direction = sds_direction(eps_null, eps_y, noise, cfg.scale)

    w = timestep_weights(alpha_bar, cfg.weighting)
    grad = w.view(-1, 1, 1, 1) * direction
    if cfg.nan_to_num:
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if cfg.grad_clip is not None:
        grad = grad.clamp(-cfg.grad_clip, cfg.grad_clip)

    # d/dz of 0.5 ||z - (z - grad)||^2 / B is grad / B: the usual SDS reparametrisation, in z's dtype.
    target = (z0 - grad).to(z.dtype)
    loss = 0.5 * ((z - target) ** 2).sum() / b
    stats = {
        "t": t.float(),
        "w": w.mean(),
        "grad_norm": grad.flatten(1).norm(dim=1).mean(),
        "cond_norm": (eps_y - eps_null).flatten(1).norm(dim=1).mean(),
        "n_negative": torch.tensor(k, device=z.device),
    }
    return GuidanceOutput(loss=loss, grad=grad, t=t, stats=stats)


class Guidance:
    """SDS or NFSD for one prompt. Typical training step::

    guidance = Guidance(prior, GuidanceConfig(kind="nfsd"), "a red cube")
    out = guidance(rgb, camera, generator, progress=step / max_steps)  # rgb (B, 3, H, W) in [0, 1]
    (out.loss + regularisers).backward()
    """

    def __init__(self, prior: Prior, cfg: GuidanceConfig, prompt: str) -> None:
        cfg.validate()
        prior.validate_prompt(prompt)
        self.prior = prior
        self.cfg = cfg
        negative = cfg.negative_prompt if cfg.kind == "nfsd" else None
        if negative:
            prior.validate_prompt(negative, field="guidance.negative_prompt")
        self.prompts = PromptEmbeddings(prior, prompt, negative, cfg.view_dependent_prompts)

    def __call__(
        self, rgb: Tensor, camera: CameraBatch | None, generator: torch.Generator, progress: float = 0.0
    ) -> GuidanceOutput:
        """rgb (B, 3, H, W) in [0, 1] with grad -> guidance output (see :func:`guidance_step`)."""
        return self.step(self.prior.to_model_space(rgb), camera, generator, progress)

    def step(
        self, z: Tensor, camera: CameraBatch | None, generator: torch.Generator, progress: float = 0.0
    ) -> GuidanceOutput:
        """Guidance on model-space ``z`` (B, C, h, w) that already went through ``prior.to_model_space``."""
        text = self.prompts(camera, z.shape[0])
        return guidance_step(self.prior, z, text, camera, generator, self.cfg, progress)
