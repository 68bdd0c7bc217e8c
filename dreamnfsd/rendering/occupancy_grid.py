"""Occupancy grid over the scene box: which cells may hold density, so the marcher can skip the rest.

Cells are stored x-major (flat index ``ix * R*R + iy * R + iz``), the layout of nerfacc's OccGridEstimator, so its
buffers can be handed to nerfacc unchanged. Per cell the grid keeps a decaying running maximum of the occupancy value
(``occs``; the value is whatever ``density_fn`` returns, usually sigma * step size), the boolean ``binaries`` and a
packed ``bitfield`` (8 cells per byte) used for lookups: at R = 128 it is 256 KiB, so lookups stay in cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamnfsd.utils.threads import query_in_parts

_BIT_WEIGHTS = [1 << i for i in range(8)]


@dataclass
class OccupancyGridConfig:
    resolution: int = 64  # cells per axis (64..128)
    update_every: int = 16  # steps between updates
    warmup_steps: int = 32  # no updates before this step (the field first moves away from its initial blob)
    ema_decay: float = 0.95  # occs = max(decay * occs, new), as in Instant-NGP / nerfacc
    threshold: float = 0.01  # tau: occupied if occs > min(mean(occs), tau)
    update_fraction: float = 1.0  # < 1: per update re-evaluate this fraction of cells, half random, half occupied
    chunk: int = 65536  # points per density_fn call


def grid_bytes(resolution: int) -> int:
    """Memory of an :class:`OccupancyGrid` and its full update: per cell the EMA value, the boolean, a bit, and the
    jittered point and value of one evaluation."""
    return resolution**3 * (4 + 1 + 16 + 4) + resolution**3 // 8


def pack_bits(binaries: Tensor) -> Tensor:
    """Flat bool (C,), C a multiple of 8 -> uint8 (C / 8,), bit j of byte b = cell 8b + j."""
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=binaries.device)
    return (binaries.view(-1, 8).to(torch.uint8) * w).sum(1, dtype=torch.uint8)


def lookup_bits(bitfield: Tensor, cells: Tensor) -> Tensor:
    """bitfield uint8 (C / 8,), flat cell indices (P,) int64 -> (P,) bool."""
    return ((bitfield[cells >> 3] >> (cells & 7).to(torch.uint8)) & 1).bool()


def world_to_cell(x: Tensor, aabb: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """World points (P, 3) -> flat x-major cell index (P,) int64 and inside-the-box mask (P,)."""
    lo, hi = aabb[:3], aabb[3:]
    u = (x - lo) / (hi - lo)
    inside = ((u >= 0) & (u <= 1)).all(-1)
    ijk = (u * resolution).long().clamp_(0, resolution - 1)
    return (ijk[:, 0] * resolution + ijk[:, 1]) * resolution + ijk[:, 2], inside


def cell_points(cells: Tensor, aabb: Tensor, resolution: int, jitter: Tensor | None = None) -> Tensor:
    """World positions in cells (P,): the centres, or cell + jitter (P, 3) in [0, 1)."""
    r = resolution
    ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], -1).to(aabb.dtype)
    u = (ijk + (0.5 if jitter is None else jitter)) / r
    return aabb[:3] + u * (aabb[3:] - aabb[:3])


class OccupancyGrid(nn.Module):
    """Binary occupancy over [-bound, bound]^3, updated from a density function; all state is in buffers."""

    # Buffers (registered in __init__), declared for the type checker.
    aabb: Tensor  # (6,) float32: min xyz, max xyz
    occs: Tensor  # (C,) float32 running maximum per cell
    binaries: Tensor  # (R, R, R) bool
    bitfield: Tensor  # (C / 8,) uint8

    def __init__(self, cfg: OccupancyGridConfig | None = None, bound: float = 1.0):
        super().__init__()
        self.cfg = cfg = cfg or OccupancyGridConfig()
        r = cfg.resolution
        if r % 2:
            raise ValueError("resolution must be even (the bitfield packs 8 cells per byte)")
        self.register_buffer("aabb", torch.tensor([-bound] * 3 + [bound] * 3, dtype=torch.float32))
        # Until marked or updated, every cell counts as occupied: marching is then dense, never wrong.
        self.register_buffer("occs", torch.full((r**3,), float("inf")))
        self.register_buffer("binaries", torch.ones(r, r, r, dtype=torch.bool))
        self.register_buffer("bitfield", pack_bits(self.binaries.view(-1)))

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def n_cells(self) -> int:
        return self.cfg.resolution**3

    def occupied(self, x: Tensor) -> Tensor:
        """World points (P, 3) -> (P,) bool; points outside the box are unoccupied."""
        cells, inside = world_to_cell(x, self.aabb.to(x.dtype), self.cfg.resolution)
        return lookup_bits(self.bitfield, cells) & inside

    def occupied_fraction(self) -> float:
        return self.binaries.float().mean().item()

    @torch.no_grad()
    def _evaluate(self, cells: Tensor, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator | None):
        """density_fn at one jittered point per cell, chunked. -> (P,)."""
        out = []
        for chunk in cells.split(self.cfg.chunk):
            jitter = torch.rand(chunk.shape[0], 3, generator=generator, device=chunk.device)
            points = cell_points(chunk, self.aabb, self.cfg.resolution, jitter)
            out.append(query_in_parts(density_fn, points).reshape(-1))  # on every core, the same bits
        return torch.cat(out) if out else self.occs.new_zeros(0)

    @torch.no_grad()
    def _refresh(self) -> None:
        thre = torch.clamp(self.occs.mean(), max=self.cfg.threshold)
        self.binaries.copy_((self.occs > thre).view_as(self.binaries))
        self.bitfield.copy_(pack_bits(self.binaries.view(-1)))

    @torch.no_grad()
    def mark_from(
        self,
        density_fn: Callable[[Tensor], Tensor],
        samples_per_cell: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        """Reset occupancy from scratch: occs = max over jittered samples per cell (e.g. from the initial blob)."""
        cells = torch.arange(self.n_cells, device=self.occs.device)
        occ = torch.stack([self._evaluate(cells, density_fn, generator) for _ in range(samples_per_cell)]).amax(0)
        self.occs.copy_(occ)
        self._refresh()

    @torch.no_grad()
    def update(
        self, step: int, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator | None = None
    ) -> bool:
        """Every ``update_every`` steps from ``warmup_steps`` on: occs = max(decay * occs, density at a jittered
        point), then re-threshold. Returns whether an update ran."""
        c = self.cfg
        if step < c.warmup_steps or step % c.update_every:
            return False
        device = self.occs.device
        if c.update_fraction >= 1.0 or torch.isinf(self.occs).any():
            cells = torch.arange(self.n_cells, device=device)
        else:
            n = max(1, int(self.n_cells * c.update_fraction / 2))
            uniform = torch.randint(0, self.n_cells, (n,), generator=generator, device=device)
            occupied = self.binaries.view(-1).nonzero()[:, 0]
            pick = torch.randint(0, max(1, occupied.numel()), (n,), generator=generator, device=device)
            cells = torch.cat([uniform, occupied[pick]]) if occupied.numel() else uniform
            # Repeated cells would be written by a parallel index_put_ in no fixed order: keep each once.
            cells = cells.unique()
        new = self._evaluate(cells, density_fn, generator)
        old = torch.where(torch.isinf(self.occs[cells]), torch.zeros_like(new), self.occs[cells])
        self.occs[cells] = torch.maximum(old * c.ema_decay, new)
        self._refresh()
        return True
