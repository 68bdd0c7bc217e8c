"""Hash-grid fields: the NeRF density field (with an optional centred "blob" prior) and albedo; normals.

Every field answers the renderer through one method, ``render_samples(points, dirs, deltas)``, which returns the
density that the compositor uses plus albedo (and, when the field has them for free, normals and regulariser terms):
see :class:`HashGridField`. :mod:`dreamnfsd.models.sdf_field` holds the signed-distance field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamnfsd.models.encodings import HashEncoding, HashEncodingConfig
from dreamnfsd.models.mlp import MLP


@dataclass
class SDFConfig:
    """Settings of the signed-distance field (``field.kind=sdf``); see :mod:`dreamnfsd.models.sdf_field`."""

    init_radius: float = 0.5  # the field starts as a sphere of this radius
    # NeuS's sharpness s (the inverse scale of the logistic that turns SDF into opacity) rises geometrically from
    # sharpness_start to sharpness_end over the first sharpness_ramp share of training, then stays there.
    sharpness_start: float = 20.0
    sharpness_end: float = 400.0
    sharpness_ramp: float = 0.8
    # The curvature term's per-sample value: |laplacian f| (an L1 curvature: an edge costs its angle, not its
    # sharpness) instead of its square.
    curvature_l1: bool = False
    # Or, when > 0, the square below this |laplacian f| and a line of the same slope above it (a Huber penalty):
    # curved surfaces (a radius over 1 / curvature_huber) are smoothed as by the square, edges sharper than that
    # cost their angle as with curvature_l1. 0 keeps the square everywhere.
    curvature_huber: float = 0.0


FIELD_KINDS = ("density", "sdf")


@dataclass
class FieldConfig:
    kind: str = "density"  # density (NeRF) | sdf (NeuS-style signed distance)
    encoding: HashEncodingConfig = field(default_factory=HashEncodingConfig)
    hidden_dim: int = 64
    n_hidden_layers: int = 2
    bound: float = 1.0  # the scene box is [-bound, bound]^3
    density_activation: str = "trunc_exp"  # trunc_exp | softplus
    # Pre-activation bias blob_density * (1 - r / blob_radius) (Magic3D): a soft sphere to start from, so early
    # renders have a silhouette for the guidance to shape. 0 disables it.
    blob_density: float = 10.0
    blob_radius: float = 0.5
    normal_mode: str = "finite_difference"  # finite_difference | autograd
    fd_eps: float = 1e-2  # finite-difference step in world units (under a cell of the finest useful level)
    compile: bool = False  # torch.compile the MLP head used with gradients (inference stays eager, see notes)
    sdf: SDFConfig = field(default_factory=SDFConfig)


class _TruncExp(torch.autograd.Function):
    """exp with its input clamped for the gradient (and at 15 for the value) so a few large pre-activations
    cannot produce inf/NaN gradients (torch-ngp's trunc_exp)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x.clamp(max=15.0))

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def density_blob(x: Tensor, blob_density: float, blob_radius: float) -> Tensor:
    """Pre-activation density bias, positive inside a sphere of radius blob_radius. x (N, 3) -> (N,)."""
    return blob_density * (1.0 - x.norm(dim=-1) / blob_radius)


class HashGridField(nn.Module):
    """Hash encoding + MLP with 4 outputs (a geometry value, 3 albedo logits); the base of both fields.

    Subclasses define ``density(x)`` (N,) (what the occupancy grid and nerfacc's marcher skip by),
    ``forward(x)`` -> {"density", "albedo", ...}, ``normals(x)`` (N, 3) and ``render_samples``.
    """

    if TYPE_CHECKING:  # what every subclass defines, declared for the type checker only (no runtime change)

        def density(self, x: Tensor) -> Tensor: ...

        def normals(self, x: Tensor, mode: str | None = None) -> Tensor: ...

    def __init__(self, cfg: FieldConfig, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        # The encoding's backend is fixed here, for the device the field is built for.
        self.encoding = HashEncoding(cfg.encoding, device)
        self.mlp = MLP(self.encoding.out_dim, cfg.hidden_dim, cfg.n_hidden_layers, 4)
        self._mlp_compiled = torch.compile(self.mlp, dynamic=True) if cfg.compile else None

    def encoding_parameters(self) -> list[nn.Parameter]:
        return list(self.encoding.parameters())

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.mlp.parameters())

    def _mlp_out(self, x: Tensor) -> Tensor:
        """(N, 3) world -> (N, 4) raw outputs: density pre-activation (blob not yet added), albedo logits."""
        feats = self.encoding((x + self.cfg.bound) / (2.0 * self.cfg.bound))
        # A compiled module under no_grad was measured ~25x slower on CPU than eager, so inference stays eager.
        mlp = self._mlp_compiled if self._mlp_compiled is not None and torch.is_grad_enabled() else self.mlp
        return mlp(feats)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1], for fields with schedules. The density field has none."""

    def occupancy(self, x: Tensor, step_size: float, cell_radius: float) -> Tensor:
        """The occupancy grid's value at x (N, 3) -> (N,): about the opacity of one step, sigma * step_size."""
        return self.density(x) * step_size

    def render_samples(self, x: Tensor, dirs: Tensor, deltas: Tensor) -> dict[str, Tensor]:
        """What the renderer needs at samples x (M, 3) seen along unit dirs (M, 3) over intervals deltas (M,):
        {"density" (M,) used by the compositor, "albedo" (M, 3)}, plus "normal" (M, 3) and per-sample regulariser
        terms when the field gets them for free."""
        return self(x)


class NeRFField(HashGridField):
    """density(x) (N,), forward(x) -> {"density", "albedo"}, normals(x) (N, 3). x in world units (N, 3)."""

    def __init__(self, cfg: FieldConfig | None = None, device: torch.device | str | None = None):
        cfg = cfg or FieldConfig()
        if cfg.density_activation not in ("trunc_exp", "softplus"):
            raise ValueError(f"unknown density activation {cfg.density_activation!r}")
        if cfg.normal_mode not in ("finite_difference", "autograd"):
            raise ValueError(f"unknown normal mode {cfg.normal_mode!r}")
        super().__init__(cfg, device)

    def _sigma(self, pre: Tensor, x: Tensor) -> Tensor:
        if self.cfg.blob_density != 0.0:
            pre = pre + density_blob(x, self.cfg.blob_density, self.cfg.blob_radius)
        return trunc_exp(pre) if self.cfg.density_activation == "trunc_exp" else F.softplus(pre)

    def density(self, x: Tensor) -> Tensor:
        """(N, 3) world -> sigma (N,) >= 0."""
        return self._sigma(self._mlp_out(x)[:, 0], x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(N, 3) world -> {"density": (N,), "albedo": (N, 3) in (0, 1)}."""
        out = self._mlp_out(x)
        return {"density": self._sigma(out[:, 0], x), "albedo": torch.sigmoid(out[:, 1:])}

    def normals(self, x: Tensor, mode: str | None = None) -> Tensor:
        """Unit normals -grad(sigma)/|grad(sigma)| at x (N, 3) -> (N, 3), differentiable in the parameters.

        mode: finite_difference (6 density evaluations per point) | autograd; None = the config's normal_mode.
        """
        if (mode or self.cfg.normal_mode) == "autograd":
            return self._normals_autograd(x)
        return self._normals_fd(x)

    def _normals_fd(self, x: Tensor) -> Tensor:
        # Central differences: 6 extra density evaluations per point, done as one batch.
        eps = self.cfg.fd_eps
        offsets = torch.cat([torch.eye(3), -torch.eye(3)]).to(x) * eps  # (6, 3): +x +y +z -x -y -z
        sig = self.density((x[:, None, :] + offsets).reshape(-1, 3)).view(-1, 6)
        grad = (sig[:, :3] - sig[:, 3:]) / (2.0 * eps)
        return -F.normalize(grad, dim=-1)

    def _normals_autograd(self, x: Tensor) -> Tensor:
        # create_graph when training so that normal-based losses reach the parameters (double backward through
        # the hash encoding's plain-autograd path).
        train = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            sig = self.density(xg)
            (grad,) = torch.autograd.grad(sig.sum(), xg, create_graph=train)
        return -F.normalize(grad, dim=-1)


def build_field(cfg: FieldConfig, device: torch.device | str | None = None) -> HashGridField:
    """The field ``cfg.kind`` names: a :class:`NeRFField` or an :class:`~dreamnfsd.models.sdf_field.SDFField`,
    its encoding backend chosen for ``device`` (the caller still moves the field there)."""
    if cfg.kind == "sdf":
        from dreamnfsd.models.sdf_field import SDFField

        return SDFField(cfg, device)
    if cfg.kind == "density":
        return NeRFField(cfg, device)
    raise ValueError(f"unknown field kind {cfg.kind!r}")
