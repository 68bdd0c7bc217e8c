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
the product of the means of two halves of the shape's images (`--estimator halves`; unbounded below: the run it was
written for blew up, see README.md). 100 is the size of delta_C's pull on a 6%-small cube.

`--estimator running` (the second attempt) is bounded instead: each mean pull is kept in a running average over
steps (decay `--calib-decay`), and the term is that average, held fixed, times the step's mean, so its gradient is
the average times the gradient of the step's mean: the gradient of half the squared mean pull, with nothing for the
network to gain from spreading the pulls; the network shrank the directions themselves instead (README.md).
`--estimator anchor` (the third) holds the directions in place instead: the starting prior's own predictions on
fixed noisy calibration images (scales in 1 +- `--calib-scale-spread`), shifted along each image's size and height
directions just enough to zero each shape's mean pulls (`anchored_targets`), are the targets of an MSE on delta_C,
delta_D and eps(null); `--pull-weight` adds each image's pulls against its target's.
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

from dreamnfsd.data.primitives import COLORS, SHAPES, make_cameras, render_primitives, sample_view_angles  # noqa: E402
from dreamnfsd.guidance.core import DEFAULT_NEGATIVE  # noqa: E402
from dreamnfsd.guidance.priors import builtin_training as bt  # noqa: E402
from dreamnfsd.guidance.priors.builtin import encode_prompts, load_components, predict_noise  # noqa: E402

DS = 0.01


def calibration_set(n: int, seed: int, edge_round: float, scale_spread: float = 0.0) -> dict:
    """n true renders (shapes in turn) at scale 1, or uniform in 1 +- scale_spread, with their size and height
    directions (d image / d relative scale)."""
    g = torch.Generator().manual_seed(seed)
    shape_idx = torch.arange(n) % len(SHAPES)
    color_idx = torch.randint(len(COLORS), (n,), generator=g)
    az, el = sample_view_angles(n, g)
    radii = edge_round * torch.rand(n, generator=g)
    light_seed = int(torch.randint(2**31, (1,), generator=g))
    scales = 1 + scale_spread * (2 * torch.rand(n, generator=g) - 1) if scale_spread else torch.ones(n)

    def render(scale: float, stretch: torch.Tensor | None) -> torch.Tensor:
        out = render_primitives(
            shape_idx,
            color_idx,
            az,
            el,
            scale=scale * scales,
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
        "scales": scales,
    }


def predict_three(model, noisy: torch.Tensor, t: torch.Tensor, captions: list[str], az, el) -> tuple:
    """eps(y), eps(null), eps(p_neg) of B noisy images (B, 3, 32, 32) at t (B,), in one call with the camera."""
    b = len(captions)
    emb = encode_prompts(model, [*captions, *[""] * b, *[DEFAULT_NEGATIVE] * b])
    cams = make_cameras(torch.cat([az] * 3), torch.cat([el] * 3), 32)
    return predict_noise(model.unet, torch.cat([noisy] * 3), torch.cat([t] * 3), emb, cams).chunk(3)


def mean_pulls(delta: torch.Tensor, dirs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per image, the pull -<w delta, dI> / 100 of a direction delta (B, 3, H, W) along each dI of dirs
    (B, D, 3, H, W): (B, D)."""
    return -(w.view(-1, 1, 1, 1, 1) * delta[:, None] * dirs).sum((2, 3, 4)) / 100.0


def anchored_targets(teacher, cal: dict, seed: int, chunk: int = 64) -> dict:
    """The teacher's (the starting prior's) delta_C and delta_D on every calibration image at a fixed t in [20, 980]
    and noise, each shifted along the image's size and height directions by the amounts, one pair per shape and
    term, that bring the shape's mean pulls to 0: the targets of ``--estimator anchor``. delta_D only where
    t >= 200 (below, NFSD uses eps(null) itself)."""
    g = torch.Generator().manual_seed(seed)
    n = len(cal["x"])
    t = torch.randint(20, 981, (n,), generator=g)
    noisy = teacher.scheduler.add_noise(cal["x"], torch.randn(cal["x"].shape, generator=g), t)
    outs = []
    with torch.no_grad():
        for i in range(0, n, chunk):
            sl = slice(i, i + chunk)
            outs.append(predict_three(teacher, noisy[sl], t[sl], cal["captions"][sl], cal["az"][sl], cal["el"][sl]))
    eps_y, eps_n, eps_neg = (torch.cat(o) for o in zip(*outs))
    w = 1 - teacher.scheduler.alphas_cumprod[t]
    dirs, masks = cal["dirs"], [torch.ones(n, dtype=torch.bool), t >= 200]
    targets = []
    for delta, mask in zip((eps_y - eps_n, eps_n - eps_neg), masks):
        shift = torch.zeros_like(delta)
        for k, name in enumerate(SHAPES):
            sel = (cal["shape_idx"] == k) & mask
            d, ws = dirs[sel], w[sel]
            m = mean_pulls(delta[sel], d, ws).mean(0)  # (D,)
            # Gram of the directions under the pull: pull_a(delta + sum_b c_b d_b) = m_a - sum_b c_b G_ba
            gram = torch.stack([mean_pulls(-d[:, b], d, ws).mean(0) for b in range(d.shape[1])])
            c = torch.linalg.solve(gram.T, m)
            shift[sel] = (c.view(1, -1, 1, 1, 1) * d).sum(1)
            logging.info("teacher %-8s pulls %s -> shift coefficients %s", name, m.tolist(), c.tolist())
        targets.append(delta + shift)
    return {
        "t": t,
        "w": w,
        "noisy": noisy,
        "eps_n": eps_n,
        "delta_C": targets[0],
        "delta_D": targets[1],
        "mask_D": masks[1],
        "pull_C": mean_pulls(targets[0], dirs, w),
        "pull_D": mean_pulls(targets[1], dirs, w),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib-weight", type=float, default=1.0)
    parser.add_argument("--calib-batch", type=int, default=10)
    parser.add_argument("--calib-n", type=int, default=2000)
    parser.add_argument("--estimator", choices=("halves", "running", "anchor"), default="halves")
    parser.add_argument("--calib-decay", type=float, default=0.8)
    parser.add_argument("--calib-edge-round", type=float, default=None)
    parser.add_argument("--calib-scale-spread", type=float, default=0.0)
    parser.add_argument("--pull-weight", type=float, default=0.0)
    own, rest = parser.parse_known_args()
    cfg = script.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(cfg.threads)
    edge = cfg.edge_round if own.calib_edge_round is None else own.calib_edge_round
    cal = calibration_set(own.calib_n, cfg.seed + 5000, max(edge, 0.0), own.calib_scale_spread)
    if own.estimator == "anchor":
        assert cfg.init_from is not None, "--estimator anchor takes its targets from the --init-from prior"
        teacher = load_components(cfg.init_from)
        cal.update(anchored_targets(teacher, cal, cfg.seed + 7000))
        del teacher
    g = torch.Generator().manual_seed(cfg.seed + 6000)
    plain_loss = bt.diffusion_loss
    log_every, calls, running = cfg.log_every, [0], [0.0]
    average: list[torch.Tensor] = []  # the running mean pulls, (shapes, terms, directions)
    parts: list[float] = []  # the anchor term's MSE and pull parts, for the log
    per_shape = own.calib_batch // len(SHAPES)  # even: two halves per shape

    def draw() -> torch.Tensor:
        return torch.cat(
            [
                torch.nonzero(cal["shape_idx"] == k).flatten()[
                    torch.randperm(own.calib_n // len(SHAPES), generator=g)[:per_shape]
                ]
                for k in range(len(SHAPES))
            ]
        )

    def anchor_term(model, idx: torch.Tensor) -> torch.Tensor:
        eps_y, eps_n, eps_neg = predict_three(
            model,
            cal["noisy"][idx],
            cal["t"][idx],
            [cal["captions"][i] for i in idx.tolist()],
            cal["az"][idx],
            cal["el"][idx],
        )
        mask = cal["mask_D"][idx].float()
        delta_c, delta_d = eps_y - eps_n, eps_n - eps_neg
        anchor = (
            ((delta_c - cal["delta_C"][idx]) ** 2).mean()
            + ((delta_d - cal["delta_D"][idx]) ** 2 * mask.view(-1, 1, 1, 1)).mean()
            + ((eps_n - cal["eps_n"][idx]) ** 2).mean()
        )
        if not own.pull_weight:
            return anchor
        # Each image's pulls against its target's: the few directions that carry the size, weighed apart from the
        # pixels (in the MSE above the shift is a small part of the residual, and the first run hardly moved).
        dirs, w = cal["dirs"][idx], cal["w"][idx]
        pull = ((mean_pulls(delta_c, dirs, w) - cal["pull_C"][idx]) ** 2).mean() + (
            (mean_pulls(delta_d, dirs, w) - cal["pull_D"][idx]) ** 2 * mask[:, None]
        ).mean()
        parts[:] = [anchor.item(), pull.item()]
        return anchor + own.pull_weight * pull

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
        idx = draw()
        term = anchor_term(model, idx) if own.estimator == "anchor" else pull_term(model, idx)
        calls[0] += 1
        running[0] = 0.98 * running[0] + 0.02 * term.item() if calls[0] > 1 else term.item()
        if calls[0] % log_every == 0:
            logging.info("calibration term %.4f (running %.4f) %s", term.item(), running[0], parts)
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
