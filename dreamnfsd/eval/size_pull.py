"""Which object size a prior's guidance prefers, measured on exact renders of a primitive.

A primitive rendered at scale s gives an image I(s). A guidance method applies the per-pixel gradient w(t) g to the
image; to first order that moves the size by ``-<w(t) g, dI/ds>``: the *size pull*, positive where the guidance
would grow the object. Where a term's pull crosses zero is the size it prefers. The unconditional denoiser of a prior
trained on scale-1 images should prefer 1; NFSD's delta_C and delta_D (and SDS, dominated by its large-scale
delta_C) may not, and a 3D run inherits what they prefer. With ``axes`` short of "xyz" the scale stretches the
object along those axes only (``axes="z"``: its height), which probes proportions instead of size; ``axes="n"``
moves the surface outward along its normals by (s - 1) * OFFSET_UNIT instead (a torus's tube thickens, a cube's faces
move as under the scale s and its edges round). Common random
numbers (the same cameras, lights, t and noise at every scale) keep the differences between scales far less noisy
than each value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamnfsd.data.primitives import DEGRADATIONS, OFFSET_UNIT, make_cameras, render_primitives, sample_view_angles
from dreamnfsd.guidance.core import (
    DEFAULT_NEGATIVE,
    DEFAULT_SCALE,
    GuidanceConfig,
    sample_timesteps,
    select_cameras,
    timestep_weights,
)
from dreamnfsd.guidance.nfsd import nfsd_direction
from dreamnfsd.guidance.priors.base import Prior
from dreamnfsd.guidance.sds import sds_direction


@dataclass
class SizePullConfig:
    shape: str = "cube"
    color: str = "red"
    scales: tuple[float, ...] = (0.94, 0.97, 1.0, 1.03, 1.06)
    n: int = 256  # images (camera, light, t, noise) per scale
    ds: float = 0.01  # central difference of I(s)
    axes: str = "xyz"  # the axes the scale acts on: "xyz" resizes, "z" changes only the height, "n" offsets
    t_range: tuple[float, float] = GuidanceConfig.t_range  # fractions of T, drawn as the guidance draws them
    nfsd_t_threshold: int = 200
    phrase_groups: bool = True  # also delta_D with p_neg = one degradation's phrases at a time
    # rays per pixel side of the images the guidance sees: 2 (box-filtered) as the prior's training data, 1 through
    # pixel centres as a field's training rays without camera.pixel_jitter
    supersample: int = 2
    edge_radius: float = 0.0  # edges of a cube, cylinder or cone rounded by this (faces in place), as trained ones are
    seed: int = 0
    chunk: int = 128


def preferred_scale(scales: list[float], pulls: list[float]) -> float | None:
    """The first scale where ``pulls`` falls through zero (linear between the two scales around it), or None."""
    for (s0, p0), (s1, p1) in zip(zip(scales, pulls), zip(scales[1:], pulls[1:])):
        if p0 >= 0 > p1:
            return s0 + (s1 - s0) * p0 / (p0 - p1)
    return None


def _views(cfg: SizePullConfig, resolution: int, num_train_timesteps: int):
    """Cameras, t and noise shared by every scale: (az, el) (n,), t (n,) long, noise (n, 3, res, res)."""
    g = torch.Generator().manual_seed(cfg.seed)
    az, el = sample_view_angles(cfg.n, g)  # the prior's training views
    t = sample_timesteps(cfg.n, num_train_timesteps, cfg.t_range, g)
    noise = torch.randn(cfg.n, 3, resolution, resolution, generator=g)
    return az, el, t, noise


@torch.no_grad()
def size_pull(prior: Prior, cfg: SizePullConfig) -> dict[str, list[tuple[float, float]]]:
    """Per guidance term, per scale of ``cfg.scales``: (mean, standard error) of the size pull over ``cfg.n`` images.

    Terms: ``unconditional`` (eps(null) - eps), ``delta_C``, ``delta_D`` (NFSD's, p_neg the paper's), ``nfsd``
    (delta_D + 7.5 delta_C), ``sds`` (scale 100) and, with ``phrase_groups``, ``delta_D[<degradation>]`` with p_neg
    that degradation's phrases. Images are renders on white, ``cfg.supersample``² rays a pixel (2: as the built-in
    prior's training data).
    """
    res = prior.resolution
    az, el, t, noise = _views(cfg, res, prior.num_train_timesteps)
    cams = make_cameras(az, el, res)
    ab = prior.alphas_cumprod.cpu()[t].view(-1, 1, 1, 1)
    w = timestep_weights(ab.view(-1), "one_minus_alpha_bar").view(-1, 1, 1, 1)
    negatives = {"delta_D": DEFAULT_NEGATIVE}
    if cfg.phrase_groups:
        negatives |= {f"delta_D[{k}]": ", ".join(v) for k, v in DEGRADATIONS.items()}
    prompts = {"null": "", "cond": f"a {cfg.color} {cfg.shape}", **negatives}
    emb = dict(zip(prompts, prior.encode_text(list(prompts.values())).cpu()))

    def image(scale: float) -> Tensor:
        light = torch.Generator().manual_seed(cfg.seed + 1)  # the same lights at every scale
        offset = torch.tensor((scale - 1) * OFFSET_UNIT) if cfg.axes == "n" else None
        if cfg.axes in ("xyz", "n"):
            size, stretch = torch.tensor(scale if offset is None else 1.0), None
        else:
            size, stretch = torch.tensor(1.0), torch.tensor([scale if a in cfg.axes else 1.0 for a in "xyz"])
        views = render_primitives(
            [cfg.shape] * cfg.n,
            [cfg.color] * cfg.n,
            az,
            el,
            res,
            supersample=cfg.supersample,
            scale=size,
            stretch=stretch,
            rounding=torch.tensor(cfg.edge_radius) if cfg.edge_radius else None,
            offset=offset,
            generator=light,
        )
        return prior.to_model_space(views["rgb"].to(prior.device)).cpu()

    def eps(x_t: Tensor, key: str) -> Tensor:
        out = []
        for i in range(0, cfg.n, cfg.chunk):
            rows = torch.arange(i, min(cfg.n, i + cfg.chunk))
            e = emb[key].expand(len(rows), -1, -1)
            x = x_t[rows].to(prior.device)
            out.append(prior.predict_noise(x, t[rows].to(prior.device), e.to(prior.device), select_cameras(cams, rows)))
        return torch.cat(out).float().cpu()

    result: dict[str, list[tuple[float, float]]] = {}
    for scale in cfg.scales:
        z0 = image(scale)
        dz = (image(scale + cfg.ds) - image(scale - cfg.ds)) / (2 * cfg.ds)
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        e = {key: eps(z_t, key) for key in prompts}
        terms = {
            "unconditional": sds_direction(e["null"], e["cond"], noise, 0.0),  # SDS at guidance scale 0
            # SDS at scale 1, the prompt's denoiser alone: delta_C is its pull minus the unconditional one, a small
            # difference of two steep pulls, so a slight gap between their sizes moves delta_C's size far more
            "conditional": sds_direction(e["null"], e["cond"], noise, 1.0),
            "delta_C": e["cond"] - e["null"],
            "nfsd": nfsd_direction(e["null"], e["cond"], e["delta_D"], t, DEFAULT_SCALE["nfsd"], cfg.nfsd_t_threshold),
            "sds": sds_direction(e["null"], e["cond"], noise, DEFAULT_SCALE["sds"]),
        }
        for key in negatives:  # delta_D alone: NFSD's direction at guidance scale 0
            terms[key] = nfsd_direction(e["null"], e["cond"], e[key], t, 0.0, cfg.nfsd_t_threshold)
        for name, g in terms.items():
            pull = -(w * g * dz).sum((1, 2, 3))
            result.setdefault(name, []).append((pull.mean().item(), (pull.std() / math.sqrt(cfg.n)).item()))
    return result
