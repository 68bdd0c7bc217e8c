"""The interface every diffusion prior implements, plus the pieces all priors share.

A prior is frozen: its parameters never require grad, and ``predict_noise`` runs under ``no_grad``. The only
differentiable path is ``to_model_space`` (rgb -> latents/pixels), which is how the guidance loss reaches the NeRF.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.utils.threads import forward_in_parts, pin_thread_sensitive_layers, torch_threads

# A part of a split batch has at least this many rows: the 3x3 convolutions pick another kernel for a single image,
# whose sums differ in the last bit from the same image's in a batch.
MIN_PART_ROWS = 2
# A batch too small to split runs on at most this many threads. Elementwise ops (GELU, SiLU) split their elements
# over the threads, and on 3, 5 or 6 threads (4 for some row counts) a thread's share ends off the SIMD width, where
# the scalar tail rounds differently; on 1 or 2 threads every share is whole vectors.
MAX_WHOLE_BATCH_THREADS = 2


class Prior(nn.Module):
    """A frozen text-conditional epsilon-predictor.

    Attributes:
        num_train_timesteps: T, the number of discrete training timesteps (1000 for SD).
        resolution: image size in pixels the model expects (512 for SD 2.1-base, 32 for the built-in prior).
        alphas_cumprod: (T,) float32 buffer, alpha-bar_t of the training noise schedule.
        cpu_threads: CPU threads for the denoiser's forward (0: the caller's count); see :meth:`use_cpu_threads`.
        cpu_parts: row slices a CPU batch runs as, at once (0: automatic, 1: unsplit); see :meth:`run_denoiser`.
    """

    num_train_timesteps: int
    resolution: int
    alphas_cumprod: Tensor

    def __init__(self, alphas_cumprod: Tensor, resolution: int) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float32).clone(), persistent=False)
        self.num_train_timesteps = int(alphas_cumprod.shape[0])
        self.resolution = int(resolution)
        # prompt string -> (L, D) embedding; prompts repeat every step, the text encoder should run once each.
        self._text_cache: dict[str, Tensor] = {}
        self.cpu_threads, self.cpu_parts = 0, 0

    def _apply(self, fn, recurse=True):
        # Keep alpha-bar in float32 even when the prior is cast to fp16: the guidance math is done in fp32.
        super()._apply(fn, recurse)
        self.alphas_cumprod = self.alphas_cumprod.float()
        self._text_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def freeze(self) -> Prior:
        """No gradient ever flows into a prior's parameters; eval() disables dropout in the text encoder."""
        self.requires_grad_(False)
        self.eval()
        return self

    def use_cpu_threads(self, n: int, parts: int = 0) -> Prior:
        """Run the denoiser (``self.unet``) on up to ``n`` CPU threads, with the bits of one thread: its
        thread-sensitive layers are pinned to one (:mod:`dreamnfsd.utils.threads`), and :meth:`run_denoiser` uses
        only splits that keep the bits. ``parts``: how many row slices of a batch run at once, one thread each (0: as
        many as threads and rows allow; 1: never split). Same bits either way."""
        self.cpu_threads, self.cpu_parts = int(n), int(parts)
        denoiser = getattr(self, "unet", None)
        if self.cpu_threads > 1 and self.device.type == "cpu" and isinstance(denoiser, nn.Module):
            pin_thread_sensitive_layers(denoiser)
        return self

    def run_denoiser(self, forward: Callable[[slice], Tensor], rows: int) -> Tensor:
        """``forward(slice(0, rows))``, the denoiser's call on a batch of ``rows``, on up to :attr:`cpu_threads` CPU
        threads with the bits of one (the caller's count is restored). ``forward`` maps a row slice to that slice's
        output.

        On the CPU the batch runs as parts of two rows or more at once, one thread each
        (:func:`~dreamnfsd.utils.threads.forward_in_parts`): a small UNet's ops split poorly over threads, its rows
        split well. A batch too small to split runs whole on at most :data:`MAX_WHOLE_BATCH_THREADS`."""
        threads = self.cpu_threads if self.device.type == "cpu" else 0
        parts = min(self.cpu_parts or threads, threads, rows // MIN_PART_ROWS)
        if parts > 1:
            return forward_in_parts(forward, rows, parts)
        with torch_threads(min(threads, MAX_WHOLE_BATCH_THREADS)):
            return forward(slice(0, rows))

    def train(self, mode: bool = True) -> Prior:
        # A prior is never trained: stay in eval even when a parent module calls .train().
        return super().train(False)

    # --- text -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Embeddings for ``prompts``: (N, L, D). Each distinct string is encoded once and cached."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            for prompt, emb in zip(missing, self._encode_text_uncached(missing)):
                self._text_cache[prompt] = emb.detach()
        return torch.stack([self._text_cache[p] for p in prompts])

    def _encode_text_uncached(self, prompts: list[str]) -> Tensor:
        """(N, L, D) embeddings, no caching. Implemented by each prior."""
        raise NotImplementedError

    def validate_prompt(self, prompt: str, field: str = "prompt") -> None:
        """Raise ``UserError`` (naming ``field``) if the prior cannot understand ``prompt``. Open-vocabulary priors
        accept anything."""

    @property
    def accepts_view_suffixes(self) -> bool:
        """Whether ", front view" etc. are words this prior's text encoder knows (closed-vocabulary priors may not)."""
        return True

    # --- images -----------------------------------------------------------------------------------------------
    def to_model_space(self, rgb: Tensor) -> Tensor:
        """rgb (B, 3, H, W) in [0, 1] -> model input (B, C, h, w), differentiable wrt ``rgb``."""
        raise NotImplementedError

    def predict_noise(
        self, x_t: Tensor, t: Tensor, text_embeddings: Tensor, camera: CameraBatch | None = None
    ) -> Tensor:
        """epsilon-prediction for noisy ``x_t`` (N, C, h, w) at integer timesteps ``t`` (N,) under ``text_embeddings``
        (N, L, D). Returns float32 (N, C, h, w). Runs without grad. ``camera`` (N cameras) is ignored by text-only
        priors."""
        raise NotImplementedError


def resize_to(rgb: Tensor, resolution: int) -> Tensor:
    """Bilinear resize (B, C, H, W) -> (B, C, res, res); antialiased so downsampling a large render does not alias."""
    if rgb.shape[-2:] == (resolution, resolution):
        return rgb
    return F.interpolate(rgb, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def model_output_to_eps(output: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """Convert a UNet output to an epsilon-prediction (all (N, C, h, w); ``t`` (N,)).

    SD 2.x 768 models predict v = sqrt(ab) eps - sqrt(1-ab) x0, so eps = sqrt(ab) v + sqrt(1-ab) x_t.
    """
    if prediction_type == "epsilon":
        return output
    ab = alphas_cumprod[t].to(output.dtype).view(-1, 1, 1, 1)
    if prediction_type == "v_prediction":
        return ab.sqrt() * output + (1 - ab).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - ab.sqrt() * output) / (1 - ab).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r}")
