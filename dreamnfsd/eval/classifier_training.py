"""Training of the shape/colour classifier (:mod:`dreamnfsd.eval.classifier`) on procedural renders.

Views span elevation -10..90 degrees (overhead ones included) and are augmented so that the classifier also reads
imperfect diffusion samples. ``scripts/train_classifier.py`` is the command line.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamnfsd.data import make_dataset
from dreamnfsd.eval.classifier import DEFAULT_DIR, ClassifierConfig, PrimitiveClassifier, save_classifier
from dreamnfsd.utils.files import atomic_output

log = logging.getLogger(__name__)

ELEVATION = (-10.0, 90.0)


@dataclass
class ClassifierTrainConfig:
    seed: int = 0
    n_train: int = 30_000  # rendered training images (cached in cache_dir)
    n_val: int = 1_000
    minutes: float = 8.0  # wall-clock budget; the learning rate decays over it
    batch: int = 128
    lr: float = 2e-3
    threads: int = 1
    out: Path = DEFAULT_DIR
    cache_dir: Path = Path("work_data")
    log_every: int = 200


def augment(x: Tensor, mask: Tensor, g: torch.Generator) -> Tensor:
    """Jitter that keeps labels valid, so the classifier also reads imperfect diffusion samples.

    x (B, 3, H, W) in [0, 1], mask (B, 1, H, W) coverage. Half the images get a light tinted background (early prior
    samples drift off white), then brightness, occasional blur and grain.
    """
    b = x.shape[0]
    tint = torch.rand(b, 1, 1, 1, generator=g) < 0.5
    bg = 1 - 0.35 * torch.rand(b, 3, 1, 1, generator=g)
    x = torch.where(tint, x + (1 - mask) * (bg - 1), x)
    x = x * (0.85 + 0.25 * torch.rand(b, 1, 1, 1, generator=g))
    blur = torch.rand(b, generator=g) < 0.3
    if blur.any():
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = x + 0.08 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


@torch.no_grad()
def evaluate(model: PrimitiveClassifier, data: dict) -> tuple[float, float]:
    """(shape accuracy, colour accuracy) on ``data`` (rgb uint8 (N, 3, H, W), shape_idx, color_idx)."""
    model.eval()
    s, c = model(data["rgb"].float() / 255)
    model.train()
    shape_acc = (s.argmax(-1) == data["shape_idx"]).float().mean().item()
    color_acc = (c.argmax(-1) == data["color_idx"]).float().mean().item()
    return shape_acc, color_acc


def load_train_data(cfg: ClassifierTrainConfig) -> dict:
    """The training renders, cached in ``cfg.cache_dir`` (rendering them takes minutes)."""
    cache = cfg.cache_dir / f"classifier_data_seed{cfg.seed}_n{cfg.n_train}.pt"
    if cache.exists():
        return torch.load(cache)
    data = make_dataset(cfg.n_train, seed=cfg.seed + 2000, elevation_range=ELEVATION, degrade_prob=0.0)
    with atomic_output(cache) as tmp:
        torch.save(data, tmp)
    return data


def cosine_lr(base: float, elapsed: float, total: float) -> float:
    """Cosine decay over the time budget, since the step count is unknown in advance."""
    return base * 0.5 * (1 + math.cos(math.pi * elapsed / total))


def train_classifier(cfg: ClassifierTrainConfig) -> PrimitiveClassifier:
    """Train for ``cfg.minutes`` and save the model with its validation accuracies to ``cfg.out``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    train = load_train_data(cfg)
    val = make_dataset(cfg.n_val, seed=cfg.seed + 3000, elevation_range=ELEVATION, degrade_prob=0.0)

    model = PrimitiveClassifier(ClassifierConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n, start, step = train["rgb"].shape[0], time.time(), 0
    total_s = 60 * cfg.minutes
    while (elapsed := time.time() - start) < total_s:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, elapsed, total_s)
        idx = torch.randint(n, (cfg.batch,), generator=g)
        x = augment(train["rgb"][idx].float() / 255, train["mask"][idx].float() / 255, g)
        s, c = model(x)
        loss = F.cross_entropy(s, train["shape_idx"][idx]) + F.cross_entropy(c, train["color_idx"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % cfg.log_every == 0:
            log.info("step %d loss %.4f val shape/colour %s", step, loss.item(), evaluate(model, val))
    shape_acc, color_acc = evaluate(model, val)
    log.info("final: %d steps, val shape %.4f colour %.4f", step, shape_acc, color_acc)
    extra = {
        "train_steps": step,
        "val_shape_acc": shape_acc,
        "val_color_acc": color_acc,
        "elevation_range": list(ELEVATION),
        "seed": cfg.seed,
    }
    save_classifier(model, cfg.out, extra)
    return model
