#!/usr/bin/env python
"""Benchmark of the NeRF core on CPU: field throughput against a nerfstudio-style reference, and rendering speed.

Measured in one run, so the ratios compare like with like on the same (possibly shared) machine:

1. Field forward+backward points/s at 65,536 and 262,144 points (hash encoding alone and the whole field = encoding
   + MLP), eager and compiled, for ours and for a re-implementation of nerfstudio's pure-torch ``HashEncoding``
   algorithm (all levels hashed, ceil/floor corners, 8 hash+gather passes, plain autograd) at equal settings
   (16 levels x 2 features, 2^19 rows, base 16, scale 1.447; same MLP). "Compiled" means ``torch.compile`` of the
   reference field, and for ours ``FieldConfig(compile=True)``: the MLP compiled, the encoding eager (compiling the
   encoding took 45-70 s and was slower than its eager custom-backward path on this CPU).
2. Rendering rays/s at 64x64 of a trained scene (the analytic sphere + box of tests/analytic_scene.py, trained for a
   few hundred steps; ``--quick`` for fewer): our renderer with the occupancy grid, without it (dense marching,
   early stopping still on), and a naive dense reference (every step in the box evaluated, no early stop), with
   samples per ray for each.

Memory: glibc serves each allocation over its mmap threshold (at most 32 MiB) with fresh pages, paying page faults
on every call; the encoding keeps its per-level tensors below that. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35) backs the remaining large blocks with transparent huge pages; ``MALLOC_MMAP_THRESHOLD_`` cannot be
raised past 32 MiB. The JSON records which of these were set.

On a shared 2-core machine a second intra-op thread can make every op wait for a descheduled core (~6 ms per op
was seen); ``--threads 1`` gives steadier numbers there.

Usage: python scripts/bench_render.py [--quick] [--threads N] [--out outputs/bench_render.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dreamnfsd.models import Background, FieldConfig, HashEncodingConfig, NeRFField  # noqa: E402
from dreamnfsd.rendering import OccupancyGrid, OccupancyGridConfig, RendererConfig, VolumeRenderer  # noqa: E402
from tests.analytic_scene import (  # noqa: E402
    FitConfig,
    background,
    fit,
    held_out_views,
    psnr,
    reference_render,
    training_views,
)


# ---- the public reference: nerfstudio's torch HashEncoding algorithm, re-implemented ------------------------------
class NerfstudioStyleHashEncoding(nn.Module):
    """Every level hashed into its own 2^k slice of one table; corners from ceil/floor of the scaled point; each of
    the 8 corners hashed and gathered separately; blended by lerps along x, y, z; autograd does the backward."""

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
    f.encoding = NerfstudioStyleHashEncoding(cfg.encoding)
    return f


# ---- timing ---------------------------------------------------------------------------------------------------------
def fwd_bwd(module: nn.Module, x: Tensor, field: bool) -> float:
    t = time.perf_counter()
    out = module(x)
    loss = out["density"].mean() + out["albedo"].mean() if field else out.square().mean()
    module.zero_grad(set_to_none=True)
    loss.backward()
    return time.perf_counter() - t


def bench_field(sizes: list[int], reps: int, compile_too: bool) -> list[dict]:
    """Points/s of forward+backward for each variant; variants are interleaved rep by rep."""
    cfg = FieldConfig()
    rows = []
    for n in sizes:
        torch.manual_seed(0)
        x = torch.rand(n, 3) * 1.8 - 0.9
        ours, ref = NeRFField(cfg), reference_field(cfg)
        variants = {
            ("encoding", "eager", "ours"): (ours.encoding, False, (x + 1) / 2),
            ("encoding", "eager", "reference"): (ref.encoding, False, (x + 1) / 2),
            ("field", "eager", "ours"): (ours, True, x),
            ("field", "eager", "reference"): (ref, True, x),
        }
        compile_s = {}
        if compile_too:
            ours_c = NeRFField(FieldConfig(compile=True))
            ref_c = torch.compile(reference_field(cfg), dynamic=False)
            variants[("field", "compiled", "ours")] = (ours_c, True, x)
            variants[("field", "compiled", "reference")] = (ref_c, True, x)
        for key, (mod, is_field, inp) in variants.items():
            t = time.perf_counter()
            fwd_bwd(mod, inp, is_field)  # warm-up (and compilation)
            compile_s[key] = time.perf_counter() - t
        times: dict = {k: [] for k in variants}
        for _ in range(reps):
            for key, (mod, is_field, inp) in variants.items():
                times[key].append(fwd_bwd(mod, inp, is_field))
        for (what, mode, impl), ts in times.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "what": what,
                    "mode": mode,
                    "impl": impl,
                    "points": n,
                    "median_s": med,
                    "min_s": min(ts),
                    "points_per_s": n / med,
                    "first_call_s": compile_s[(what, mode, impl)],
                }
            )
        for what, mode in {(r["what"], r["mode"]) for r in rows if r["points"] == n}:
            pair = {r["impl"]: r for r in rows if (r["what"], r["mode"], r["points"]) == (what, mode, n)}
            pair["ours"]["speedup_vs_reference"] = pair["reference"]["median_s"] / pair["ours"]["median_s"]
        del variants
    return rows


# ---- rendering ------------------------------------------------------------------------------------------------------
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


def train_scene(steps: int, seed: int = 0) -> tuple[VolumeRenderer, float]:
    """The default-size field and a 64^3 grid, fitted to 32 views (32 px) of the analytic scene."""
    torch.manual_seed(seed)
    field = NeRFField(FieldConfig(blob_density=0.0))
    grid = OccupancyGrid(OccupancyGridConfig(resolution=64, warmup_steps=min(32, steps // 4), update_every=16))
    renderer = VolumeRenderer(field, grid, Background(), RendererConfig())
    o, d = training_views(32, 32).rays()
    t = time.perf_counter()
    fit(renderer, o.reshape(-1, 3), d.reshape(-1, 3), reference_render(o, d).reshape(-1, 3), FitConfig(steps=steps))
    return renderer, time.perf_counter() - t


def bench_render(renderer: VolumeRenderer, res: int, reps: int) -> dict:
    o, d = held_out_views(res).rays()
    bg = background(d)
    target = reference_render(o, d)
    dense = VolumeRenderer(renderer.field, None, renderer.background, renderer.cfg)
    n_rays = o.shape[0] * res * res
    flat = [t.reshape(-1, 3) for t in (o, d, bg)]

    def ours(r):
        return lambda: r.render(o, d, background_color=bg)

    def naive():
        out = naive_render(renderer.field, *flat, renderer.bound, renderer.step_size)
        return {"rgb": out["rgb"].view_as(o), "num_samples": out["num_samples"]}

    variants = {"ours_grid": ours(renderer), "ours_no_grid": ours(dense), "naive_dense": naive}
    results = {}
    with torch.no_grad():
        outs = {k: fn() for k, fn in variants.items()}  # warm-up
        times: dict = {k: [] for k in variants}
        for _ in range(reps):
            for k, fn in variants.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    for k, out in outs.items():
        med = statistics.median(times[k])
        results[k] = {
            "rays": n_rays,
            "median_s": med,
            "rays_per_s": n_rays / med,
            "samples_per_ray": out["num_samples"] / n_rays,
            "psnr_vs_analytic": psnr(out["rgb"], target),
            "mse_vs_naive": float((out["rgb"] - outs["naive_dense"]["rgb"]).square().mean()),
        }
    for k in results:
        results[k]["speedup_vs_naive"] = results["naive_dense"]["median_s"] / results[k]["median_s"]
    results["grid_occupied_fraction"] = renderer.grid.occupied_fraction()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer training steps and repetitions")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_render.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.train_steps or (60 if args.quick else 300)
    reps = 3 if args.quick else 5

    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "load_avg_start": os.getloadavg()[0],
    }
    field_rows = bench_field([65536, 262144], reps, not args.no_compile)
    renderer, train_s = train_scene(steps)
    render = bench_render(renderer, 64, reps)
    env["load_avg_end"] = os.getloadavg()[0]
    report = {"env": env, "field": field_rows, "render": render, "train": {"steps": steps, "seconds": train_s}}

    print(f"\nField forward+backward (threads={env['threads']}, torch {env['torch']})")
    head = ("what", "mode", "points", "ours pts/s", "ref pts/s", "ours ms", "ref ms", "x ref")
    print("{:9} {:9} {:>7} {:>12} {:>12} {:>8} {:>8} {:>6}".format(*head))
    for r in field_rows:
        if r["impl"] != "ours":
            continue
        ref = next(
            q
            for q in field_rows
            if q["impl"] == "reference" and (q["what"], q["mode"], q["points"]) == (r["what"], r["mode"], r["points"])
        )
        print(
            f"{r['what']:9} {r['mode']:9} {r['points']:>7} {r['points_per_s']:>12,.0f} {ref['points_per_s']:>12,.0f} "
            f"{1e3 * r['median_s']:>8.1f} {1e3 * ref['median_s']:>8.1f} {r['speedup_vs_reference']:>6.2f}"
        )
    print(
        f"\nRendering 4 x 64x64 held-out views of the trained scene ({steps} steps, {train_s:.0f} s to train; "
        f"grid {100 * render['grid_occupied_fraction']:.1f}% occupied)"
    )
    head = ("renderer", "rays/s", "ms", "samples/ray", "x naive", "PSNR", "MSE vs naive")
    print("{:14} {:>10} {:>8} {:>12} {:>8} {:>6} {:>13}".format(*head))
    for k in ("ours_grid", "ours_no_grid", "naive_dense"):
        v = render[k]
        print(
            f"{k:14} {v['rays_per_s']:>10,.0f} {1e3 * v['median_s']:>8.1f} {v['samples_per_ray']:>12.1f} "
            f"{v['speedup_vs_naive']:>8.2f} {v['psnr_vs_analytic']:>6.2f} {v['mse_vs_naive']:>13.2e}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
