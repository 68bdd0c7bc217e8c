"""Exact tests of the shared guidance step against a stub prior whose predictions are known functions.

The stub's eps depends on which embedding row it was given (null / prompt / negative are distinguishable), on x_t
and on t, so a wrong row order, a wrong t, or a wrong branch all change the numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.guidance import (
    Guidance,
    GuidanceConfig,
    PromptEmbeddings,
    nfsd_direction,
    sample_timesteps,
    sds_direction,
    t_bounds,
    timestep_weights,
    view_labels,
    view_prompts,
)
from dreamnfsd.guidance.core import DEFAULT_NEGATIVE, guidance_step
from dreamnfsd.guidance.priors.base import Prior
from dreamnfsd.guidance.prompts import VIEW_SUFFIXES
from dreamnfsd.utils.errors import UserError

NULL, COND, NEG = 0, 1, 2
PROMPT = "a red cube"


class StubPrior(Prior):
    """Embedding row code: [0,0] = NULL/COND/NEG, [0,1] = view suffix index + 1 (0 without suffix).

    eps(x_t, t, code) = gain[code] * x_t + bias[code] + t / 1000. ``gain`` is a Parameter left trainable on purpose:
    the guidance core itself must keep gradients away from it.
    """

    def __init__(self, channels: int = 4, resolution: int = 8, view_words: bool = True):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
        super().__init__(torch.cumprod(1 - betas, 0), resolution)
        self.channels = channels
        self.view_words = view_words
        self.gain = nn.Parameter(torch.tensor([0.5, 0.7, 0.2]))
        self.bias = torch.tensor([0.1, -0.3, 0.5])
        self.calls: list[dict] = []
        self.encoded: list[str] = []
        self.poison: Tensor | None = None  # optional (N,) bool rows to return as NaN/inf

    def _encode_text_uncached(self, prompts: list[str]) -> Tensor:
        self.encoded += prompts
        emb = torch.zeros(len(prompts), 2, 3)
        for i, p in enumerate(prompts):
            emb[i, 0, 0] = NULL if p == "" else NEG if p == DEFAULT_NEGATIVE else COND
            emb[i, 0, 1] = next((k + 1 for k, s in enumerate(VIEW_SUFFIXES) if p.endswith(s)), 0)
        return emb

    @property
    def accepts_view_suffixes(self) -> bool:
        return self.view_words

    def to_model_space(self, rgb: Tensor) -> Tensor:
        return rgb * 2 - 1

    def predict_noise(self, x_t, t, text_embeddings, camera=None):
        self.calls.append(
            dict(
                x_t=x_t.clone(),
                t=t.clone(),
                emb=text_embeddings.clone(),
                camera=camera,
                grad_enabled=torch.is_grad_enabled(),
                x_requires_grad=x_t.requires_grad,
            )
        )
        out = stub_eps(x_t, t, text_embeddings[:, 0, 0].long(), self.gain, self.bias)
        if self.poison is not None:
            out = out.clone()
            out[self.poison] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0]).view(1, 4, 1, 1)
        return out


def stub_eps(x_t: Tensor, t: Tensor, code: Tensor, gain: Tensor, bias: Tensor) -> Tensor:
    return gain[code].view(-1, 1, 1, 1) * x_t + bias[code].view(-1, 1, 1, 1) + (t.float() / 1000).view(-1, 1, 1, 1)


def cameras(azimuth_deg, elevation_deg=None) -> CameraBatch:
    az = torch.deg2rad(torch.tensor(azimuth_deg, dtype=torch.float32))
    el = torch.deg2rad(torch.tensor(elevation_deg if elevation_deg is not None else [0.0] * len(az)))
    n = len(az)
    return CameraBatch.from_angles(az, el, torch.full((n,), 3.0), torch.full((n,), 0.7), 8, 8)


def run_step(prior: StubPrior, cfg: GuidanceConfig, b: int = 4, seed: int = 0, camera=None, progress: float = 0.0):
    z = torch.randn(b, prior.channels, 8, 8, generator=torch.Generator().manual_seed(100 + seed), requires_grad=True)
    guidance = Guidance(prior, cfg, PROMPT)
    out = guidance.step(z, camera, torch.Generator().manual_seed(seed), progress)
    return z, out


def expected_grad(prior: StubPrior, cfg: GuidanceConfig, z: Tensor, t: Tensor) -> Tensor:
    """The method's formula, recomputed from the recorded prior input (noise recovered from x_t)."""
    call = prior.calls[-1]
    b = z.shape[0]
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = call["x_t"][:b]
    noise = (x_t - ab.sqrt() * z.detach()) / (1 - ab).sqrt()
    gain, bias = prior.gain.detach(), prior.bias
    e = {c: stub_eps(x_t, t, torch.full((b,), c), gain, bias) for c in (NULL, COND, NEG)}
    s = cfg.scale
    if cfg.kind == "sds":
        direction = e[NULL] + s * (e[COND] - e[NULL]) - noise
    else:
        large = (t >= cfg.nfsd_t_threshold).view(-1, 1, 1, 1)
        delta_d = torch.where(large, e[NULL] - e[NEG], e[NULL])
        direction = delta_d + s * (e[COND] - e[NULL])
    return timestep_weights(prior.alphas_cumprod[t], cfg.weighting).view(-1, 1, 1, 1) * direction


def fixed_t(t: int) -> tuple[float, float]:
    return (t / 1000, t / 1000)


# --- the combine functions -------------------------------------------------------------------------------------
def test_sds_direction_formula():
    eps_null, eps_y, noise = torch.randn(3, 2, 4, 5, 5).unbind(0)
    torch.testing.assert_close(sds_direction(eps_null, eps_y, noise, 7.0), eps_null + 7 * (eps_y - eps_null) - noise)


def test_nfsd_direction_branches_and_unused_negative_rows_are_ignored():
    eps_null, eps_y, eps_neg = torch.randn(3, 4, 3, 2, 2).unbind(0)
    eps_neg[:2] = float("nan")  # rows with t < 200 were never predicted; whatever is there must not leak
    t = torch.tensor([0, 199, 200, 999])
    out = nfsd_direction(eps_null, eps_y, eps_neg, t, 7.5, 200)
    dc = eps_y - eps_null
    torch.testing.assert_close(out[:2], eps_null[:2] + 7.5 * dc[:2])
    torch.testing.assert_close(out[2:], eps_null[2:] - eps_neg[2:] + 7.5 * dc[2:])


# --- the full step ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [100, 500])
def test_sds_step_matches_formula_and_uses_2b_rows(t):
    prior, cfg = StubPrior(), GuidanceConfig(kind="sds", t_range=fixed_t(t))
    z, out = run_step(prior, cfg, b=3)
    assert out.t.tolist() == [t] * 3
    assert len(prior.calls) == 1 and prior.calls[0]["x_t"].shape[0] == 6
    codes = prior.calls[0]["emb"][:, 0, 0].tolist()
    assert codes == [NULL] * 3 + [COND] * 3
    torch.testing.assert_close(out.grad, expected_grad(prior, cfg, z, out.t), rtol=1e-4, atol=1e-4)


def test_nfsd_small_t_is_null_plus_condition_and_skips_negative():
    prior, cfg = StubPrior(), GuidanceConfig(kind="nfsd", t_range=fixed_t(150))
    z, out = run_step(prior, cfg, b=4)
    assert len(prior.calls) == 1 and prior.calls[0]["x_t"].shape[0] == 8
    assert NEG not in prior.calls[0]["emb"][:, 0, 0].tolist()
    torch.testing.assert_close(out.grad, expected_grad(prior, cfg, z, out.t), rtol=1e-4, atol=1e-4)
    assert int(out.stats["n_negative"]) == 0


def test_nfsd_large_t_subtracts_negative_prediction():
    prior, cfg = StubPrior(), GuidanceConfig(kind="nfsd", t_range=fixed_t(200))  # 200 is already "large"
    z, out = run_step(prior, cfg, b=4)
    call = prior.calls[0]
    assert len(prior.calls) == 1 and call["x_t"].shape[0] == 12
    assert call["emb"][:, 0, 0].tolist() == [NULL] * 4 + [COND] * 4 + [NEG] * 4
    torch.testing.assert_close(out.grad, expected_grad(prior, cfg, z, out.t), rtol=1e-4, atol=1e-4)


def test_nfsd_mixed_batch_adds_negative_rows_only_where_needed():
    prior, cfg = StubPrior(), GuidanceConfig(kind="nfsd", t_range=(0.1, 0.3))
    z, out = run_step(prior, cfg, b=8, seed=3)
    large = out.t >= 200
    k = int(large.sum())
    assert 0 < k < 8, "seed should give a mixed batch"
    call = prior.calls[0]
    assert len(prior.calls) == 1 and call["x_t"].shape[0] == 16 + k
    # The negative rows are the large-t samples, with their own x_t and t.
    torch.testing.assert_close(call["x_t"][16:], call["x_t"][:8][large])
    assert call["t"][16:].tolist() == out.t[large].tolist()
    assert call["emb"][16:, 0, 0].tolist() == [NEG] * k
    torch.testing.assert_close(out.grad, expected_grad(prior, cfg, z, out.t), rtol=1e-4, atol=1e-4)


def test_sds_never_asks_for_negative_even_at_large_t():
    prior = StubPrior()
    run_step(prior, GuidanceConfig(kind="sds", t_range=fixed_t(900)), b=5)
    assert prior.calls[0]["x_t"].shape[0] == 10
    assert DEFAULT_NEGATIVE not in prior.encoded


def test_prior_called_once_per_step_without_grad_and_gets_no_gradient():
    prior = StubPrior()
    assert prior.gain.requires_grad  # deliberately unfrozen: isolation must come from the core
    z, out = run_step(prior, GuidanceConfig(kind="nfsd", t_range=(0.02, 0.98)), b=6)
    assert len(prior.calls) == 1
    assert not prior.calls[0]["grad_enabled"] and not prior.calls[0]["x_requires_grad"]
    out.loss.backward()
    assert prior.gain.grad is None
    assert z.grad is not None


def test_loss_gradient_wrt_z_is_grad_over_batch():
    prior = StubPrior()
    z, out = run_step(prior, GuidanceConfig(kind="sds"), b=4)
    (dz,) = torch.autograd.grad(out.loss, z)
    torch.testing.assert_close(dz, out.grad / 4)
    assert not out.grad.requires_grad


@pytest.mark.parametrize(
    "weighting, fn",
    [
        ("one_minus_alpha_bar", lambda ab: 1 - ab),
        ("uniform", lambda ab: torch.ones_like(ab)),
        ("sqrt_alpha_bar_one_minus_alpha_bar", lambda ab: ab.sqrt() * (1 - ab)),
    ],
)
@pytest.mark.parametrize("kind", ["sds", "nfsd"])
def test_weighting_variants(weighting, fn, kind):
    prior = StubPrior()
    cfg = GuidanceConfig(kind=kind, weighting=weighting, t_range=(0.1, 0.9))
    z, out = run_step(prior, cfg, b=5)
    torch.testing.assert_close(
        timestep_weights(prior.alphas_cumprod[out.t], weighting), fn(prior.alphas_cumprod[out.t])
    )
    torch.testing.assert_close(out.grad, expected_grad(prior, cfg, z, out.t), rtol=1e-4, atol=1e-4)


def test_default_guidance_scales():
    assert GuidanceConfig(kind="sds").scale == 100.0
    assert GuidanceConfig(kind="nfsd").scale == 7.5
    assert GuidanceConfig(kind="nfsd", guidance_scale=20).scale == 20.0


def test_nan_to_num_and_grad_clip():
    prior = StubPrior()
    prior.poison = torch.tensor([True, False, False, False, False, False])  # null row of sample 0
    _, out = run_step(prior, GuidanceConfig(kind="sds", t_range=fixed_t(500)), b=3)
    assert torch.isfinite(out.grad).all() and torch.isfinite(out.loss)
    assert (out.grad[0, :3] == 0).all()  # nan, +inf, -inf channels zeroed

    prior = StubPrior()
    prior.poison = torch.tensor([True, False, False, False, False, False])
    _, raw = run_step(prior, GuidanceConfig(kind="sds", t_range=fixed_t(500), nan_to_num=False), b=3)
    assert torch.isnan(raw.grad[0, 0]).all()

    _, clipped = run_step(StubPrior(), GuidanceConfig(kind="sds", grad_clip=0.01), b=3)
    assert clipped.grad.abs().max() <= 0.01 + 1e-7


def test_step_is_reproducible_from_the_generator():
    _, a = run_step(StubPrior(), GuidanceConfig(kind="nfsd"), seed=7)
    _, b = run_step(StubPrior(), GuidanceConfig(kind="nfsd"), seed=7)
    torch.testing.assert_close(a.grad, b.grad)
    assert a.t.tolist() == b.t.tolist()


def test_invalid_config_is_a_user_error():
    with pytest.raises(UserError, match="guidance.kind"):
        GuidanceConfig(kind="vsd")
    with pytest.raises(UserError, match="guidance.weighting"):
        GuidanceConfig(weighting="snr")
    with pytest.raises(UserError, match="guidance.t_range"):
        GuidanceConfig(t_range=(0.9, 0.1))


# --- timesteps -------------------------------------------------------------------------------------------------
def test_timesteps_integer_and_inside_range():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(10_000, 1000, (0.02, 0.98), g)
    assert t.dtype == torch.long and int(t.min()) == 20 and int(t.max()) == 980
    assert sample_timesteps(4, 1000, (1.0, 1.0), g).tolist() == [999] * 4  # capped at T-1


@pytest.mark.parametrize("schedule, mid", [("linear", 0.98 - 0.48 * 0.25), ("sqrt", 0.98 - 0.48 * 0.5)])
def test_t_anneal(schedule, mid):
    cfg = GuidanceConfig(t_anneal=True, t_anneal_end=0.5, t_anneal_schedule=schedule)
    assert t_bounds(cfg, 0.0) == pytest.approx((0.02, 0.98))
    assert t_bounds(cfg, 0.25) == pytest.approx((0.02, mid))
    assert t_bounds(cfg, 1.0) == pytest.approx((0.02, 0.5))
    assert t_bounds(GuidanceConfig(), 1.0) == pytest.approx((0.02, 0.98))  # off by default
    prior = StubPrior()
    _, out = run_step(prior, cfg, b=64, progress=1.0)
    assert int(out.t.max()) <= 500


# --- view-dependent prompts ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "az, el, suffix",
    [
        (0, 0, ", front view"),
        (30, 10, ", front view"),
        (-44, 0, ", front view"),
        (350, 0, ", front view"),
        (720 + 10, 0, ", front view"),
        (90, 0, ", side view"),
        (-90, 30, ", side view"),
        (134, 0, ", side view"),
        (180, 0, ", back view"),
        (-170, 0, ", back view"),
        (200, 0, ", back view"),
        (-240, 0, ", side view"),
        (0, 70, ", overhead view"),
        (180, 61, ", overhead view"),
        (180, 59, ", back view"),
    ],
)
def test_view_suffix_for_angles(az, el, suffix):
    cam = cameras([az], [el])
    assert view_prompts(PROMPT, cam) == [PROMPT + suffix]


def test_prompt_embeddings_per_sample_views_and_cache():
    prior = StubPrior()
    prompts = PromptEmbeddings(prior, PROMPT, DEFAULT_NEGATIVE, view_dependent=True)
    cam = cameras([0, 90, 180, 10], [0, 0, 0, 80])
    text = prompts(cam, 4)
    assert text.cond.shape == (4, 2, 3) and text.uncond.shape == (1, 2, 3)
    assert text.cond[:, 0, 1].tolist() == [1, 2, 3, 4]  # front, side, back, overhead
    assert text.negative[0, 0, 0] == NEG
    n = len(prior.encoded)
    prompts(cam, 4)
    PromptEmbeddings(prior, PROMPT, DEFAULT_NEGATIVE)  # a second holder reuses the prior's cache
    assert len(prior.encoded) == n
    assert len(prior.encoded) == len(set(prior.encoded))  # each string encoded once

    assert view_labels(cam.azimuth, cam.elevation).tolist() == [0, 1, 2, 3]


def test_view_dependent_switch_and_closed_vocabulary():
    cam = cameras([0, 180])
    off = PromptEmbeddings(StubPrior(), PROMPT, None, view_dependent=False)(cam, 2)
    assert off.cond[:, 0, 1].tolist() == [0, 0] and off.negative is None
    closed = PromptEmbeddings(StubPrior(view_words=False), PROMPT, None, view_dependent=True)(cam, 2)
    assert closed.cond[:, 0, 1].tolist() == [0, 0]
    no_camera = PromptEmbeddings(StubPrior(), PROMPT, None)(None, 3)
    assert no_camera.cond.shape[0] == 3 and no_camera.cond[:, 0, 1].tolist() == [0, 0, 0]


def test_step_routes_view_embeddings_and_cameras_to_the_right_rows():
    prior = StubPrior()
    cam = cameras([0, 90, 180])
    run_step(prior, GuidanceConfig(kind="nfsd", t_range=fixed_t(600)), b=3, camera=cam)
    call = prior.calls[0]
    assert call["emb"][3:6, 0, 1].tolist() == [1, 2, 3]  # cond rows carry each sample's view
    assert call["emb"][:3, 0, 1].tolist() == [0, 0, 0]  # null and negative are view-free
    torch.testing.assert_close(call["camera"].azimuth, cam.azimuth.repeat(3))
    assert math.isclose(float(call["camera"].azimuth[4]), math.pi / 2, rel_tol=1e-6)


def test_functional_step_equals_guidance_step():
    cfg = GuidanceConfig(kind="nfsd", t_range=(0.1, 0.3))
    z, via_class = run_step(StubPrior(), cfg, b=4, seed=5)
    prior = StubPrior()
    text = PromptEmbeddings(prior, PROMPT, cfg.negative_prompt)(None, 4)
    direct = guidance_step(prior, z, text, None, torch.Generator().manual_seed(5), cfg)
    torch.testing.assert_close(direct.grad, via_class.grad)
    torch.testing.assert_close(direct.loss, via_class.loss)
