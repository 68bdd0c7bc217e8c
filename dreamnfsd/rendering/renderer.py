"""Volume renderer: box intersection, grid-skipping march, early stopping, field evaluation, shading, compositing.

Rays are processed in chunks (memory stays bounded by ``chunk_rays``). Within a chunk the field is evaluated in
rounds over each ray's kept samples (``early_stop_block`` samples, then twice as many, ...); after each round rays
whose transmittance fell below ``early_stop_eps`` get no more samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dreamnfsd.rendering import backends
from dreamnfsd.rendering.compositing import accumulate_along_rays, distortion_loss, render_weights
from dreamnfsd.rendering.occupancy_grid import OccupancyGrid
from dreamnfsd.rendering.ray_marching import PackedSamples, march, sample_points

if TYPE_CHECKING:
    from dreamnfsd.models.field import HashGridField

SHADINGS = ("albedo", "lambertian", "textureless")


@dataclass
class RendererConfig:
    num_steps: int = 128  # fixed step = box diagonal / num_steps (sqrt(3) * 2 * bound / 128 by default)
    step_size: float | None = None  # explicit step in world units (overrides num_steps)
    chunk_rays: int = 16384
    early_stop_eps: float = 1e-4  # stop a ray once its transmittance is below this
    early_stop_block: int = 4  # samples per ray in the first evaluation round (doubles every round)
    stratified: bool = True  # random per-ray sample offsets while gradients are enabled (training)
    backend: str = "auto"  # auto | torch | nerfacc (auto: nerfacc for CUDA inputs when importable)
    normal_mode: str | None = None  # finite_difference | autograd; None = the field's own field.normal_mode
    normal_weight_eps: float = 1e-5  # normals only for samples with weight above this (they cost 6 evaluations)
    near: float = 0.0


class VolumeRenderer(nn.Module):
    """Renders a field inside the grid's box. ``grid=None`` marches densely (every step inside the box)."""

    aabb: Tensor  # (6,) buffer registered in __init__, declared for the type checker

    def __init__(
        self, field: HashGridField, grid: OccupancyGrid | None, background: nn.Module, cfg: RendererConfig | None = None
    ):
        super().__init__()
        self.cfg = cfg = cfg or RendererConfig()
        self.field, self.grid, self.background = field, grid, background
        self.bound = float(field.cfg.bound)
        if cfg.step_size is not None:
            self.step_size = float(cfg.step_size)
        else:
            self.step_size = math.sqrt(3.0) * 2.0 * self.bound / cfg.num_steps
        self.register_buffer("aabb", torch.tensor([-self.bound] * 3 + [self.bound] * 3), persistent=False)
        self._estimator = None

    # ---- occupancy ---------------------------------------------------------------------------------------------
    def occupancy_fn(self, x: Tensor) -> Tensor:
        """The grid's occupancy value at x (P, 3): about the opacity of one step (sigma * step size, as nerfacc
        uses); an SDF field widens its surface by a grid cell's half-diagonal so that no surface cell is skipped."""
        cell_radius = 0.0
        if self.grid is not None:
            cell_radius = math.sqrt(3.0) * self.bound / self.grid.resolution
        return self.field.occupancy(x, self.step_size, cell_radius)

    def update_occupancy(self, step: int, generator: torch.Generator | None = None) -> bool:
        return self.grid is not None and self.grid.update(step, self.occupancy_fn, generator)

    def mark_occupancy(self, generator: torch.Generator | None = None) -> None:
        """Initialise the grid from the current field (e.g. its density blob)."""
        if self.grid is not None:
            self.grid.mark_from(self.occupancy_fn, generator=generator)

    # ---- rendering ---------------------------------------------------------------------------------------------
    def render(
        self,
        origins: Tensor,
        dirs: Tensor,
        shading: str = "albedo",
        light_positions: Tensor | None = None,
        ambient: float = 0.1,
        need_normals: bool = False,
        background_color: Tensor | None = None,
        generator: torch.Generator | None = None,
        need_distortion: bool = False,
    ) -> dict:
        """Render (B, H, W) rays.

        Args:
            origins, dirs: (B, H, W, 3), dirs unit length. shading: albedo | lambertian | textureless.
            light_positions: (B, 3) point lights for the shaded modes (default: at the camera).
            need_normals: compute normals (and the orientation loss) even for albedo shading.
            background_color: (3,), (B, 3) or (B, H, W, 3) overriding the background module.
            generator: RNG for stratified sample offsets.
            need_distortion: also return distortion_loss (scalar, the mean over rays of
                :func:`~dreamnfsd.rendering.compositing.distortion_loss`).
        Returns:
            rgb (B,H,W,3), opacity and weights_sum (B,H,W,1), depth (B,H,W,1) (expected distance, background = 0),
            and with normals: normal (B,H,W,3) (weight-blended, not renormalised) and orientation_loss (scalar,
            per-ray sum of stop_grad(w) * relu(n.d)^2 averaged over rays). Counters: num_samples (field
            evaluations for colour), num_normal_evals (extra density evaluations for normals), samples_per_ray.
        """
        if shading not in SHADINGS:
            raise ValueError(f"unknown shading {shading!r}")
        b, h, w, _ = origins.shape
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        with_normals = need_normals or shading != "albedo"
        lights = None
        if shading != "albedo":
            lp = light_positions if light_positions is not None else origins[:, 0, 0]
            lights = lp[:, None, :].expand(b, h * w, 3).reshape(-1, 3)
        backend = backends.resolve_backend(self.cfg.backend, o.device)
        parts = []
        for s in range(0, o.shape[0], self.cfg.chunk_rays):
            e = s + self.cfg.chunk_rays
            ls = lights[s:e] if lights is not None else None
            parts.append(
                self._render_rays(
                    o[s:e], d[s:e], shading, ls, ambient, with_normals, backend, generator, need_distortion
                )
            )
        scalars = ("orient", "distortion", "n", "n_normal", "eikonal", "curvature")
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k not in scalars}
        n_rays = o.shape[0]
        if background_color is not None:
            bg = torch.as_tensor(background_color, dtype=o.dtype, device=o.device)
            bg = bg.view(b, 1, 1, 3) if bg.dim() == 2 else bg
            bg = bg.expand(b, h, w, 3).reshape(-1, 3)
        else:
            bg = self.background(d)
        result = {
            "rgb": (out["rgb"] + (1.0 - out["opacity"]) * bg).view(b, h, w, 3),
            "opacity": out["opacity"].view(b, h, w, 1),
            "depth": out["depth"].view(b, h, w, 1),
            "num_samples": sum(p["n"] for p in parts),
            "num_normal_evals": sum(p["n_normal"] for p in parts),
        }
        result["weights_sum"] = result["opacity"]
        result["samples_per_ray"] = result["num_samples"] / max(1, n_rays)
        if with_normals:
            result["normal"] = out["normal"].view(b, h, w, 3)
            result["orientation_loss"] = sum(p["orient"] for p in parts) / max(1, n_rays)
        if need_distortion:
            result["distortion_loss"] = sum(p["distortion"] for p in parts) / max(1, n_rays)
        for key in ("eikonal", "curvature"):  # per-sample regulariser terms of fields that have them (SDF)
            if any(key in p for p in parts):
                result[f"{key}_loss"] = sum(p.get(key, 0.0) for p in parts) / max(1, result["num_samples"])
        return result

    def _render_rays(self, o, d, shading, lights, ambient, with_normals, backend, generator, need_distortion) -> dict:
        """One chunk of flat rays (N, 3). Returns per-ray sums (no background) and counters."""
        n = o.shape[0]
        stratified = self.cfg.stratified and torch.is_grad_enabled()
        if backend == "nerfacc":
            samples = self._march_nerfacc(o, d, stratified)
            fo = self._field_at(o, d, samples)
            weights = backends.nerfacc_weights(fo["density"], samples)
        else:
            offsets = torch.rand(n, generator=generator, device=o.device) if stratified else None
            occupied = self.grid.occupied if self.grid is not None else None
            samples = march(o, d, self.aabb.to(o), self.step_size, occupied, offsets, self.cfg.near)
            samples, fo = self._evaluate_early_stop(o, d, samples)
            deltas = samples.t_ends - samples.t_starts
            weights, _, _ = render_weights(fo["density"], deltas, samples.ray_indices, samples.ranks, n)
        pts = sample_points(o, d, samples)
        ray = samples.ray_indices
        out: dict[str, Tensor | int] = {"n": int(pts.shape[0]), "n_normal": 0}
        for key in ("eikonal", "curvature"):
            if key in fo:
                out[key] = fo[key].sum()
        albedo = fo["albedo"]
        normals = None
        if with_normals:
            if "normal" in fo:  # the field computed them with its samples
                normals = fo["normal"]
            else:
                normals, out["n_normal"] = self._normals(pts, weights)
            out["normal"] = accumulate_along_rays(weights, ray, n, normals)
            facing = (normals * d[ray]).sum(-1).clamp(min=0.0)
            out["orient"] = (weights.detach() * facing.square()).sum()
        color = self._shade(albedo, normals, pts, lights[ray] if lights is not None else None, shading, ambient)
        out["rgb"] = accumulate_along_rays(weights, ray, n, color)
        out["opacity"] = accumulate_along_rays(weights, ray, n)
        mid = 0.5 * (samples.t_starts + samples.t_ends)
        out["depth"] = accumulate_along_rays(weights, ray, n, mid[:, None])
        if need_distortion:
            out["distortion"] = distortion_loss(weights, samples.t_starts, samples.t_ends, ray, samples.ranks, n).sum()
        return out

    def _march_nerfacc(self, o: Tensor, d: Tensor, stratified: bool) -> PackedSamples:
        if self.grid is None:
            raise RuntimeError("the nerfacc backend needs an occupancy grid")
        if self._estimator is None:
            self._estimator = backends.make_estimator(self.grid)
        backends.sync_estimator(self._estimator, self.grid)
        with torch.no_grad():
            return backends.nerfacc_march(
                self._estimator,
                o,
                d,
                self.step_size,
                self.field.density,
                self.cfg.early_stop_eps,
                stratified,
                self.cfg.near,
            )

    def _field_at(self, o: Tensor, d: Tensor, samples: PackedSamples) -> dict[str, Tensor]:
        """The field's :meth:`render_samples` at packed samples: {"density" (M,), "albedo" (M, 3), ...}."""
        if samples.ray_indices.numel() == 0:
            return _empty_field(o)
        ray = samples.ray_indices
        return self.field.render_samples(sample_points(o, d, samples), d[ray], samples.t_ends - samples.t_starts)

    def _evaluate_early_stop(self, o: Tensor, d: Tensor, samples: PackedSamples):
        """Field values for the samples before each ray's transmittance drops under early_stop_eps.

        Returns the evaluated subset of samples and the field's outputs there (see :meth:`_field_at`).
        """
        n = samples.n_rays
        if samples.ray_indices.numel() == 0:
            return samples, _empty_field(o)
        max_tau = -math.log(self.cfg.early_stop_eps) if self.cfg.early_stop_eps > 0 else math.inf
        tau_sum = o.new_zeros(n)
        alive = torch.ones(n, dtype=torch.bool, device=o.device)
        last_rank = int(samples.ranks.max().item())
        picked, outs = [], []
        lo, size = 0, self.cfg.early_stop_block
        while lo <= last_rank:
            sel = (samples.ranks >= lo) & (samples.ranks < lo + size) & alive[samples.ray_indices]
            idx = sel.nonzero()[:, 0]
            lo, size = lo + size, size * 2
            if idx.numel() == 0:
                continue
            sub = _take(samples, idx)
            fo = self._field_at(o, d, sub)
            tau = fo["density"].detach() * (sub.t_ends - sub.t_starts)
            tau_sum.index_add_(0, sub.ray_indices, tau)
            alive &= tau_sum < max_tau
            picked.append(idx)
            outs.append(fo)
            if not alive.any():
                break
        idx = torch.cat(picked)
        sub = _take(samples, idx)
        return sub, {k: torch.cat([fo[k] for fo in outs]) for k in outs[0]}

    def _normals(self, pts: Tensor, weights: Tensor) -> tuple[Tensor, int]:
        """Normals (M, 3) at samples that carry weight (zeros elsewhere), and the density evaluations spent."""
        mode = self.cfg.normal_mode
        keep = (weights.detach() > self.cfg.normal_weight_eps).nonzero()[:, 0]
        normals = pts.new_zeros(pts.shape[0], 3)
        if keep.numel() == 0:
            return normals, 0
        nk = self.field.normals(pts[keep], mode)
        per_point = 1 if (mode or self.field.cfg.normal_mode) == "autograd" else 6
        return normals.index_put((keep,), nk), per_point * int(keep.numel())

    @staticmethod
    def _shade(albedo, normals, pts, lights, shading: str, ambient: float) -> Tensor:
        """Per-sample colour: albedo, or (albedo | white) * (ambient + (1 - ambient) * relu(n . l))."""
        if shading == "albedo":
            return albedo
        to_light = torch.nn.functional.normalize(lights - pts, dim=-1)
        diffuse = (normals * to_light).sum(-1, keepdim=True).clamp(min=0.0)
        lum = ambient + (1.0 - ambient) * diffuse
        return lum.expand(-1, 3) if shading == "textureless" else albedo * lum


def _take(samples: PackedSamples, idx: Tensor) -> PackedSamples:
    """The samples at positions ``idx`` (same rays: n_rays is kept)."""
    return PackedSamples(
        samples.ray_indices[idx], samples.t_starts[idx], samples.t_ends[idx], samples.ranks[idx], samples.n_rays
    )


def _empty_field(o: Tensor) -> dict[str, Tensor]:
    return {"density": o.new_zeros(0), "albedo": o.new_zeros(0, 3)}
