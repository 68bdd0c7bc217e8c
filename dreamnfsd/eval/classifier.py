"""A small CNN that names the shape and colour of a 32x32 primitive render; used to score priors and 3D results."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dreamnfsd.data import COLORS, SHAPES

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "assets" / "classifier"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass
class ClassifierConfig:
    widths: tuple[int, ...] = (32, 64, 96)
    resolution: int = 32
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS


class PrimitiveClassifier(nn.Module):
    """Conv stages (two 3x3 convs + 2x downsample each), global average pool, two linear heads."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 3
        for w in cfg.widths:
            layers += [
                nn.Conv2d(c_in, w, 3, padding=1),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.shape_head = nn.Linear(c_in, len(cfg.shapes))
        self.color_head = nn.Linear(c_in, len(cfg.colors))

    def forward(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """rgb (B, 3, H, W) in [0, 1] -> shape logits (B, S), colour logits (B, C)."""
        if rgb.shape[-1] != self.cfg.resolution or rgb.shape[-2] != self.cfg.resolution:
            rgb = F.interpolate(rgb, size=self.cfg.resolution, mode="area")
        h = self.features(rgb * 2 - 1).mean(dim=(2, 3))
        return self.shape_head(h), self.color_head(h)


def save_classifier(model: PrimitiveClassifier, folder: str | Path = DEFAULT_DIR, extra: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / WEIGHTS)
    (folder / CONFIG).write_text(json.dumps({**asdict(model.cfg), **(extra or {})}, indent=2) + "\n")


def load_classifier(folder: str | Path = DEFAULT_DIR) -> PrimitiveClassifier:
    """The shipped classifier (eval mode, CPU)."""
    folder = Path(folder)
    raw = json.loads((folder / CONFIG).read_text())
    fields = ClassifierConfig.__dataclass_fields__
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
    cfg = ClassifierConfig(**kwargs)
    model = PrimitiveClassifier(cfg)
    model.load_state_dict(load_file(folder / WEIGHTS))
    return model.eval()


@torch.no_grad()
def classify(rgb: Tensor, model: PrimitiveClassifier | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Name shape and colour of images rgb (B, 3, H, W) in [0, 1].

    Returns shape_idx (B,) into SHAPES, color_idx (B,) into COLORS, and probs {"shape": (B, S), "color": (B, C)}.
    """
    model = model if model is not None else _default_model()
    shape_logits, color_logits = model(rgb.float())
    probs = {"shape": shape_logits.softmax(-1), "color": color_logits.softmax(-1)}
    return probs["shape"].argmax(-1), probs["color"].argmax(-1), probs


_CACHE: dict[str, PrimitiveClassifier] = {}


def _default_model() -> PrimitiveClassifier:
    if "default" not in _CACHE:
        _CACHE["default"] = load_classifier()
    return _CACHE["default"]
