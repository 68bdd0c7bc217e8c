"""Instant-NGP multiresolution hash encoding: a vectorised PyTorch implementation, with tiny-cuda-nn when usable.

Level ``l`` has ``res_l = floor(base_resolution * per_level_scale**l)`` cells per axis, so its vertices sit at
``x = i / res_l`` (i = 0..res_l). A level whose ``(res_l + 1)**3`` vertices fit the table is indexed densely
(``ix + iy*R + iz*R*R``, no collisions); finer levels use the spatial hash
``(ix * 1) ^ (iy * 2654435761) ^ (iz * 805459861)`` modulo the table size. Features are interpolated trilinearly.

Why it is fast on CPU (see scripts/bench_render.py for the numbers):
- levels are processed one at a time on (N,) tensors, which stay in cache, and each level is its own parameter, so
  its gradient (at most 4 MiB for 2^19 rows x 2 features) stays under glibc's mmap threshold and is reused rather
  than page-faulted afresh each step;
- the 8 corners come from per-axis terms (4 + 8 XORs when hashed, one add each when dense) and are blended as 7
  unrolled lerps on contiguous (N, F) tensors (a broadcast (N, 1) weight made each op ~5x slower);
- hashing is done in int32: the product wraps modulo 2**32 exactly like tiny-cuda-nn's uint32 hash, and the
  table size is a power of two, so the low bits equal the int64 result, at ~7x the speed;
- a row of 2 float32 features is gathered as one 8-byte integer (``take`` on an int64 view), and the backward
  scatter-adds both features at once through a complex64 view; autograd's generic index backward is ~10x slower.
The custom backward only produces the table gradient. When the input itself needs a gradient (autograd normals)
the plain differentiable path is used instead, which also supports double backward. ``torch.compile`` of the
encoding was tried: 45-70 s to compile and no faster than this eager path, so only the field's MLP is compiled.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamnfsd.utils.errors import UserError
from dreamnfsd.utils.threads import map_at_once, spare_threads

log = logging.getLogger(__name__)

PRIMES = (1, 2654435761, 805459861)
BACKENDS = ("auto", "torch", "tcnn")


def _as_int32(p: int) -> int:
    """A uint32 constant as the int32 with the same bits (int32 products then wrap like uint32 ones)."""
    return p - (1 << 32) if p >= (1 << 31) else p


@dataclass
class HashEncodingConfig:
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447
    init_scale: float = 1e-4  # uniform(-s, s) as in Instant-NGP
    backend: str = "auto"  # auto | torch | tcnn  (auto: tcnn when importable and the field is built on CUDA)
    # torch backend on the CPU: the levels at once, one thread each, when the caller runs on one thread (the NeRF
    # side's train.num_threads); 0: as many as the cores (dreamnfsd.utils.threads.spare_threads), 1: in turn. The
    # same bits either way.
    cpu_tasks: int = 0


@dataclass(frozen=True)
class _Level:
    res: int
    dense: bool
    log2_size: int


def level_layout(cfg: HashEncodingConfig) -> list[_Level]:
    """Per level: cells per axis, whether indexed densely (its (res+1)^3 vertices fit the table), table bits."""
    table = 1 << cfg.log2_hashmap_size
    levels = []
    for lvl in range(cfg.n_levels):
        res = int(math.floor(cfg.base_resolution * cfg.per_level_scale**lvl))
        levels.append(_Level(res, (res + 1) ** 3 <= table, cfg.log2_hashmap_size))
    return levels


def level_rows(level: _Level) -> int:
    """Table rows of one level: every vertex when dense, else 2**log2_size hash slots."""
    return (level.res + 1) ** 3 if level.dense else 1 << level.log2_size


def level_corners(x: Tensor, res: int, dense: bool, log2_size: int) -> tuple[list[Tensor], Tensor]:
    """Table rows of the 8 cell corners around each point at one level, and the position inside the cell.

    Args:
        x: (N, 3) points in [0, 1]. res: cells per axis. dense: index as ``ix + iy*R + iz*R*R`` (R = res + 1)
        instead of hashing. log2_size: table rows = 2**log2_size at hashed levels.
    Returns:
        8 x int64 (N,) row indices, corner c = bx + 2*by + 4*bz; frac (N, 3) in [0, 1].
    """
    pos = x * float(res)
    # Clamping the cell (not the point) keeps x = 1 inside the last cell, with fraction 1.
    cell = pos.floor().clamp_(0, res - 1)
    frac = pos - cell
    c = cell.to(torch.int32)
    cx, cy, cz = c[:, 0], c[:, 1], c[:, 2]
    if dense:
        r1 = res + 1
        base = cx + cy * r1 + cz * (r1 * r1)
        face: tuple[int, ...] = (0, 1, r1, r1 + 1)
        offsets = face + tuple(s + r1 * r1 for s in face)
        return [(base + s).long() for s in offsets], frac
    # Per-axis terms first: 6 products and 4 + 8 XORs give all 8 hashed corners.
    p1, p2 = _as_int32(PRIMES[1]), _as_int32(PRIMES[2])
    y0, z0 = cy * p1, cz * p2
    hx = (cx, cx + 1)  # prime 1: x-neighbours usually share a cache line
    hy = (y0, y0 + p1)
    hz = (z0, z0 + p2)
    xy = [hx[0] ^ hy[0], hx[1] ^ hy[0], hx[0] ^ hy[1], hx[1] ^ hy[1]]
    mask = (1 << log2_size) - 1
    return [((a ^ z) & mask).long() for z in hz for a in xy], frac


def expand_frac(frac: Tensor, n_features: int) -> list[Tensor]:
    """(N, 3) -> 3 x contiguous (N, F): elementwise ops broadcasting a size-1 last dim run ~5x slower on CPU."""
    return [f[:, None].expand(-1, n_features).contiguous() for f in frac.unbind(1)]


def trilinear(feats: list[Tensor], fx: Tensor, fy: Tensor, fz: Tensor) -> Tensor:
    """Blend 8 corner features (N, F) (corner c = bx + 2*by + 4*bz) with fractions (N, F) as 7 unrolled lerps."""
    x0 = torch.lerp(feats[0], feats[1], fx)
    x1 = torch.lerp(feats[2], feats[3], fx)
    x2 = torch.lerp(feats[4], feats[5], fx)
    x3 = torch.lerp(feats[6], feats[7], fx)
    return torch.lerp(torch.lerp(x0, x1, fy), torch.lerp(x2, x3, fy), fz)


def trilinear_scatter_(grad_table: Tensor, idx: list[Tensor], grad: Tensor, fx: Tensor, fy: Tensor, fz: Tensor):
    """Adjoint of :func:`trilinear` + gather: grad_table[idx[c]] += w_c * grad, weights split lerp by lerp.

    grad_table (R, F); idx 8 x (N,); grad, fx, fy, fz (N, F).
    """
    c = 0
    z1 = grad * fz
    for z in (grad - z1, z1):
        y1 = z * fy
        for y in (z - y1, y1):
            x1 = y * fx
            for v in (y - x1, x1):
                scatter_rows_(grad_table, idx[c], v)
                c += 1


def gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    """table (R, F) rows at idx (...) -> (..., F), not differentiable.

    A row of 4 or 8 bytes (F=2 float32) is fetched as one integer: ``take`` on a 1-D view is ~2-4x faster than
    row indexing.
    """
    word = {4: torch.int32, 8: torch.int64}.get(table.shape[1] * table.element_size())
    if word is None or not table.is_contiguous():
        return table[idx]
    return table.view(word).view(-1).take(idx).view(table.dtype).view(*idx.shape, table.shape[1])


def scatter_rows_(grad: Tensor, idx: Tensor, src: Tensor) -> None:
    """grad (R, F) += src (N, F) at rows idx (N,). On CPU a float32 pair goes through one complex64 scatter-add
    (~10x faster than row-wise index_add_ there); elsewhere index_add_ (GPU atomics are fast already)."""
    if grad.shape[1] == 2 and grad.dtype == torch.float32 and grad.is_contiguous() and not grad.is_cuda:
        g = torch.view_as_complex(grad)
        g.scatter_add_(0, idx, torch.view_as_complex(src.contiguous()))
    else:
        grad.index_add_(0, idx, src)


def encode_levels_autograd(x: Tensor, tables: list[Tensor], levels: list[_Level]) -> Tensor:
    """Plain-autograd encoding, differentiable in x (twice) and tables. x (N, 3) -> (N, L*F)."""
    outs = []
    for tab, lv in zip(tables, levels):
        idx, frac = level_corners(x, lv.res, lv.dense, lv.log2_size)
        f = frac.unbind(1)
        outs.append(trilinear([tab[i] for i in idx], *(t[:, None] for t in f)))
    return torch.cat(outs, 1)


# A call with fewer points than this encodes its levels in this thread: starting threads would cost more than it saves.
MIN_SPLIT_POINTS = 4096


def level_tasks(x: Tensor, most: int = 0) -> int:
    """How many tasks may encode the levels of the points ``x`` (N, ...) at once: :func:`spare_threads`, at most
    ``most`` (0: no limit), 1 below :data:`MIN_SPLIT_POINTS` points."""
    if x.shape[0] < MIN_SPLIT_POINTS:
        return 1
    spare = spare_threads(x)
    return min(spare, most) if most > 0 else spare


def encode_levels_fast(
    x: Tensor, tables: list[Tensor], levels: list[_Level], saved: list | None = None, tasks: int = 1
) -> Tensor:
    """Non-differentiable encoding (inference and the custom Function's forward). x (N, 3) -> (N, L*F).

    The levels are independent, so ``tasks`` > 1 encodes them at once, dealt in turn to one-thread tasks
    (:func:`map_at_once`): a level's ops are the same ones on one thread, so with a one-thread caller the bits are
    those of ``tasks=1``."""

    def level(k: int) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]]]:
        idx, frac = level_corners(x, levels[k].res, levels[k].dense, levels[k].log2_size)
        fr = expand_frac(frac, tables[k].shape[1])
        return trilinear([gather_rows(tables[k], i) for i in idx], *fr), (idx, fr)

    done = map_at_once(level, len(levels), tasks)
    if saved is not None:
        saved.extend(kept for _, kept in done)
    return torch.cat([out for out, _ in done], 1)


class _HashGridFn(torch.autograd.Function):
    """Encoding with a hand-written table gradient; x gets none (see :func:`encode_levels_autograd` for that)."""

    @staticmethod
    def forward(ctx, x: Tensor, levels: list[_Level], tasks: int, *tables: Tensor) -> Tensor:
        # Indices are kept (8 x int64 per point and level) rather than recomputed: hashing is ~15% of the forward.
        ctx.saved = []
        ctx.shapes = [t.shape for t in tables]
        ctx.tasks = tasks
        return encode_levels_fast(x, list(tables), levels, ctx.saved, tasks)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        starts = [0, *itertools.accumulate(shape[1] for shape in ctx.shapes)]

        def level(k: int) -> Tensor:  # each level's table gradient on its own, like its forward
            (idx, fr), shape = ctx.saved[k], ctx.shapes[k]
            grad_table = torch.zeros(shape, dtype=grad_out.dtype, device=grad_out.device)
            trilinear_scatter_(grad_table, idx, grad_out[:, starts[k] : starts[k + 1]].contiguous(), *fr)
            return grad_table

        return (None, None, None, *map_at_once(level, len(ctx.shapes), ctx.tasks))


def tcnn_available() -> bool:
    """True when tiny-cuda-nn imports and a CUDA device exists (the only place tinycudann is imported)."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a broken build raising OSError/RuntimeError
        return False
    return True


def _make_tcnn(cfg: HashEncodingConfig) -> nn.Module:
    import tinycudann as tcnn

    spec = {
        "otype": "HashGrid",
        "n_levels": cfg.n_levels,
        "n_features_per_level": cfg.n_features_per_level,
        "log2_hashmap_size": cfg.log2_hashmap_size,
        "base_resolution": cfg.base_resolution,
        "per_level_scale": cfg.per_level_scale,
    }
    return tcnn.Encoding(3, spec, dtype=torch.float32)


def resolve_encoding_backend(requested: str, device: torch.device | str | None = None) -> str:
    """The backend an encoding built for ``device`` uses: "torch" or "tcnn" (auto: tcnn on CUDA when importable).

    Fixed once, at construction: the two keep different parameters, so choosing per call (as an earlier version
    did) let a field trained with tcnn be exported or resumed on a CPU with its untrained torch tables.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown hash encoding backend {requested!r}; use one of {', '.join(BACKENDS)}")
    on_cuda = torch.device(device or "cpu").type == "cuda"
    if requested == "tcnn" and not (on_cuda and tcnn_available()):
        raise RuntimeError("field.encoding.backend=tcnn needs tinycudann and a CUDA device; use backend=torch")
    if requested == "auto":
        return "tcnn" if on_cuda and tcnn_available() else "torch"
    return requested


class EncodingBackendMismatch(UserError):
    """A state dict written by one encoding backend loaded into an encoding built with the other."""


def saved_encoding_backend(state_dict: dict, prefix: str = "") -> str:
    """The backend whose parameters a hash encoding's state dict holds ("torch" when it predates the record)."""
    extra = state_dict.get(prefix + "_extra_state")
    return extra.get("backend", "torch") if isinstance(extra, dict) else "torch"


def check_encoding_backend(state_dict: dict, backend: str, prefix: str = "") -> None:
    """Refuse, in one line naming the fix, a state dict of the other backend: tiny-cuda-nn's grid has its own
    resolutions and vertex offsets, so its parameters have no exact counterpart in the torch tables."""
    saved = saved_encoding_backend(state_dict, prefix)
    if saved == backend:
        return
    fix = (
        "resume or export it on a CUDA machine with tiny-cuda-nn installed"
        if saved == "tcnn"
        else "resume it with field.encoding.backend=torch"
    )
    raise EncodingBackendMismatch(
        f"field.encoding.backend: the checkpoint holds {saved} hash-grid parameters but this machine builds a "
        f"{backend} encoding, and the two layouts cannot be converted exactly; {fix}"
    )


class HashEncoding(nn.Module):
    """Multiresolution hash encoding. forward(x (N, 3) in [0, 1]) -> (N, n_levels * n_features_per_level).

    The backend is fixed when the module is built (:func:`resolve_encoding_backend`) and holds the only
    parameters: the torch tables (one parameter per level, ``tables.<l>``, rows x features: a level's gradient is
    then at most 4 MiB (F=2, 2**19 rows), below glibc's 32 MiB mmap threshold, so its buffer is reused instead of
    page-faulted afresh) or tiny-cuda-nn's flat parameter vector. The backend travels in the state dict
    (``_extra_state``), so a checkpoint says which layout it holds and loading it into the other one refuses.
    """

    def __init__(self, cfg: HashEncodingConfig | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg = cfg or HashEncodingConfig()
        self.backend = resolve_encoding_backend(cfg.backend, device)
        self.out_dim = cfg.n_levels * cfg.n_features_per_level
        self.levels = level_layout(cfg)
        self.tables = nn.ParameterList()
        self.tcnn: nn.Module | None = None
        if self.backend == "tcnn":
            self.tcnn = _make_tcnn(cfg)
        else:
            self.tables.extend(
                nn.Parameter((torch.rand(level_rows(lv), cfg.n_features_per_level) * 2 - 1) * cfg.init_scale)
                for lv in self.levels
            )
        log.info("HashEncoding backend: %s (config %s)", self.backend, cfg.backend)

    def get_extra_state(self) -> dict:
        return {"backend": self.backend}

    def set_extra_state(self, state: dict) -> None:
        pass  # checked in _load_from_state_dict, before any parameter is copied

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        key = prefix + "_extra_state"
        # Checkpoints written before the backend was recorded hold torch tables.
        state_dict.setdefault(key, {"backend": "torch"})
        check_encoding_backend(state_dict, self.backend, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)

    def forward(self, x: Tensor) -> Tensor:
        if self.tcnn is not None:
            if not x.is_cuda:
                raise RuntimeError("a tcnn hash encoding takes CUDA inputs; build it with backend=torch for the CPU")
            return self.tcnn(x.contiguous()).float()
        x = x.clamp(0.0, 1.0)
        tables = list(self.tables)
        if torch.is_grad_enabled() and x.requires_grad:  # grads in x: autograd (the Function's are the tables')
            return encode_levels_autograd(x, tables, self.levels)
        tasks = level_tasks(x, self.cfg.cpu_tasks)
        if not torch.is_grad_enabled():
            return encode_levels_fast(x, tables, self.levels, tasks=tasks)
        return _HashGridFn.apply(x, self.levels, tasks, *tables)
