"""Background colour seen where rays leave the scene box: a constant, or a small MLP on the view direction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamnfsd.models.mlp import MLP


@dataclass
class BackgroundConfig:
    kind: str = "mlp"  # mlp | constant
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    n_frequencies: int = 2  # mlp: sin/cos frequencies of the direction fed to the MLP
    hidden_dim: int = 32
    n_hidden_layers: int = 1


def frequency_encode(x: Tensor, n_frequencies: int) -> Tensor:
    """(..., D) -> (..., D * (1 + 2 * n_frequencies)): x, sin(2^k pi x), cos(2^k pi x)."""
    feats = [x]
    for k in range(n_frequencies):
        feats += [torch.sin((2.0**k) * torch.pi * x), torch.cos((2.0**k) * torch.pi * x)]
    return torch.cat(feats, -1)


class Background(nn.Module):
    """forward(dirs (..., 3) unit view directions) -> rgb (..., 3) in [0, 1]."""

    color: Tensor  # (3,) buffer registered in __init__, declared for the type checker

    def __init__(self, cfg: BackgroundConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BackgroundConfig()
        self.register_buffer("color", torch.tensor(cfg.color, dtype=torch.float32))
        if cfg.kind == "mlp":
            self.mlp: MLP | None = MLP(3 * (1 + 2 * cfg.n_frequencies), cfg.hidden_dim, cfg.n_hidden_layers, 3)
        elif cfg.kind == "constant":
            self.mlp = None
        else:
            raise ValueError(f"unknown background kind {cfg.kind!r}")

    def forward(self, dirs: Tensor) -> Tensor:
        if self.mlp is None:
            return self.color.to(dirs.dtype).expand(*dirs.shape[:-1], 3)
        flat = frequency_encode(dirs.reshape(-1, 3), self.cfg.n_frequencies)
        return torch.sigmoid(self.mlp(flat)).view(*dirs.shape[:-1], 3)
