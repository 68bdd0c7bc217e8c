"""calib_finetune.py [train_builtin_prior.py options] --calib-weight L --calib-batch B --calib-n N: a probe, not the
package's training. The prior's fine-tune (dreamnfsd.guidance.priors.builtin_training) with one term added
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
the product of the means of two halves of the shape's images (`--estimator halves`; unbounded below: the run it was
written for blew up, see README.md). 100 is the size of delta_C's pull on a 6%-small cube.

`--estimator running` (the second attempt) is bounded instead: each mean pull is kept in a running average over
steps (decay `--calib-decay`), and the term is that average, held fixed, times the step's mean, so its gradient is
the average times the gradient of the step's mean: the gradient of half the squared mean pull, with nothing for the
network to gain from spreading the pulls; the network shrank the directions themselves instead (README.md).
The third attempt, anchored to the starting prior, worked and moved into the package's training
(dreamnfsd.guidance.priors.calibration; `scripts/train_builtin_prior.py --calib-weight`), which gives the same bits
as this script's `--estimator anchor` did (README.md).
`--calib-edge-round R` rounds the calibration images' edges by a radius uniform in [0, R] (default: as the training
data's).
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

from dreamnfsd.data.primitives import SHAPES  # noqa: E402
from dreamnfsd.guidance.priors import builtin_training as bt  # noqa: E402
from dreamnfsd.guidance.priors.calibration import calibration_set, draw, mean_pulls, predict_three  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib-weight", type=float, default=1.0)
    parser.add_argument("--calib-batch", type=int, default=10)
    parser.add_argument("--calib-n", type=int, default=2000)
    parser.add_argument("--estimator", choices=("halves", "running"), default="halves")
    parser.add_argument("--calib-decay", type=float, default=0.8)
    parser.add_argument("--calib-edge-round", type=float, default=None)
    own, rest = parser.parse_known_args()
    cfg = script.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(cfg.threads)
    edge = cfg.edge_round if own.calib_edge_round is None else own.calib_edge_round
    cal = calibration_set(own.calib_n, cfg.seed + 5000, max(edge, 0.0), 0.0)
    g = torch.Generator().manual_seed(cfg.seed + 6000)
    plain_loss = bt.diffusion_loss
    log_every, calls, running = cfg.log_every, [0], [0.0]
    average: list[torch.Tensor] = []  # the running mean pulls, (shapes, terms, directions)
    per_shape = own.calib_batch // len(SHAPES)  # even: two halves per shape

    def pull_term(model, idx: torch.Tensor) -> torch.Tensor:
        x, dirs = cal["x"][idx], cal["dirs"][idx]
        tc = torch.randint(200, 981, (len(idx),), generator=g)  # where NFSD's delta_D is eps(null) - eps(p_neg)
        noisy = model.scheduler.add_noise(x, torch.randn(x.shape, generator=g), tc)
        captions = [cal["captions"][i] for i in idx.tolist()]
        eps_y, eps_n, eps_neg = predict_three(model, noisy, tc, captions, cal["az"][idx], cal["el"][idx])
        w = 1 - model.scheduler.alphas_cumprod[tc]
        pulls = torch.stack([mean_pulls(eps_y - eps_n, dirs, w), mean_pulls(eps_n - eps_neg, dirs, w)], 1)
        if own.estimator == "halves":
            # Per shape, the product of the mean pulls of two halves of its images: an unbiased estimate of the
            # squared mean pull, whose gradient does not also shrink the pulls' spread (the square of one noisy mean
            # would).
            halves = pulls.view(len(SHAPES), 2, per_shape // 2, *pulls.shape[1:]).mean(2)  # (shapes, 2, terms, dirs)
            return (halves[:, 0] * halves[:, 1]).sum()
        means = pulls.view(len(SHAPES), per_shape, *pulls.shape[1:]).mean(1)  # (shapes, terms, dirs)
        d = own.calib_decay
        average[:] = [d * average[0] + (1 - d) * means.detach() if average else means.detach()]
        return (average[0] * means).sum()

    def loss_with_calibration(model, x0, ids, camera, keep_cam, noise, t, run_cfg):
        loss = plain_loss(model, x0, ids, camera, keep_cam, noise, t, run_cfg)
        term = pull_term(model, draw(cal, own.calib_batch, g))
        calls[0] += 1
        running[0] = 0.98 * running[0] + 0.02 * term.item() if calls[0] > 1 else term.item()
        if calls[0] % log_every == 0:
            logging.info("calibration term %.4f (running %.4f)", term.item(), running[0])
            for k, name in enumerate(SHAPES) if average else ():
                a = average[0][k]
                logging.info(
                    "  %-8s delta_C scale %+.3f height %+.3f | delta_D scale %+.3f height %+.3f",
                    name,
                    a[0, 0],
                    a[0, 1],
                    a[1, 0],
                    a[1, 1],
                )
        return loss + own.calib_weight * term

    bt.diffusion_loss = loss_with_calibration
    bt.train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
