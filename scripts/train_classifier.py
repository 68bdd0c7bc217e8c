"""Train the shape/colour classifier on procedural renders (elevation -10..90 degrees, overhead views included).

.venv/bin/python scripts/train_classifier.py --threads 1 --minutes 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamnfsd.data import make_dataset  # noqa: E402
from dreamnfsd.eval.classifier import DEFAULT_DIR, ClassifierConfig, PrimitiveClassifier, save_classifier  # noqa: E402

ELEVATION = (-10.0, 90.0)


def augment(x: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
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


def evaluate(model: PrimitiveClassifier, data: dict) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        s, c = model(data["rgb"].float() / 255)
    model.train()
    return (s.argmax(-1) == data["shape_idx"]).float().mean().item(), (
        c.argmax(-1) == data["color_idx"]
    ).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=30_000)
    p.add_argument("--n-val", type=int, default=1_000)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_DIR)
    p.add_argument("--cache", type=Path, default=ROOT / "work_data")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    cache = args.cache / f"classifier_data_seed{args.seed}_n{args.n_train}.pt"
    if cache.exists():
        train = torch.load(cache)
    else:
        train = make_dataset(args.n_train, seed=args.seed + 2000, elevation_range=ELEVATION, degrade_prob=0.0)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(train, cache)
    val = make_dataset(args.n_val, seed=args.seed + 3000, elevation_range=ELEVATION, degrade_prob=0.0)

    model = PrimitiveClassifier(ClassifierConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    n, start, step = train["rgb"].shape[0], time.time(), 0
    total_s = 60 * args.minutes
    while (elapsed := time.time() - start) < total_s:
        # Cosine decay over the time budget, since the step count is unknown in advance.
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + torch.cos(torch.tensor(elapsed / total_s * torch.pi)).item())
        idx = torch.randint(n, (args.batch,), generator=g)
        x = augment(train["rgb"][idx].float() / 255, train["mask"][idx].float() / 255, g)
        s, c = model(x)
        loss = F.cross_entropy(s, train["shape_idx"][idx]) + F.cross_entropy(c, train["color_idx"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.4f} val shape/colour {evaluate(model, val)}", flush=True)
    shape_acc, color_acc = evaluate(model, val)
    print(f"final: {step} steps, val shape {shape_acc:.4f} colour {color_acc:.4f}", flush=True)
    save_classifier(
        model,
        args.out,
        {
            "train_steps": step,
            "val_shape_acc": shape_acc,
            "val_color_acc": color_acc,
            "elevation_range": list(ELEVATION),
            "seed": args.seed,
        },
    )


if __name__ == "__main__":
    main()
