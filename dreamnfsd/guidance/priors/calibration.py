"""Size calibration of the built-in prior's guidance directions: a term of the fine-tune's loss
(:mod:`dreamnfsd.guidance.priors.builtin_training`, the ``calib_*`` options).

A guidance term moves an object's size, to first order, by its *size pull* ``-<w(t) term, dI/ds>`` on a render I(s)
of the object at scale s (:mod:`dreamnfsd.eval.size_pull`). A prior whose delta_C and NFSD delta_D pull a true-size
cube outward makes 3D runs grow cubes past their true size, whatever the renderer does. The calibration holds the
starting prior (the *teacher*) in place and moves only those pulls: on fixed noisy calibration images, the targets
are the teacher's own delta_C, delta_D and eps(null), with delta_C and delta_D shifted along each image's size and
height directions (the two smallest changes that move the pulls) by the amounts that bring each calibrated shape's
mean pulls to 0. The loss is an MSE against the targets plus each image's pulls against its target's: in pixels the
shift is a small part of the residual, so the few directions that carry the size are weighed apart. Shapes left out
keep the teacher's unshifted predictions as targets, so the term holds them where they were.

Calibration images: primitives at scale 1 ± ``scale_spread`` with edges rounded up to ``edge_round`` (a trained
surface's edges are never sharp), a random colour, the prior's training views and lights; t uniform in [20, 980]
(delta_D's targets only where t >= 200, where NFSD uses it).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from dreamnfsd.data.primitives import COLORS, OFFSET_UNIT, SHAPES, make_cameras, render_primitives, sample_view_angles
from dreamnfsd.guidance.core import DEFAULT_NEGATIVE
from dreamnfsd.guidance.priors.builtin import PriorComponents, encode_prompts, predict_noise

log = logging.getLogger(__name__)

DS = 0.01  # central differences of renders at 1 +- DS
PULL_UNIT = 100.0  # pulls are reported in hundreds (delta_C's pull on a 6%-small cube is about 1)
NFSD_T = 200  # NFSD's delta_D is eps(null) - eps(p_neg) from here on


def calibration_set(n: int, seed: int, edge_round: float, scale_spread: float, offset: tuple[str, ...] = ()) -> dict:
    """n true renders (shapes in turn) with their size and height directions, and for the shapes named in
    ``offset`` a third: the surface moved along its normals (a torus's tube thickness, which size and height cannot
    change alone; for a cube it is the size plus rounder edges, which the cube should keep free).

    Returns x (n, 3, 32, 32) in [-1, 1]; dirs (n, D, 3, 32, 32), d image / d relative scale, d image / d relative
    height (and with ``offset`` d image / d offset per OFFSET_UNIT, zero for the other shapes' images); n_dirs (n,)
    the directions of each image (2 or 3); shape_idx (n,); az, el (n,) radians; captions (n strings); scales (n,).
    """
    g = torch.Generator().manual_seed(seed)
    shape_idx = torch.arange(n) % len(SHAPES)
    color_idx = torch.randint(len(COLORS), (n,), generator=g)
    az, el = sample_view_angles(n, g)
    radii = edge_round * torch.rand(n, generator=g)
    light_seed = int(torch.randint(2**31, (1,), generator=g))
    scales = 1 + scale_spread * (2 * torch.rand(n, generator=g) - 1) if scale_spread else torch.ones(n)

    def render(scale: float, stretch: Tensor | None, offset: Tensor | None = None) -> Tensor:
        out = render_primitives(
            shape_idx,
            color_idx,
            az,
            el,
            scale=scale * scales,
            stretch=stretch,
            rounding=radii,
            offset=offset,
            generator=torch.Generator().manual_seed(light_seed),  # the same lights in every render
        )
        return out["rgb"] * 2 - 1

    x = render(1.0, None)
    d_size = (render(1 + DS, None) - render(1 - DS, None)) / (2 * DS)
    up, down = torch.tensor([1.0, 1.0, 1 + DS]), torch.tensor([1.0, 1.0, 1 - DS])
    d_height = (render(1.0, up) - render(1.0, down)) / (2 * DS)
    dirs = [d_size, d_height]
    has_offset = torch.tensor([SHAPES[k] in offset for k in shape_idx.tolist()])
    if offset:
        d = torch.tensor(DS * OFFSET_UNIT)
        d_offset = (render(1.0, None, d) - render(1.0, None, -d)) / (2 * DS)
        dirs.append(d_offset * has_offset.view(-1, 1, 1, 1))  # a zero direction has zero pull: not held
    captions = [f"a {COLORS[c]} {SHAPES[s]}" for s, c in zip(shape_idx.tolist(), color_idx.tolist())]
    return {
        "x": x,
        "dirs": torch.stack(dirs, 1),
        "n_dirs": 2 + has_offset.long(),
        "shape_idx": shape_idx,
        "az": az,
        "el": el,
        "captions": captions,
        "scales": scales,
    }


def predict_three(
    model: PriorComponents, noisy: Tensor, t: Tensor, captions: list[str], az: Tensor, el: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """eps(y), eps(null), eps(p_neg) of B noisy images (B, 3, 32, 32) at t (B,), in one call with the camera."""
    b = len(captions)
    emb = encode_prompts(model, [*captions, *[""] * b, *[DEFAULT_NEGATIVE] * b])
    cams = make_cameras(torch.cat([az] * 3), torch.cat([el] * 3), 32)
    eps_y, eps_n, eps_neg = predict_noise(model.unet, torch.cat([noisy] * 3), torch.cat([t] * 3), emb, cams).chunk(3)
    return eps_y, eps_n, eps_neg


def mean_pulls(delta: Tensor, dirs: Tensor, w: Tensor) -> Tensor:
    """Per image, the pull -<w delta, dI> / PULL_UNIT of a direction delta (B, 3, H, W) along each dI of dirs
    (B, D, 3, H, W), with weights w (B,): (B, D)."""
    return -(w.view(-1, 1, 1, 1, 1) * delta[:, None] * dirs).sum((2, 3, 4)) / PULL_UNIT


def zeroing_shift(delta: Tensor, dirs: Tensor, w: Tensor) -> Tensor:
    """The shift (B, 3, H, W) of delta (B, 3, H, W) along each image's dirs (B, D, 3, H, W), by one coefficient per
    direction shared by the B images, that brings their mean pulls to 0."""
    m = mean_pulls(delta, dirs, w).mean(0)  # (D,)
    # pull_a(delta + sum_b c_b d_b) = m_a - sum_b c_b G_ba, with G_ba the mean pull of -d_b along d_a
    gram = torch.stack([mean_pulls(-dirs[:, b], dirs, w).mean(0) for b in range(dirs.shape[1])])
    # With the offset, a sphere's size and offset are one direction and its Gram singular: the smallest such shift.
    c = torch.linalg.solve(gram.T, m) if dirs.shape[1] == 2 else torch.linalg.pinv(gram.T, rtol=1e-3) @ m
    return (c.view(1, -1, 1, 1, 1) * dirs).sum(1)


def anchored_targets(
    teacher: PriorComponents, cal: dict, seed: int, shapes: tuple[str, ...] = SHAPES, chunk: int = 64
) -> dict:
    """The teacher's predictions on every calibration image of ``cal`` (:func:`calibration_set`) at a fixed t and
    noise, with delta_C and delta_D shifted to zero the mean pulls of each of ``shapes`` (the other shapes keep the
    teacher's own).

    Returns t (n,), w (n,) = 1 - alpha_bar, noisy (n, 3, 32, 32), eps_n, delta_C, delta_D (n, 3, 32, 32), mask_D (n,)
    bool (t >= NFSD_T) and the targets' pulls pull_C, pull_D (n, D).
    """
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
    dirs, masks = cal["dirs"], [torch.ones(n, dtype=torch.bool), t >= NFSD_T]
    targets = []
    for name, delta, mask in zip(("delta_C", "delta_D"), (eps_y - eps_n, eps_n - eps_neg), masks):
        shift = torch.zeros_like(delta)
        for k, shape in enumerate(SHAPES):
            sel = (cal["shape_idx"] == k) & mask
            d = dirs[sel][:, : int(cal["n_dirs"][cal["shape_idx"] == k].max())]  # this shape's directions
            if shape in shapes and sel.any():
                shift[sel] = zeroing_shift(delta[sel], d, w[sel])
            log.info("teacher %s %-8s mean pulls %s", name, shape, mean_pulls(delta[sel], d, w[sel]).mean(0))
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


def draw(cal: dict, batch: int, generator: torch.Generator) -> Tensor:
    """Indices (batch // shapes * shapes,) of calibration images, the same number of each shape."""
    per_shape, n_shape = batch // len(SHAPES), len(cal["x"]) // len(SHAPES)
    return torch.cat(
        [
            torch.nonzero(cal["shape_idx"] == k).flatten()[torch.randperm(n_shape, generator=generator)[:per_shape]]
            for k in range(len(SHAPES))
        ]
    )


def anchor_loss(model: PriorComponents, cal: dict, idx: Tensor, pull_weight: float) -> Tensor:
    """The calibration term (scalar) on images ``idx`` of ``cal`` (a calibration set with its anchored targets): the
    MSE of delta_C, delta_D (t >= NFSD_T) and eps(null) against the targets, plus ``pull_weight`` times the MSE of
    each image's delta_C and delta_D pulls against its target's (averaged over the image's own directions)."""
    captions = [cal["captions"][i] for i in idx.tolist()]
    noisy, t, az, el = (cal[k][idx] for k in ("noisy", "t", "az", "el"))
    eps_y, eps_n, eps_neg = predict_three(model, noisy, t, captions, az, el)
    mask = cal["mask_D"][idx].float()
    delta_c, delta_d = eps_y - eps_n, eps_n - eps_neg
    anchor = (
        ((delta_c - cal["delta_C"][idx]) ** 2).mean()
        + ((delta_d - cal["delta_D"][idx]) ** 2 * mask.view(-1, 1, 1, 1)).mean()
        + ((eps_n - cal["eps_n"][idx]) ** 2).mean()
    )
    if not pull_weight:
        return anchor
    dirs, w, n_dirs = cal["dirs"][idx], cal["w"][idx], cal["n_dirs"][idx]
    err_c = ((mean_pulls(delta_c, dirs, w) - cal["pull_C"][idx]) ** 2).sum(1)
    err_d = ((mean_pulls(delta_d, dirs, w) - cal["pull_D"][idx]) ** 2).sum(1) * mask
    return anchor + pull_weight * ((err_c + err_d) / n_dirs).mean()
