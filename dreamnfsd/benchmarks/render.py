"""The NeRF-core benchmark on CPU: field throughput against a nerfstudio-style reference, and rendering speed.

Measured in one run, so the ratios compare like with like on the same (possibly shared) machine:

1. Field forward+backward points/s (hash encoding alone and the whole field = encoding + MLP), eager and compiled,
   for ours and for :class:`NerfstudioStyleHashEncoding`, a re-implementation of nerfstudio's pure-torch
   ``HashEncoding`` algorithm (all levels hashed, ceil/floor corners, 8 hash+gather passes, plain autograd) at equal
   settings (the default :class:`~dreamnfsd.models.FieldConfig`; same MLP). "Compiled" means ``torch.compile`` of the
   reference field, and for ours ``FieldConfig(compile=True)``: the MLP compiled, the encoding eager (compiling the
   encoding was slow to build and slower than its eager custom-backward path on CPU).
2. Rendering rays/s of a trained scene (the analytic sphere + box of :mod:`dreamnfsd.data.analytic_scene`, fitted
   for a few hundred steps): our renderer with the occupancy grid, without it (dense marching, early stopping still
   on), and :func:`naive_render`, a dense reference (every step in the box evaluated, no early stop), with samples per
   ray, PSNR against the analytic images and MSE against the naive reference for each.

Memory: glibc serves each allocation over its mmap threshold (at most 32 MiB) with fresh pages, paying page faults
on every call; the encoding keeps its per-level tensors below that. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35) backs the remaining large blocks with transparent huge pages; ``MALLOC_MMAP_THRESHOLD_`` cannot be
raised past 32 MiB. The report records which of these were set.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from dreamnfsd.benchmarks.common import format_table, host_environment, time_interleaved
from dreamnfsd.data.analytic_scene import (
    FitConfig,
    background,
    fit,
    held_out_views,
    psnr,
    reference_render,
    training_views,
)
from dreamnfsd.models import Background, BackgroundConfig, FieldConfig, HashEncodingConfig, NeRFField
from dreamnfsd.rendering import OccupancyGrid, OccupancyGridConfig, RendererConfig, VolumeRenderer


@dataclass
class RenderBenchConfig:
    points: tuple[int, ...] = (65536, 262144)  # field batch sizes
    reps: int = 5  # timed repetitions per variant
    compile: bool = True  # also time the compiled fields
    train_steps: int = 300  # fitting steps of the rendered scene
    train_views: int = 32
    train_res: int = 32
    render_res: int = 64  # held-out view size


# --- the public reference: nerfstudio's torch HashEncoding algorithm, re-implemented --------------------------------
class NerfstudioStyleHashEncoding(nn.Module):
    """Every level hashed into its own 2^k slice of one table; corners from ceil/floor of the scaled point; each of
    the 8 corners hashed and gathered separately; blended by lerps along x, y, z; autograd does the backward."""

    # Buffers (registered in __init__), declared for the type checker.
    scalings: Tensor  # (L,) float64
    level_offset: Tensor  # (L,) int64
    primes: Tensor  # (3,) int64

    def __init__(self, cfg: HashEncodingConfig):
        super().__init__()
        n = cfg.n_levels
        self.size = 1 << cfg.log2_hashmap_size
        levels = torch.arange(n)
        self.register_buffer("scalings", torch.floor(cfg.base_resolution * cfg.per_level_scale ** levels.double()))
        self.register_buffer("level_offset", levels * self.size)
        self.register_buffer("primes", torch.tensor([1, 2654435761, 805459861]))
        self.table = nn.Parameter((torch.rand(self.size * n, cfg.n_features_per_level) * 2 - 1) * 1e-3)
        self.out_dim = n * cfg.n_features_per_level

    def hash(self, corner: Tensor) -> Tensor:
        """int (..., L, 3) -> table rows (..., L)."""
        p = corner * self.primes
        return (p[..., 0] ^ p[..., 1] ^ p[..., 2]) % self.size + self.level_offset

    def forward(self, x: Tensor) -> Tensor:
        """Points (..., 3) in [0, 1] -> features (..., L * F)."""
        scaled = x[..., None, :] * self.scalings.float()[:, None]  # (..., L, 3)
        hi, lo = torch.ceil(scaled).int(), torch.floor(scaled).int()
        frac = scaled - lo

        def feat(bx: int, by: int, bz: int) -> Tensor:
            pick = [(hi if b else lo)[..., i : i + 1] for i, b in enumerate((bx, by, bz))]
            return self.table[self.hash(torch.cat(pick, -1))]

        fx, fy, fz = frac[..., 0:1], frac[..., 1:2], frac[..., 2:3]
        along_x = {(by, bz): feat(1, by, bz) * fx + feat(0, by, bz) * (1 - fx) for by in (0, 1) for bz in (0, 1)}
        along_y = {bz: along_x[(1, bz)] * fy + along_x[(0, bz)] * (1 - fy) for bz in (0, 1)}
        return (along_y[1] * fz + along_y[0] * (1 - fz)).flatten(-2)


def reference_field(cfg: FieldConfig) -> NeRFField:
    """Our field with the encoding swapped for the reference one (same MLP, activation and blob)."""
    f = NeRFField(cfg)
    f.encoding = NerfstudioStyleHashEncoding(cfg.encoding)  # type: ignore[assignment]  # a duck-typed stand-in
    return f


def naive_render(field: nn.Module, origins: Tensor, dirs: Tensor, bg: Tensor, bound: float, step: float) -> dict:
    """Dense reference: every fixed step inside the box is evaluated, composited with a per-ray 2-D cumsum.

    origins, dirs, bg: (R, 3). Returns rgb (R, 3) and the number of field evaluations."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    a, b = (-bound - origins) * inv, (bound - origins) * inv
    t0 = torch.minimum(a, b).amax(-1).clamp(min=0)
    t1 = torch.maximum(a, b).amin(-1)
    n_steps = math.ceil(float((t1 - t0).clamp(min=0).max()) / step)
    k = torch.arange(n_steps, dtype=origins.dtype)
    starts = t0[:, None] + k * step
    ends = torch.minimum(starts + step, t1[:, None])
    inside = ends > starts
    mid = 0.5 * (starts + ends)
    pts = (origins[:, None] + mid[..., None] * dirs[:, None])[inside]
    out = field(pts)
    sigma = torch.zeros_like(mid).masked_scatter(inside, out["density"])
    albedo = torch.zeros(*mid.shape, 3).masked_scatter(inside[..., None].expand(-1, -1, 3), out["albedo"])
    tau = sigma * (ends - starts).clamp(min=0)
    trans = torch.exp(-(tau.cumsum(1) - tau))
    w = trans * (1 - torch.exp(-tau))
    rgb = (w[..., None] * albedo).sum(1) + (1 - w.sum(1, keepdim=True)) * bg
    return {"rgb": rgb, "num_samples": int(inside.sum())}


# --- 1. the field ---------------------------------------------------------------------------------------------------
def fwd_bwd(module: nn.Module, x: Tensor, is_field: bool) -> None:
    """One forward and backward pass of a field (density + albedo) or an encoding (its features)."""
    out = module(x)
    loss = out["density"].mean() + out["albedo"].mean() if is_field else out.square().mean()
    module.zero_grad(set_to_none=True)
    loss.backward()


def bench_field(points: int, reps: int, compile_too: bool) -> list[dict]:
    """Forward+backward rows (what, mode, impl, points/s, ...) of ours and the reference on ``points`` points."""
    cfg = FieldConfig()
    torch.manual_seed(0)
    x = torch.rand(points, 3) * 1.8 - 0.9
    ours, ref = NeRFField(cfg), reference_field(cfg)
    cases: dict[tuple[str, str, str], tuple[nn.Module, bool, Tensor]] = {
        ("encoding", "eager", "ours"): (ours.encoding, False, (x + 1) / 2),
        ("encoding", "eager", "reference"): (ref.encoding, False, (x + 1) / 2),
        ("field", "eager", "ours"): (ours, True, x),
        ("field", "eager", "reference"): (ref, True, x),
    }
    if compile_too:
        cases[("field", "compiled", "ours")] = (NeRFField(FieldConfig(compile=True)), True, x)
        # torch.compile of a module returns an OptimizedModule (an nn.Module); its stub says only "a callable".
        compiled = cast(nn.Module, torch.compile(reference_field(cfg), dynamic=False))
        cases[("field", "compiled", "reference")] = (compiled, True, x)
    variants = {key: (lambda m=m, f=f, i=i: fwd_bwd(m, i, f)) for key, (m, f, i) in cases.items()}
    timings = time_interleaved(variants, reps)
    rows: list[dict[str, Any]] = []
    for (what, mode, impl), t in timings.items():
        rows.append(
            {
                "what": what,
                "mode": mode,
                "impl": impl,
                "points": points,
                "median_s": t.median_s,
                "min_s": t.min_s,
                "points_per_s": points / t.median_s,
                "first_call_s": t.first_s,
            }
        )
    by_key = {(r["what"], r["mode"], r["impl"]): r for r in rows}
    for (what, mode, impl), r in by_key.items():
        if impl == "ours":
            r["speedup_vs_reference"] = by_key[(what, mode, "reference")]["median_s"] / r["median_s"]
    return rows


# --- 2. rendering ---------------------------------------------------------------------------------------------------
def train_scene(cfg: RenderBenchConfig, seed: int = 0) -> tuple[VolumeRenderer, float]:
    """The default-size field and a 64^3 grid fitted to views of the analytic scene; returns it and the seconds."""
    torch.manual_seed(seed)
    field = NeRFField(FieldConfig(blob_density=0.0))
    warmup = min(32, cfg.train_steps // 4)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=64, warmup_steps=warmup, update_every=16))
    renderer = VolumeRenderer(field, grid, Background(BackgroundConfig(kind="constant")), RendererConfig())
    o, d = training_views(cfg.train_views, cfg.train_res).rays()
    t = time.perf_counter()
    targets = reference_render(o, d).reshape(-1, 3)
    fit(renderer, o.reshape(-1, 3), d.reshape(-1, 3), targets, FitConfig(steps=cfg.train_steps))
    return renderer, time.perf_counter() - t


def bench_render(renderer: VolumeRenderer, res: int, reps: int) -> dict:
    """Rays/s, samples per ray and image quality of ours with and without the grid, and of the naive reference, on
    the held-out views at ``res`` x ``res``."""
    o, d = held_out_views(res).rays()
    bg = background(d)
    target = reference_render(o, d)
    dense = VolumeRenderer(renderer.field, None, renderer.background, renderer.cfg)
    n_rays = o.shape[0] * res * res
    o_flat, d_flat, bg_flat = (t.reshape(-1, 3) for t in (o, d, bg))

    def ours(r: VolumeRenderer) -> Callable[[], dict]:
        return lambda: r.render(o, d, background_color=bg)

    def naive() -> dict:
        out = naive_render(renderer.field, o_flat, d_flat, bg_flat, renderer.bound, renderer.step_size)
        return {"rgb": out["rgb"].view_as(o), "num_samples": out["num_samples"]}

    variants = {"ours_grid": ours(renderer), "ours_no_grid": ours(dense), "naive_dense": naive}
    with torch.no_grad():
        timings = time_interleaved(variants, reps)
    reference_rgb = timings["naive_dense"].first_output["rgb"]
    results: dict[str, Any] = {}
    for k, t in timings.items():
        out = t.first_output
        results[k] = {
            "rays": n_rays,
            "median_s": t.median_s,
            "rays_per_s": n_rays / t.median_s,
            "samples_per_ray": out["num_samples"] / n_rays,
            "psnr_vs_analytic": psnr(out["rgb"], target),
            "mse_vs_naive": float((out["rgb"] - reference_rgb).square().mean()),
            "speedup_vs_naive": timings["naive_dense"].median_s / t.median_s,
        }
    assert renderer.grid is not None  # train_scene's renderer has a grid
    results["grid_occupied_fraction"] = renderer.grid.occupied_fraction()
    return results


# --- the run and its report -----------------------------------------------------------------------------------------
def run(cfg: RenderBenchConfig) -> dict:
    """Both parts; returns the JSON report (env, field rows, render results, training time)."""
    env = host_environment()
    field_rows = [row for n in cfg.points for row in bench_field(n, cfg.reps, cfg.compile)]
    renderer, train_s = train_scene(cfg)
    render = bench_render(renderer, cfg.render_res, cfg.reps)
    env["load_avg_end"] = os.getloadavg()[0]
    return {
        "env": env,
        "field": field_rows,
        "render": render,
        "train": {"steps": cfg.train_steps, "seconds": train_s},
        "render_res": cfg.render_res,
    }


def field_table(rows: list[dict]) -> str:
    columns = [
        ("what", "<9"),
        ("mode", "<9"),
        ("points", ">7"),
        ("ours pts/s", ">12,.0f"),
        ("ref pts/s", ">12,.0f"),
        ("ours ms", ">8.1f"),
        ("ref ms", ">8.1f"),
        ("x ref", ">6.2f"),
    ]
    table = []
    for r in rows:
        if r["impl"] != "ours":
            continue
        key = (r["what"], r["mode"], r["points"])
        ref = next(q for q in rows if q["impl"] == "reference" and (q["what"], q["mode"], q["points"]) == key)
        table.append(
            (
                *key,
                r["points_per_s"],
                ref["points_per_s"],
                1e3 * r["median_s"],
                1e3 * ref["median_s"],
                r["speedup_vs_reference"],
            )
        )
    return format_table(columns, table)


def render_table(render: dict) -> str:
    columns = [
        ("renderer", "<14"),
        ("rays/s", ">10,.0f"),
        ("ms", ">8.1f"),
        ("samples/ray", ">12.1f"),
        ("x naive", ">8.2f"),
        ("PSNR", ">6.2f"),
        ("MSE vs naive", ">13.2e"),
    ]
    keys = ("ours_grid", "ours_no_grid", "naive_dense")
    rows = [
        (
            k,
            render[k]["rays_per_s"],
            1e3 * render[k]["median_s"],
            render[k]["samples_per_ray"],
            render[k]["speedup_vs_naive"],
            render[k]["psnr_vs_analytic"],
            render[k]["mse_vs_naive"],
        )
        for k in keys
    ]
    return format_table(columns, rows)


def summary(report: dict) -> str:
    """The report as text: the field table, then the rendering table."""
    env, render, train = report["env"], report["render"], report["train"]
    res = report["render_res"]
    return (
        f"Field forward+backward (threads={env['threads']}, torch {env['torch']})\n{field_table(report['field'])}\n\n"
        f"Rendering 4 x {res}x{res} held-out views of the trained scene ({train['steps']} steps, "
        f"{train['seconds']:.0f} s to train; grid {100 * render['grid_occupied_fraction']:.1f}% occupied)\n"
        f"{render_table(render)}"
    )
