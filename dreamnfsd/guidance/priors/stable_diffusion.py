"""Stable Diffusion 1.x/2.x as a latent prior: rgb -> VAE latents, epsilon from the text-conditional UNet."""

from __future__ import annotations

import torch
from torch import Tensor

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.guidance.priors.base import model_output_to_eps, resize_to
from dreamnfsd.guidance.priors.diffusers_prior import (
    DiffusersTextPrior,
    enable_memory_efficient_attention,
    hub_offline,
    load_component,
    load_text_side,
    resolve_dtype,
    resolve_model_source,
)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class StableDiffusionPrior(DiffusersTextPrior):
    """Latent-space prior. ``resolution`` = UNet sample size x VAE downsampling (512 for SD 2.1-base)."""

    def __init__(self, unet, vae, tokenizer, text_encoder, alphas_cumprod: Tensor, prediction_type: str = "epsilon"):
        vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        super().__init__(tokenizer, text_encoder, alphas_cumprod, unet.config.sample_size * vae_scale, prediction_type)
        self.unet = unet
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.freeze()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
    ) -> StableDiffusionPrior:
        """Load from a hub id (normal HF cache; HF_HUB_OFFLINE respected) or a local folder in the SD layout."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        offline = hub_offline() if local_files_only is None else local_files_only
        source = resolve_model_source(name_or_path, SD_COMPONENTS, offline)
        dtype = resolve_dtype(dtype, device)
        tokenizer, text_encoder, alphas_cumprod, prediction_type = load_text_side(source, device, dtype, offline)
        unet = load_component(UNet2DConditionModel, source, "unet", offline, torch_dtype=dtype).to(device)
        vae = load_component(AutoencoderKL, source, "vae", offline, torch_dtype=dtype).to(device)
        enable_memory_efficient_attention(unet)
        return cls(unet, vae, tokenizer, text_encoder, alphas_cumprod, prediction_type).to(device)

    def to_model_space(self, rgb: Tensor) -> Tensor:
        """rgb (B, 3, H, W) in [0, 1] -> scaled latents (B, 4, res/8, res/8) float32, with grad through the encoder.

        The posterior mean is used instead of a sample: the SD VAE's posterior std is tiny, and the mean keeps the
        step deterministic given the guidance generator.
        """
        x = resize_to(rgb, self.resolution) * 2 - 1
        posterior = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return (posterior.mean * self.scaling_factor).float()

    @torch.no_grad()
    def predict_noise(
        self, x_t: Tensor, t: Tensor, text_embeddings: Tensor, camera: CameraBatch | None = None
    ) -> Tensor:
        """(N, 4, h, w) epsilon in float32; ``camera`` is ignored (SD is text-only)."""
        x_in, text = x_t.to(self.unet.dtype), text_embeddings.to(self.unet.dtype)

        def forward(rows: slice) -> Tensor:
            return self.unet(x_in[rows], t[rows], encoder_hidden_states=text[rows]).sample

        out = self.run_denoiser(forward, x_t.shape[0])
        return model_output_to_eps(out.float(), x_t.float(), t, self.alphas_cumprod, self.prediction_type)
