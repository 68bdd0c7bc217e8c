"""Loading real (tiny, random) diffusers-layout priors offline, and running SDS/NFSD through them."""

from __future__ import annotations

import shutil

import pytest
import torch

import dreamnfsd.guidance.priors as priors_pkg
from dreamnfsd.cameras import CameraBatch, camera_pose_features
from dreamnfsd.guidance import Guidance, GuidanceConfig
from dreamnfsd.guidance.priors import PixelPrior, PriorConfig, StableDiffusionPrior, check_prior, load_prior
from dreamnfsd.guidance.priors.base import model_output_to_eps
from dreamnfsd.guidance.priors.diffusers_prior import resolve_dtype
from dreamnfsd.utils.errors import UserError
from tests.tiny_models import build_tiny_pixel_prior

VOCAB = ["a", "red", "green", "cube", "sphere"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def sd_folder(tiny_sd_prior):
    return tiny_sd_prior  # conftest's session-wide tiny SD folder


@pytest.fixture(scope="module")
def sd_prior(sd_folder):
    return StableDiffusionPrior.from_pretrained(str(sd_folder))


@pytest.fixture(scope="module")
def pixel_folders(tmp_path_factory):
    return {
        "plain": build_tiny_pixel_prior(tmp_path_factory.mktemp("px"), camera=False),
        "camera": build_tiny_pixel_prior(tmp_path_factory.mktemp("px_cam"), camera=True),
        "pose": build_tiny_pixel_prior(tmp_path_factory.mktemp("px_pose"), camera=True, pose_harmonics=4),
        "vocab": build_tiny_pixel_prior(tmp_path_factory.mktemp("px_vocab"), vocabulary=VOCAB),
    }


def cams(azimuth_deg: list[float], res: int = 16) -> CameraBatch:
    n = len(azimuth_deg)
    az = torch.deg2rad(torch.tensor(azimuth_deg, dtype=torch.float32))
    return CameraBatch.from_angles(az, torch.full((n,), 0.3), torch.full((n,), 3.0), torch.full((n,), 0.7), res, res)


def assert_one_line_user_error(excinfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


# --- Stable Diffusion -----------------------------------------------------------------------------------------
def test_sd_prior_loads_offline_frozen(sd_prior):
    assert sd_prior.resolution == 32 and sd_prior.num_train_timesteps == 1000
    assert sd_prior.alphas_cumprod.dtype == torch.float32 and sd_prior.alphas_cumprod.shape == (1000,)
    assert all(not p.requires_grad for p in sd_prior.parameters())
    assert not sd_prior.training and not sd_prior.unet.training
    assert len(sd_prior.tokenizer) > 100  # the real vocab, not transformers-5's silent 3-token fallback
    emb = sd_prior.encode_text(["a red cube", ""])
    assert emb.shape == (2, 77, 32)
    assert not torch.equal(emb[0], emb[1])
    torch.testing.assert_close(sd_prior.encode_text(["a red cube"])[0], emb[0])


def test_sd_to_model_space_is_differentiable(sd_prior):
    rgb = torch.rand(2, 3, 48, 48, requires_grad=True)  # not the model size: resized inside
    z = sd_prior.to_model_space(rgb)
    assert z.shape == (2, 4, 16, 16) and z.dtype == torch.float32
    z.square().sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in sd_prior.parameters())


@pytest.mark.parametrize("kind", ["sds", "nfsd"])
def test_sd_guidance_trains_a_learnable_image(sd_prior, kind):
    logits = torch.zeros(2, 3, 32, 32, requires_grad=True)  # the "NeRF" for now: an image per view
    opt = torch.optim.Adam([logits], lr=0.05)
    guidance = Guidance(sd_prior, GuidanceConfig(kind=kind, t_range=(0.1, 0.4)), "a red cube")
    calls = []
    predict = sd_prior.predict_noise
    sd_prior.predict_noise = lambda *a, **k: calls.append(a[0].shape[0]) or predict(*a, **k)
    try:
        gen, camera = torch.Generator().manual_seed(0), cams([0.0, 180.0], res=32)
        for step in range(3):
            opt.zero_grad()
            out = guidance(torch.sigmoid(logits), camera, gen, progress=step / 3)
            out.loss.backward()
            assert torch.isfinite(out.loss) and logits.grad.abs().sum() > 0
            opt.step()
    finally:
        del sd_prior.predict_noise
    assert len(calls) == 3  # one prior call per step: 2B rows, plus NFSD's negative rows for t >= 200
    assert calls == [4, 4, 4] if kind == "sds" else all(4 <= c <= 6 for c in calls)
    assert logits.detach().abs().sum() > 0
    assert all(p.grad is None for p in sd_prior.parameters())


def test_sd_missing_component_names_the_folder(sd_folder, tmp_path):
    broken = tmp_path / "no_vae"
    shutil.copytree(sd_folder, broken, ignore=lambda d, names: ["vae"] if d == str(sd_folder) else [])
    with pytest.raises(UserError) as exc:
        StableDiffusionPrior.from_pretrained(str(broken))
    assert_one_line_user_error(exc, "prior.model", str(broken), "missing: vae/")


def test_nonexistent_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as exc:
        StableDiffusionPrior.from_pretrained(str(tmp_path / "nope"))
    assert_one_line_user_error(exc, "prior.model", "does not exist")


def test_uncached_hub_id_offline_is_a_user_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(UserError) as exc:
        load_prior(PriorConfig(kind="stable_diffusion"))  # the default hub id
    assert_one_line_user_error(
        exc, "prior.model", "stabilityai/stable-diffusion-2-1-base", "not in the Hugging Face cache", "HF_HUB_OFFLINE=1"
    )


def test_dtype_choice():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype(None, "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(UserError, match="prior.dtype"):
        resolve_dtype("float8", "cpu")


def test_v_prediction_converts_to_epsilon():
    ab = torch.linspace(0.99, 0.01, 1000)
    t = torch.tensor([5, 500, 990])
    x0, eps = torch.randn(2, 3, 4, 2, 2).unbind(0)
    a = ab[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(model_output_to_eps(v, x_t, t, ab, "v_prediction"), eps)
    torch.testing.assert_close(model_output_to_eps(x0, x_t, t, ab, "sample"), eps, rtol=1e-4, atol=1e-4)


# --- pixel priors ---------------------------------------------------------------------------------------------
def test_pixel_prior_without_camera(pixel_folders):
    prior = PixelPrior.from_pretrained(str(pixel_folders["plain"]))
    assert prior.resolution == 16 and not prior.camera_aware
    assert all(not p.requires_grad for p in prior.parameters())
    rgb = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(prior.to_model_space(rgb), rgb * 2 - 1)
    assert prior.to_model_space(torch.rand(2, 3, 40, 40)).shape == (2, 3, 16, 16)
    x_t, t, emb = torch.randn(2, 3, 16, 16), torch.tensor([50, 700]), prior.encode_text(["a red cube"] * 2)
    eps = prior.predict_noise(x_t, t, emb)
    assert eps.shape == (2, 3, 16, 16)
    torch.testing.assert_close(prior.predict_noise(x_t, t, emb, cams([0.0, 90.0])), eps)  # camera ignored


def test_camera_aware_pixel_prior_uses_the_camera(pixel_folders):
    prior = PixelPrior.from_pretrained(str(pixel_folders["camera"]))
    assert prior.camera_aware and prior.unet.config.in_channels == 6
    x_t, t, emb = torch.randn(2, 3, 16, 16), torch.tensor([300, 300]), prior.encode_text(["a red cube"] * 2)
    front, back, none = (prior.predict_noise(x_t, t, emb, c) for c in (cams([0.0, 0.0]), cams([180.0, 180.0]), None))
    assert front.shape == (2, 3, 16, 16)
    assert not torch.allclose(front, back) and not torch.allclose(front, none)
    # End to end: NFSD with cameras through the camera-aware prior.
    image = torch.rand(3, 3, 16, 16, requires_grad=True)
    out = Guidance(prior, GuidanceConfig(kind="nfsd"), "a red cube")(
        image, cams([0.0, 120.0, 240.0]), torch.Generator().manual_seed(1)
    )
    out.loss.backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_vocabulary_rejects_unknown_words(pixel_folders):
    prior = PixelPrior.from_pretrained(str(pixel_folders["vocab"]))
    prior.validate_prompt("a red cube")
    prior.validate_prompt("A green sphere")
    with pytest.raises(UserError) as exc:
        prior.validate_prompt("a blue dog")
    assert_one_line_user_error(exc, "prompt", "'blue'", "'dog'", "use only: a cube green red sphere")
    with pytest.raises(UserError, match="'!'"):
        prior.validate_prompt("a red cube!")  # punctuation is checked as the tokenizer splits it
    with pytest.raises(UserError):
        Guidance(prior, GuidanceConfig(), "a hamburger")
    with pytest.raises(UserError) as exc:  # NFSD's negative prompt must be in the vocabulary too
        Guidance(prior, GuidanceConfig(kind="nfsd"), "a red cube")
    assert_one_line_user_error(exc, "guidance.negative_prompt")
    Guidance(prior, GuidanceConfig(kind="sds"), "a red cube")  # SDS never encodes the negative prompt
    assert not prior.accepts_view_suffixes  # "front view" is outside the vocabulary: guidance drops the suffixes
    assert not Guidance(prior, GuidanceConfig(kind="sds"), "a red cube").prompts.view_dependent


def test_load_prior_factory(pixel_folders, monkeypatch, tmp_path):
    prior = load_prior(PriorConfig(kind="pixel", model=str(pixel_folders["plain"])))
    assert isinstance(prior, PixelPrior)
    with pytest.raises(UserError, match="prior.kind"):
        load_prior(PriorConfig(kind="dalle"))
    monkeypatch.setattr(priors_pkg, "builtin_prior_folder", lambda: tmp_path / "missing")
    with pytest.raises(UserError) as exc:
        load_prior(PriorConfig(kind="builtin"))
    assert_one_line_user_error(exc, "prior.kind", "builtin prior not found")
    monkeypatch.setattr(priors_pkg, "builtin_prior_folder", lambda: pixel_folders["vocab"])
    builtin = load_prior(PriorConfig(kind="builtin"))
    assert isinstance(builtin, PixelPrior) and builtin.spec.vocabulary == tuple(VOCAB)


def test_pixel_folder_missing_component(pixel_folders, tmp_path):
    broken = tmp_path / "no_tok"
    src = pixel_folders["plain"]
    shutil.copytree(src, broken, ignore=lambda d, names: ["tokenizer"] if d == str(src) else [])
    with pytest.raises(UserError) as exc:
        PixelPrior.from_pretrained(str(broken))
    assert_one_line_user_error(exc, "missing: tokenizer/")


def test_check_prior_preflight_without_loading(pixel_folders, sd_folder, monkeypatch, tmp_path):
    check_prior(PriorConfig(kind="stable_diffusion", model=str(sd_folder)), "anything at all")
    check_prior(PriorConfig(kind="pixel", model=str(pixel_folders["vocab"])), "a red cube")
    with pytest.raises(UserError, match="'dog'"):
        check_prior(PriorConfig(kind="pixel", model=str(pixel_folders["vocab"])), "a red dog")
    with pytest.raises(UserError, match="missing: vae/"):
        check_prior(PriorConfig(kind="stable_diffusion", model=str(pixel_folders["plain"])), "a red cube")
    with pytest.raises(UserError, match="prior.dtype"):
        check_prior(PriorConfig(kind="pixel", model=str(pixel_folders["plain"]), dtype="int8"), "a red cube")
    monkeypatch.setattr(priors_pkg, "builtin_prior_folder", lambda: tmp_path / "missing")
    with pytest.raises(UserError, match="builtin prior not found"):
        check_prior(PriorConfig(kind="builtin"), "a red cube")


def test_casting_a_prior_keeps_alpha_bar_float32(pixel_folders):
    prior = PixelPrior.from_pretrained(str(pixel_folders["plain"]), dtype="float32")
    prior.encode_text(["a red cube"])
    prior.half()
    assert prior.unet.dtype == torch.float16 and prior.alphas_cumprod.dtype == torch.float32
    assert prior.encode_text(["a red cube"]).dtype == torch.float16  # cache dropped, re-encoded in the new dtype


@pytest.mark.cuda
def test_sd_prior_fp16_on_cuda(sd_folder):
    prior = StableDiffusionPrior.from_pretrained(str(sd_folder), device="cuda")
    assert prior.unet.dtype == torch.float16 and prior.alphas_cumprod.dtype == torch.float32
    rgb = torch.rand(2, 3, 32, 32, device="cuda", requires_grad=True)
    guidance = Guidance(prior, GuidanceConfig(kind="nfsd", t_range=(0.1, 0.4)), "a red cube")
    out = guidance(rgb, cams([0.0, 90.0], res=32).to("cuda"), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.grad.dtype == torch.float32 and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_camera_pose_features():
    feats = camera_pose_features(cams([30.0, 120.0]), 2, harmonics=4)
    assert feats.shape == (2, 10)
    az, el = torch.deg2rad(torch.tensor([30.0, 120.0])), torch.tensor([0.3, 0.3])
    k = torch.arange(1, 5)
    want = torch.cat([(az[:, None] * k).sin(), (az[:, None] * k).cos(), el.sin()[:, None], el.cos()[:, None]], -1)
    torch.testing.assert_close(feats, want, atol=1e-5, rtol=0)
    # The 4th harmonic repeats every 90 degrees, as an axis-aligned cube does; the 1st does not.
    a, b = camera_pose_features(cams([10.0, 100.0]), 2)
    torch.testing.assert_close(a[[3, 7]], b[[3, 7]], atol=1e-5, rtol=0)
    assert not torch.allclose(a[[0, 4]], b[[0, 4]])
    assert camera_pose_features(None, 3).eq(0).all() and camera_pose_features(None, 3).shape == (3, 10)


def test_pose_embedding_prior_uses_the_camera_through_the_shared_unet_call(pixel_folders):
    """A UNet with ray channels and a pose embedding: the camera (also its azimuth alone) changes the prediction,
    and the app's prior and the built-in training/sampling helper run the very same forward."""
    from dreamnfsd.guidance.priors.builtin import predict_noise as builtin_predict_noise
    from dreamnfsd.guidance.priors.pixel import pose_harmonics

    prior = PixelPrior.from_pretrained(str(pixel_folders["pose"]))
    assert prior.camera_aware and pose_harmonics(prior.unet) == 4
    torch.nn.init.normal_(prior.unet.class_embedding.linear_2.weight, std=0.5)  # make the embedding's effect large
    x_t, t, emb = torch.randn(2, 3, 16, 16), torch.tensor([300, 300]), prior.encode_text(["a red cube"] * 2)
    front, side, none = (prior.predict_noise(x_t, t, emb, c) for c in (cams([0.0, 0.0]), cams([90.0, 90.0]), None))
    assert not torch.allclose(front, side) and not torch.allclose(front, none)
    torch.testing.assert_close(builtin_predict_noise(prior.unet, x_t, t, emb, cams([0.0, 0.0])), front)
    dropped = builtin_predict_noise(prior.unet, x_t, t, emb, cams([0.0, 0.0]), keep_camera=torch.zeros(2))
    torch.testing.assert_close(dropped, none)


def test_pose_embedding_without_camera_conditioning_is_a_one_line_error(tmp_path):
    folder = build_tiny_pixel_prior(tmp_path / "pose_no_spec", camera=False, pose_harmonics=4)
    with pytest.raises(UserError) as exc:
        PixelPrior.from_pretrained(str(folder))
    assert_one_line_user_error(exc, "prior.model", "camera pose embedding", "camera_conditioning")
