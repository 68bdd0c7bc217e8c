"""The signed-distance field: hash encoding + MLP -> SDF (starting as a sphere) and albedo, rendered NeuS-style.

The SDF is ``|x| - init_radius + mlp(x)[0]``; the MLP's output layer starts at zero, so training starts from an
exact sphere. Its zero level set is the surface, so the exported mesh is a solid by construction.

Each rendered sample costs five field evaluations: the centre and the four corners of a regular tetrahedron of
half-diagonal ``fd_eps`` (threestudio's and instant-nsr-pl's finite-difference scheme, one evaluation fewer than
central differences). They give the SDF, its gradient (normals, the Eikonal term, NeuS's cosine) and its Laplacian
(the curvature term) at once; all are plain functions of field values, so they are differentiable with any encoding
backend, including tiny-cuda-nn's, which has no double backward.

Opacity follows NeuS (Wang et al., 2021): over a sample interval of length delta, the SDF at its two ends is
estimated as ``f -+ cos * delta / 2`` and ``alpha = (Phi(s f_prev) - Phi(s f_next)) / Phi(s f_prev)`` with Phi the
logistic function and s the sharpness. The compositor takes densities, so the field returns the density with that
alpha over the interval, ``-log(1 - alpha) / delta``; the renderer, its early stopping and nerfacc's weights then
need nothing SDF-specific.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamnfsd.models.field import FieldConfig, HashGridField

# Corners of a regular tetrahedron (each of length sqrt(3)): sum v = 0 and sum v v^T = 4 I.
_TETRA = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))
_MAX_ALPHA = 1.0 - 1e-6  # keeps -log(1 - alpha) finite


def sharpness_at(progress: float, start: float, end: float, ramp: float) -> float:
    """NeuS's s at training ``progress`` in [0, 1]: geometric from start to end over the first ``ramp`` share."""
    p = 1.0 if ramp <= 0 else min(max(progress / ramp, 0.0), 1.0)
    return start * (end / start) ** p


def neus_alpha(sdf: Tensor, grad: Tensor, dirs: Tensor, deltas: Tensor, sharpness: float | Tensor) -> Tensor:
    """NeuS's discrete opacity of intervals (M,) from the SDF (M,) and its gradient (M, 3) at their midpoints,
    the unit ray directions (M, 3) and the interval lengths (M,). Rays leaving the surface (cos > 0) get none."""
    cos = -F.relu(-(dirs * grad).sum(-1))
    prev = torch.sigmoid((sdf - cos * deltas * 0.5) * sharpness)
    nxt = torch.sigmoid((sdf + cos * deltas * 0.5) * sharpness)
    return ((prev - nxt + 1e-5) / (prev + 1e-5)).clamp(0.0, 1.0)


def curvature_penalty(laplacian: Tensor, l1: bool = False, huber: float = 0.0) -> Tensor:
    """The curvature term's per-sample value (N,) from the SDF's Laplacian (N,): its square; its magnitude with
    ``l1``; with ``huber`` = d > 0 the square below |laplacian| = d and ``2 d |laplacian| - d^2`` above (the same
    value and slope at d, so the square's weight carries over)."""
    if l1:
        return laplacian.abs()
    if huber > 0:
        a = laplacian.abs()
        return torch.where(a < huber, a.square(), 2.0 * huber * a - huber * huber)
    return laplacian.square()


def alpha_to_density(alpha: Tensor, deltas: Tensor) -> Tensor:
    """The density that gives opacity ``alpha`` over an interval ``deltas``: -log(1 - alpha) / delta."""
    return -torch.log1p(-alpha.clamp(max=_MAX_ALPHA)) / deltas.clamp(min=1e-10)


class SDFField(HashGridField):
    """sdf(x) (N,), forward(x) -> {"sdf", "density", "albedo"}, normals(x) (N, 3), render_samples. x world (N, 3).

    ``density(x)`` is the logistic density ``s * Phi(-s f)`` (VolSDF's form with a logistic), used only where a
    point density is needed without a ray (the occupancy grid, nerfacc's sample skipping).
    """

    # Buffers (registered in __init__), declared for the type checker.
    sharpness: Tensor  # () NeuS's s
    tetra: Tensor  # (4, 3) finite-difference offsets

    def __init__(self, cfg: FieldConfig | None = None, device: torch.device | str | None = None):
        super().__init__(cfg or FieldConfig(kind="sdf"), device)
        sc = self.cfg.sdf
        self.register_buffer("sharpness", torch.tensor(float(sc.sharpness_start)))
        self.register_buffer("tetra", torch.tensor(_TETRA) * self.cfg.fd_eps, persistent=False)

    def set_progress(self, progress: float) -> None:
        sc = self.cfg.sdf
        self.sharpness.fill_(sharpness_at(progress, sc.sharpness_start, sc.sharpness_end, sc.sharpness_ramp))

    def _sdf_albedo(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self._mlp_out(x)
        return x.norm(dim=-1) - self.cfg.sdf.init_radius + out[:, 0], out[:, 1:]

    def sdf(self, x: Tensor) -> Tensor:
        """(N, 3) world -> signed distance (N,), negative inside."""
        return self._sdf_albedo(x)[0]

    def density(self, x: Tensor) -> Tensor:
        s = self.sharpness
        return s * torch.sigmoid(-s * self.sdf(x))

    def occupancy(self, x: Tensor, step_size: float, cell_radius: float) -> Tensor:
        # A grid cell is judged by one point in it; the surface may pass up to cell_radius from that point.
        s = self.sharpness
        return s * torch.sigmoid(-s * (self.sdf(x) - cell_radius)) * step_size

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        sdf, logits = self._sdf_albedo(x)
        s = self.sharpness
        return {"sdf": sdf, "density": s * torch.sigmoid(-s * sdf), "albedo": torch.sigmoid(logits)}

    def differentials(self, x: Tensor) -> dict[str, Tensor]:
        """SDF, albedo, gradient and Laplacian at x (N, 3) from five evaluations (centre + tetrahedron).

        Returns {"sdf" (N,), "albedo" (N, 3), "gradient" (N, 3), "laplacian" (N,)}.
        """
        n, eps = x.shape[0], self.cfg.fd_eps
        pts = torch.cat([x, (x[:, None, :] + self.tetra.to(x)).reshape(-1, 3)])
        sdf, logits = self._sdf_albedo(pts)
        centre, corners = sdf[:n], sdf[n:].view(n, 4)
        grad = (corners[:, :, None] * self.tetra.to(x)).sum(1) / (4.0 * eps * eps)
        laplacian = (corners.sum(1) - 4.0 * centre) / (2.0 * eps * eps)
        return {"sdf": centre, "albedo": torch.sigmoid(logits[:n]), "gradient": grad, "laplacian": laplacian}

    def gradient(self, x: Tensor) -> Tensor:
        """(N, 3) -> the SDF's finite-difference gradient (N, 3) (about unit length once trained)."""
        n, eps = x.shape[0], self.cfg.fd_eps
        corners = self.sdf((x[:, None, :] + self.tetra.to(x)).reshape(-1, 3)).view(n, 4)
        return (corners[:, :, None] * self.tetra.to(x)).sum(1) / (4.0 * eps * eps)

    def normals(self, x: Tensor, mode: str | None = None) -> Tensor:
        """Outward unit normals (N, 3): the normalised SDF gradient (``mode`` is the density field's option)."""
        return F.normalize(self.gradient(x), dim=-1)

    def render_samples(self, x: Tensor, dirs: Tensor, deltas: Tensor) -> dict[str, Tensor]:
        """NeuS density, albedo and normals at samples, plus per-sample "eikonal" ((|grad f| - 1)^2) and
        "curvature" (:func:`curvature_penalty` of the Laplacian) terms for the regularisers. Shapes as in
        :meth:`HashGridField.render_samples`.
        """
        d = self.differentials(x)
        alpha = neus_alpha(d["sdf"], d["gradient"], dirs, deltas, self.sharpness)
        norm = d["gradient"].norm(dim=-1)
        return {
            "density": alpha_to_density(alpha, deltas),
            "albedo": d["albedo"],
            "normal": d["gradient"] / norm.clamp(min=1e-6)[:, None],
            "eikonal": (norm - 1.0).square(),
            "curvature": curvature_penalty(d["laplacian"], self.cfg.sdf.curvature_l1, self.cfg.sdf.curvature_huber),
        }
