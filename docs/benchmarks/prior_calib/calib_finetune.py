"""calib_finetune.py [train_builtin_prior.py options] --calib-weight L --calib-batch B --calib-n N: a probe, not the
package's training. The prior's fine-tune (dreamnfsd.guidance.priors.builtin_training, unchanged) with one term added
to its loss: the **size pulls of delta_C and of NFSD's delta_D on true renders**, squared, so that an object of the
true size is a point where neither direction asks to grow or shrink it.

For each calibration image (a primitive at scale 1, edges rounded as the training data's, random colour, view and
light) the script keeps I(1) and two directions dI: the uniform scale and the height (z stretch), both central
differences of renders at 1 ± 0.01. Each training step draws B of them, noises them at t uniform in [200, 980] (where
the size is decided and delta_D is eps(null) - eps(p_neg)), predicts eps(y), eps(null) and eps(p_neg) with the
camera, and adds

    L * sum over shapes, terms (delta_C, delta_D) and directions of
        (mean over the shape's images of -<w(t) term, dI> / 100)^2

to the diffusion loss (w = 1 - alpha_bar, as the probe and the guidance weigh), the square estimated without bias as
the product of the means of two halves of the shape's images (unbounded below: the run it was written for blew up,
see README.md). 100 is the size of delta_C's pull on a 6%-small cube.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import train_builtin_prior as script  # noqa: E402

from dreamnfsd.data.primitives import COLORS, SHAPES, make_cameras, render_primitives, sample_view_angles  # noqa: E402
from dreamnfsd.guidance.core import DEFAULT_NEGATIVE  # noqa: E402
from dreamnfsd.guidance.priors import builtin_training as bt  # noqa: E402
from dreamnfsd.guidance.priors.builtin import MAX_LENGTH, predict_noise  # noqa: E402

DS = 0.01


def calibration_set(n: int, seed: int, edge_round: float) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape_idx = torch.arange(n) % len(SHAPES)
    color_idx = torch.randint(len(COLORS), (n,), generator=g)
    az, el = sample_view_angles(n, g)
    radii = edge_round * torch.rand(n, generator=g)
    light_seed = int(torch.randint(2**31, (1,), generator=g))

    def render(scale: float, stretch: torch.Tensor | None) -> torch.Tensor:
        out = render_primitives(
            shape_idx,
            color_idx,
            az,
            el,
            scale=torch.tensor(scale),
            stretch=stretch,
            rounding=radii,
            generator=torch.Generator().manual_seed(light_seed),  # the same lights in every render
        )
        return out["rgb"] * 2 - 1

    x = render(1.0, None)
    d_size = (render(1 + DS, None) - render(1 - DS, None)) / (2 * DS)
    up, down = torch.tensor([1.0, 1.0, 1 + DS]), torch.tensor([1.0, 1.0, 1 - DS])
    d_height = (render(1.0, up) - render(1.0, down)) / (2 * DS)
    captions = [f"a {COLORS[c]} {SHAPES[s]}" for s, c in zip(shape_idx.tolist(), color_idx.tolist())]
    return {
        "x": x,
        "dirs": torch.stack([d_size, d_height], 1),
        "shape_idx": shape_idx,
        "az": az,
        "el": el,
        "captions": captions,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib-weight", type=float, default=1.0)
    parser.add_argument("--calib-batch", type=int, default=10)
    parser.add_argument("--calib-n", type=int, default=2000)
    own, rest = parser.parse_known_args()
    cfg = script.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(cfg.threads)
    cal = calibration_set(own.calib_n, cfg.seed + 5000, max(cfg.edge_round, 0.0))
    g = torch.Generator().manual_seed(cfg.seed + 6000)
    plain_loss = bt.diffusion_loss
    log_every, calls, running = cfg.log_every, [0], [0.0]

    def loss_with_calibration(model, x0, ids, camera, keep_cam, noise, t, run_cfg):
        loss = plain_loss(model, x0, ids, camera, keep_cam, noise, t, run_cfg)
        per_shape = own.calib_batch // len(SHAPES)  # even: two halves per shape
        idx = torch.cat(
            [
                torch.nonzero(cal["shape_idx"] == k).flatten()[
                    torch.randperm(own.calib_n // len(SHAPES), generator=g)[:per_shape]
                ]
                for k in range(len(SHAPES))
            ]
        )
        x, dirs = cal["x"][idx], cal["dirs"][idx]
        tc = torch.randint(200, 981, (len(idx),), generator=g)  # where NFSD's delta_D is eps(null) - eps(p_neg)
        eps0 = torch.randn(x.shape, generator=g)
        noisy = model.scheduler.add_noise(x, eps0, tc)
        tok = model.tokenizer
        ids_y = tok(
            [cal["captions"][i] for i in idx.tolist()],
            padding="max_length",
            max_length=MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        ids_n = tok([""] * len(idx), padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
        ids_neg = tok(
            [DEFAULT_NEGATIVE] * len(idx),
            padding="max_length",
            max_length=MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        emb = model.text_encoder(torch.cat([ids_y, ids_n, ids_neg])).last_hidden_state
        cams = make_cameras(torch.cat([cal["az"][idx]] * 3), torch.cat([cal["el"][idx]] * 3), 32)
        eps_y, eps_n, eps_neg = predict_noise(model.unet, torch.cat([noisy] * 3), torch.cat([tc] * 3), emb, cams).chunk(
            3
        )
        terms = torch.stack([eps_y - eps_n, eps_n - eps_neg], 1)  # delta_C, delta_D: (B, 2, 3, H, W)
        w = (1 - model.scheduler.alphas_cumprod[tc]).view(-1, 1, 1, 1, 1, 1)
        pulls = -(w * terms[:, :, None] * dirs[:, None]).sum((3, 4, 5)) / 100.0  # (B, 2 terms, 2 directions)
        # Per shape, the product of the mean pulls of two halves of its images: an unbiased estimate of the squared
        # mean pull, whose gradient does not also shrink the pulls' spread (the square of one noisy mean would).
        halves = pulls.view(len(SHAPES), 2, per_shape // 2, *pulls.shape[1:]).mean(2)  # (shapes, 2, terms, dirs)
        term = (halves[:, 0] * halves[:, 1]).sum()
        calls[0] += 1
        running[0] = 0.98 * running[0] + 0.02 * term.item() if calls[0] > 1 else term.item()
        if calls[0] % log_every == 0:
            logging.info("calibration term %.4f (running %.4f)", term.item(), running[0])
        return loss + own.calib_weight * term

    bt.diffusion_loss = loss_with_calibration
    bt.train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
