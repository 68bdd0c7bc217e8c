"""Small fully connected networks (the tiny-cuda-nn "FullyFusedMLP" shape, in plain PyTorch)."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """in_dim -> [hidden_dim, ReLU] x n_hidden_layers -> out_dim (no output activation).

    The output layer starts at zero, so a field begins exactly at its prior (e.g. the density blob, grey albedo).
    """

    def __init__(self, in_dim: int, hidden_dim: int, n_hidden_layers: int, out_dim: int, zero_init_output: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        out = nn.Linear(dim, out_dim)
        if zero_init_output:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.net(x)
