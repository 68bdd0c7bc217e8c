"""View-dependent prompts and the per-step text embeddings.

DreamFusion-style suffixes tell a text-only prior which side of the object it is looking at, which reduces
multi-face (Janus) results. Azimuth 0 is the front; angles come from :class:`CameraBatch` in radians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamnfsd.cameras import CameraBatch
from dreamnfsd.guidance.priors.base import Prior

# Index = view label returned by view_labels.
VIEW_SUFFIXES = (", front view", ", side view", ", back view", ", overhead view")
FRONT, SIDE, BACK, OVERHEAD = range(4)


def view_labels(
    azimuth: Tensor, elevation: Tensor, front_deg: float = 45.0, back_deg: float = 135.0, overhead_deg: float = 60.0
) -> Tensor:
    """Per-sample view index (B,) long from azimuth/elevation (B,) in radians.

    overhead if elevation > ``overhead_deg``; otherwise front if |az| < ``front_deg``, back if |az| > ``back_deg``,
    side in between. Azimuth is wrapped to [-pi, pi) first, so 350 deg is front and -190 deg is back.
    """
    az = torch.remainder(azimuth + math.pi, 2 * math.pi) - math.pi
    abs_az = az.abs()
    labels = torch.full_like(azimuth, SIDE, dtype=torch.long)
    labels = torch.where(abs_az < math.radians(front_deg), FRONT, labels)
    labels = torch.where(abs_az > math.radians(back_deg), BACK, labels)
    return torch.where(elevation > math.radians(overhead_deg), OVERHEAD, labels)


def view_prompts(prompt: str, camera: CameraBatch) -> list[str]:
    """The prompt with its view suffix, one string per camera (for logging; the hot path uses labels)."""
    return [prompt + VIEW_SUFFIXES[i] for i in view_labels(camera.azimuth, camera.elevation).tolist()]


@dataclass
class TextEmbeddings:
    """Embeddings for one step: ``cond`` (B, L, D) per sample, ``uncond`` and ``negative`` (1, L, D)."""

    cond: Tensor
    uncond: Tensor
    negative: Tensor | None


class PromptEmbeddings:
    """Encodes the prompt (and its view variants), the empty prompt and the negative prompt once, then hands out
    per-sample embeddings by indexing, so a step does no text encoding and no Python loop over the batch."""

    def __init__(self, prior: Prior, prompt: str, negative_prompt: str | None = None, view_dependent: bool = True):
        self.prompt = prompt
        # A closed-vocabulary prior would see the suffix words as unknown tokens: fall back to the plain prompt.
        self.view_dependent = view_dependent and prior.accepts_view_suffixes
        prompts = [prompt + s for s in VIEW_SUFFIXES] if self.view_dependent else [prompt]
        self.cond_table = prior.encode_text(prompts)  # (V, L, D), V = 4 or 1
        self.plain = prior.encode_text([prompt])  # (1, L, D), for calls without a camera
        self.uncond = prior.encode_text([""])  # (1, L, D)
        self.negative = prior.encode_text([negative_prompt]) if negative_prompt else None

    def __call__(self, camera: CameraBatch | None, batch_size: int) -> TextEmbeddings:
        """Embeddings for a batch of ``batch_size`` views (``camera`` None -> the plain prompt for all)."""
        if self.view_dependent and camera is not None:
            labels = view_labels(camera.azimuth, camera.elevation).to(self.cond_table.device)
            cond = self.cond_table[labels]
        else:
            cond = self.plain.expand(batch_size, -1, -1)
        return TextEmbeddings(cond=cond, uncond=self.uncond, negative=self.negative)
