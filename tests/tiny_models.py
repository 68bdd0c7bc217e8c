"""Tiny random diffusers-layout models built in code, for tests that need a real prior without downloading one.

``build_tiny_sd_pipeline(folder)`` writes a Stable-Diffusion-layout folder (unet/, vae/, text_encoder/, tokenizer/,
scheduler/) of about 7 MB in a couple of seconds; ``build_tiny_pixel_prior(folder, camera=...)`` writes the pixel
prior layout (no vae/) plus ``dreamnfsd_prior.json``. Weights are random but seeded, so outputs are reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Words the tiny tokenizer knows as whole tokens; anything else is spelled out in characters.
TINY_WORDS = (
    "a",
    "an",
    "red",
    "green",
    "blue",
    "cube",
    "sphere",
    "cone",
    "torus",
    "cylinder",
    "hamburger",
    "of",
    "the",
    "front",
    "side",
    "back",
    "overhead",
    "view",
    "unrealistic",
    "blurry",
    "low",
    "quality",
    "out",
    "focus",
    "ugly",
    "contrast",
    "dull",
    "dark",
    "resolution",
    "gloomy",
)
TEXT_DIM = 32
MAX_LENGTH = 77


def tiny_clip_tokenizer(words: tuple[str, ...] = TINY_WORDS):
    """A byte-level BPE CLIP tokenizer with single-character tokens plus merges building each of ``words``.

    Built from in-memory vocab/merges: in transformers 5, ``CLIPTokenizer(vocab_file=...)`` silently ignores the file.
    """
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        # Merge left to right: ("r","e") -> "re", ("re","d</w>") -> "red</w>".
        pieces = [*word[:-1], word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_LENGTH,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def _save_text_side(folder: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    config = CLIPTextConfig(
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")


def _tiny_unet(in_channels: int, out_channels: int, sample_size: int, pose_harmonics: int = 0):
    from diffusers import UNet2DConditionModel

    pose = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": 2 * pose_harmonics + 2}
    return UNet2DConditionModel(
        **(pose if pose_harmonics else {}),
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _save_scheduler(folder: Path, kind: str = "ddim") -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if kind == "ddim":
        # steps_offset=1: diffusers warns inside pipelines about 0, as SD's own configs use 1.
        scheduler = DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    else:
        scheduler = DDPMScheduler(**schedule, clip_sample=False)
    scheduler.save_pretrained(folder / "scheduler")


def build_tiny_sd_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random SD-layout model to ``folder``: latent 4x16x16, VAE x2 down, so resolution 32."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    with torch.random.fork_rng():  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        _tiny_unet(4, 4, sample_size=16).save_pretrained(folder / "unet")
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            norm_num_groups=32,
            sample_size=32,
        ).save_pretrained(folder / "vae")
        _save_text_side(folder)
    _save_scheduler(folder, "ddim")
    return folder


def build_tiny_pixel_prior(
    folder: str | Path,
    camera: bool = False,
    vocabulary: list[str] | None = None,
    resolution: int = 16,
    seed: int = 0,
    pose_harmonics: int = 0,
) -> Path:
    """Write a tiny random pixel prior: UNet 3 -> 3 channels (6 -> 3 with ``camera``: ray directions appended), and
    with ``pose_harmonics`` a camera pose embedding."""
    folder = Path(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _tiny_unet(6 if camera else 3, 3, resolution, pose_harmonics).save_pretrained(folder / "unet")
        _save_text_side(folder)
    _save_scheduler(folder, "ddpm")
    spec = {
        "kind": "pixel",
        "resolution": resolution,
        "value_range": [-1, 1],
        "camera_conditioning": "ray_directions" if camera else None,
        "vocabulary": vocabulary,
    }
    (folder / "dreamnfsd_prior.json").write_text(json.dumps(spec, indent=1))
    return folder
