"""What the diffusers-format priors share: finding the model folder, loading the text side, dtype choice.

A model is either a local folder or a Hugging Face hub id, in the Stable Diffusion layout (``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, and ``vae/`` for latent priors). Components are loaded one by one
with ``subfolder=`` so a folder need not carry a ``model_index.json`` or a safety checker.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from dreamnfsd.guidance.priors.base import Prior
from dreamnfsd.utils.errors import UserError

# The file whose presence proves a component is there (cached, or in the folder).
COMPONENT_MARKERS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}

_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (not at import time), so a test or the CLI may set it late."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """``None``/"auto" -> fp16 on CUDA (memory, speed), fp32 elsewhere (CPU half kernels are slow or missing)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise UserError(f"prior.dtype: {dtype!r} is not one of auto, float32, float16, bfloat16 — pick one of those")
    return names[dtype]


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that is not an existing folder was meant as a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model_source(
    name_or_path: str, components: tuple[str, ...], local_files_only: bool, field: str = "prior.model"
) -> str:
    """Check that every component of ``name_or_path`` can be loaded; return the string to pass to from_pretrained.

    Raises ``UserError`` naming what is missing, for local folders and for hub ids that are not cached offline.
    """
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        missing = [f"{c}/" for c in components if not (folder / c / COMPONENT_MARKERS[c]).is_file()]
        if missing:
            needed = ", ".join(f"{c}/" for c in components)
            raise UserError(
                f"{field}: '{name_or_path}' is not a folder with {needed} (missing: {', '.join(missing)}) — "
                f"point {field} at a complete diffusers model folder or a hub id"
            )
        return str(folder)
    if _looks_like_path(name_or_path):
        raise UserError(f"{field}: folder '{name_or_path}' does not exist — fix the path or use a Hugging Face hub id")
    if local_files_only:
        from huggingface_hub import try_to_load_from_cache

        missing = []
        for c in components:
            try:
                hit = try_to_load_from_cache(name_or_path, f"{c}/{COMPONENT_MARKERS[c]}")
            except ValueError as err:  # HFValidationError: not a valid repo id either
                raise UserError(f"{field}: '{name_or_path}' is neither a folder nor a valid hub id ({err})") from err
            if not isinstance(hit, str):
                missing.append(f"{c}/")
        if missing:
            why = "HF_HUB_OFFLINE=1" if hub_offline() else "local_files_only is set"
            part = "" if len(missing) == len(components) else f" (missing: {', '.join(missing)})"
            raise UserError(
                f"{field}: '{name_or_path}' is not in the Hugging Face cache{part} and {why} — "
                f"run once online or point {field} at a local folder"
            )
    return name_or_path


def load_component(loader, source: str, subfolder: str, local_files_only: bool, field: str = "prior.model", **kw):
    """``loader.from_pretrained(source, subfolder=...)`` with download/format failures turned into one-line
    UserErrors (the library messages are long and multi-line)."""
    try:
        return loader.from_pretrained(source, subfolder=subfolder, local_files_only=local_files_only, **kw)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{field}: could not load {subfolder}/ from '{source}' ({first}) — check the folder/hub id, "
            f"your network, or set HF_HUB_OFFLINE=1 with a cached model"
        ) from err


def load_alphas_cumprod(source: str, local_files_only: bool) -> tuple[Tensor, str]:
    """alpha-bar (T,) and prediction_type from any diffusers scheduler config (DDIM, PNDM, ... share the schedule)."""
    from diffusers import DDPMScheduler

    scheduler = load_component(DDPMScheduler, source, "scheduler", local_files_only)
    return scheduler.alphas_cumprod.to(torch.float32), scheduler.config.prediction_type


class DiffusersTextPrior(Prior):
    """A prior with a CLIP tokenizer + text encoder; ``encode_text`` returns the last hidden state (N, L, D)."""

    def __init__(self, tokenizer, text_encoder, alphas_cumprod: Tensor, resolution: int, prediction_type: str):
        super().__init__(alphas_cumprod, resolution)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.prediction_type = prediction_type

    def _encode_text_uncached(self, prompts: list[str]) -> Tensor:
        # Without model_max_length in tokenizer_config the tokenizer reports ~1e30; the encoder's positions bound it.
        max_len = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]


def load_text_side(source: str, device, dtype: torch.dtype, local_files_only: bool):
    """(tokenizer, text_encoder, alphas_cumprod, prediction_type) shared by every diffusers-layout prior."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = load_component(CLIPTokenizer, source, "tokenizer", local_files_only)
    text_encoder = load_component(CLIPTextModel, source, "text_encoder", local_files_only, dtype=dtype).to(device)
    alphas_cumprod, prediction_type = load_alphas_cumprod(source, local_files_only)
    return tokenizer, text_encoder, alphas_cumprod, prediction_type


def enable_memory_efficient_attention(unet) -> None:
    """SDPA is diffusers' default with torch 2; xformers, when installed and on CUDA, saves a little more memory."""
    if unet.device.type != "cuda":
        return
    try:
        import xformers  # noqa: F401

        unet.enable_xformers_memory_efficient_attention()
    except Exception:  # noqa: BLE001 - any failure here just means "keep SDPA"
        pass
