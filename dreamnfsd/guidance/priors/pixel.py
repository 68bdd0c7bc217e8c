"""A pixel-space prior (no VAE): the UNet denoises the image itself, optionally seeing the camera as ray directions.

The folder has the SD layout minus ``vae/`` and may carry ``dreamnfsd_prior.json``::

    {"kind": "pixel", "resolution": 32, "value_range": [-1, 1],
     "camera_conditioning": "ray_directions" | null, "vocabulary": ["a", "red", "cube", ...] | null}

Unknown keys are ignored so that whoever trains a prior can record extra metadata there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dreamnfsd.cameras import CameraBatch, camera_pose_features, ray_direction_channels
from dreamnfsd.guidance.priors.base import model_output_to_eps, resize_to
from dreamnfsd.guidance.priors.diffusers_prior import (
    DiffusersTextPrior,
    hub_offline,
    load_component,
    load_text_side,
    resolve_dtype,
    resolve_model_source,
)
from dreamnfsd.utils.errors import UserError

PIXEL_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")
SPEC_FILE = "dreamnfsd_prior.json"
CAMERA_MODES = (None, "ray_directions")
# Same split as CLIP's pre-tokenizer: runs of letters, single digits, runs of punctuation ("low-res" -> low - res).
_WORD_RE = re.compile(r"[^\W\d_]+|\d|[^\s\w]+")


@dataclass
class PixelPriorSpec:
    """The contents of ``dreamnfsd_prior.json``; every field optional."""

    resolution: int | None = None  # None -> the UNet's sample_size
    value_range: tuple[float, float] = (-1.0, 1.0)  # what rgb 0 and 1 map to
    camera_conditioning: str | None = None
    vocabulary: tuple[str, ...] | None = None

    @staticmethod
    def read(folder: Path) -> PixelPriorSpec:
        path = folder / SPEC_FILE
        if not path.is_file():
            return PixelPriorSpec()
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"prior.model: {path} is not valid JSON ({err}) — fix or delete the file") from err
        spec = PixelPriorSpec(
            resolution=raw.get("resolution"),
            value_range=tuple(raw.get("value_range", (-1.0, 1.0))),
            camera_conditioning=raw.get("camera_conditioning"),
            vocabulary=tuple(w.lower() for w in raw["vocabulary"]) if raw.get("vocabulary") else None,
        )
        if spec.camera_conditioning not in CAMERA_MODES:
            raise UserError(
                f'prior.model: {path} has camera_conditioning={spec.camera_conditioning!r} — use "ray_directions" '
                f"or null"
            )
        if len(spec.value_range) != 2:
            raise UserError(f"prior.model: {path} value_range must be [low, high], e.g. [-1, 1]")
        return spec


def prompt_words(prompt: str) -> list[str]:
    """Lower-case words of a prompt as the tokenizer splits them ("a red cube, front" -> a red cube , front)."""
    return _WORD_RE.findall(prompt.lower())


def check_vocabulary(prompt: str, vocabulary: tuple[str, ...] | None, field: str = "prompt") -> None:
    """Raise a one-line ``UserError`` listing the vocabulary if ``prompt`` has a word outside it (None: any)."""
    if vocabulary is None:
        return
    known = set(vocabulary)
    unknown = [w for w in dict.fromkeys(prompt_words(prompt)) if w not in known]
    if unknown:
        raise UserError(
            f"{field}: unknown word(s) {', '.join(repr(w) for w in unknown)} for this prior — "
            f"use only: {' '.join(sorted(w for w in known if w.isalpha()))}"
            + (
                f" (and the punctuation {' '.join(sorted(w for w in known if not w.isalpha()))})"
                if any(not w.isalpha() for w in known)
                else ""
            )
        )


def pose_harmonics(unet) -> int:
    """How many azimuth harmonics a UNet's camera pose embedding takes (0: it has none).

    A camera-aware UNet may add a global pose embedding (diffusers ``class_embed_type="projection"``) of
    :func:`dreamnfsd.cameras.camera_pose_features`, whose width 2H + 2 fixes H.
    """
    if unet.config.class_embed_type != "projection":
        return 0
    return (unet.config.projection_class_embeddings_input_dim - 2) // 2


def camera_unet_forward(
    unet,
    x_t: Tensor,
    t: Tensor,
    text_embeddings: Tensor,
    camera: CameraBatch | None,
    keep_camera: Tensor | None = None,
) -> Tensor:
    """Run a pixel UNet on (N, C, res, res) with whatever camera inputs it was built for; returns its raw output.

    Extra input channels (``in_channels > out_channels``) get the per-pixel ray directions, a projection class
    embedding gets the pose features; ``camera=None`` gives zeros for both, the "camera dropped" input of training.
    ``keep_camera`` (N,) of 0/1 drops the camera per image.
    """
    x_in, class_labels = camera_unet_inputs(unet, x_t, camera, keep_camera)
    return unet(x_in, t, encoder_hidden_states=text_embeddings.to(unet.dtype), class_labels=class_labels).sample


def camera_unet_inputs(
    unet, x_t: Tensor, camera: CameraBatch | None, keep_camera: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """:func:`camera_unet_forward`'s UNet inputs: the sample (N, in_channels, res, res) and the class labels (N, P)
    or None, in the UNet's dtype."""
    n, res, dtype = x_t.shape[0], x_t.shape[-1], unet.dtype
    keep = None if keep_camera is None else keep_camera.to(x_t.device, torch.float32)
    x_in, class_labels = x_t, None
    if unet.config.in_channels > unet.config.out_channels:
        rays = ray_direction_channels(camera, n, res).to(x_t.device, x_t.dtype)
        x_in = torch.cat([x_t, rays if keep is None else rays * keep.view(-1, 1, 1, 1)], dim=1)
    harmonics = pose_harmonics(unet)
    if harmonics:
        pose = camera_pose_features(camera, n, harmonics).to(x_t.device)
        class_labels = (pose if keep is None else pose * keep[:, None]).to(dtype)
    return x_in.to(dtype), class_labels


class PixelPrior(DiffusersTextPrior):
    """Pixel-space epsilon-predictor. With ``camera_conditioning == "ray_directions"`` the UNet takes
    ``out_channels + 3`` inputs: the noisy image and the per-pixel world ray directions (zeros for no camera)."""

    def __init__(
        self,
        unet,
        tokenizer,
        text_encoder,
        alphas_cumprod: Tensor,
        spec: PixelPriorSpec,
        prediction_type: str = "epsilon",
    ):
        resolution = spec.resolution or unet.config.sample_size
        super().__init__(tokenizer, text_encoder, alphas_cumprod, resolution, prediction_type)
        self.unet = unet
        self.spec = spec
        extra = unet.config.in_channels - unet.config.out_channels
        if spec.camera_conditioning == "ray_directions" and extra != 3:
            raise UserError(
                f'prior.model: camera_conditioning is "ray_directions" but the UNet takes {extra} extra input '
                f"channels, not 3 — set camera_conditioning to null or use a camera-conditioned UNet"
            )
        if spec.camera_conditioning is None and extra != 0:
            raise UserError(
                f"prior.model: the UNet takes {extra} extra input channels but {SPEC_FILE} sets no "
                f'camera_conditioning — add "camera_conditioning": "ray_directions"'
            )
        if spec.camera_conditioning is None and pose_harmonics(unet):
            raise UserError(
                f"prior.model: the UNet has a camera pose embedding but {SPEC_FILE} sets no camera_conditioning — "
                f'add "camera_conditioning": "ray_directions"'
            )
        self.camera_aware = spec.camera_conditioning == "ray_directions"
        self.freeze()

    @classmethod
    def from_pretrained(
        cls,
        folder: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
    ) -> PixelPrior:
        """Load a pixel prior from a local folder (or a hub id in the same layout)."""
        from diffusers import UNet2DConditionModel

        offline = hub_offline() if local_files_only is None else local_files_only
        source = resolve_model_source(folder, PIXEL_COMPONENTS, offline)
        spec = PixelPriorSpec.read(Path(source)) if Path(source).is_dir() else PixelPriorSpec()
        dtype = resolve_dtype(dtype, device)
        tokenizer, text_encoder, alphas_cumprod, prediction_type = load_text_side(source, device, dtype, offline)
        unet = load_component(UNet2DConditionModel, source, "unet", offline, torch_dtype=dtype).to(device)
        return cls(unet, tokenizer, text_encoder, alphas_cumprod, spec, prediction_type).to(device)

    def validate_prompt(self, prompt: str, field: str = "prompt") -> None:
        check_vocabulary(prompt, self.spec.vocabulary, field)

    @property
    def accepts_view_suffixes(self) -> bool:
        from dreamnfsd.guidance.prompts import VIEW_SUFFIXES  # prompts imports priors.base; avoid a cycle at import

        vocab = self.spec.vocabulary
        return vocab is None or all(w in vocab for s in VIEW_SUFFIXES for w in prompt_words(s))

    def to_model_space(self, rgb: Tensor) -> Tensor:
        """rgb (B, 3, H, W) in [0, 1] -> (B, 3, res, res) in ``value_range``, float32, differentiable."""
        low, high = self.spec.value_range
        return low + (high - low) * resize_to(rgb, self.resolution).float()

    @torch.no_grad()
    def predict_noise(
        self, x_t: Tensor, t: Tensor, text_embeddings: Tensor, camera: CameraBatch | None = None
    ) -> Tensor:
        """(N, 3, res, res) epsilon in float32. ``camera`` (N cameras or None) is used only by camera-aware UNets."""
        x_in, labels = camera_unet_inputs(self.unet, x_t, camera if self.camera_aware else None)
        text = text_embeddings.to(self.unet.dtype)

        def forward(rows: slice) -> Tensor:
            cls = None if labels is None else labels[rows]
            return self.unet(x_in[rows], t[rows], encoder_hidden_states=text[rows], class_labels=cls).sample

        out = self.run_denoiser(forward, x_t.shape[0])
        return model_output_to_eps(out.float(), x_t.float(), t, self.alphas_cumprod, self.prediction_type)
