"""|laplacian f| on the surface of trained SDF fields:
``lap_dist.py [--eps E]... [--ease T]... RUN/checkpoints/step_000900.pt ...``.

Samples 20,000 points on each run's exported ``mesh.ply`` and prints percentiles of the field's finite-difference
Laplacian there (the field's own ``differentials``, at its training ``fd_eps`` and again built with each wider
``--eps``), and the shares above 20 and 40. With ``--ease T`` (quality_edge_aware) it also prints, per T, the share
whose edge-aware weight ``min(1, (T / |laplacian|)^2)`` falls under 0.5, split for a cube into the band within 0.08
of an edge and the faces.
"""

import argparse
import dataclasses

import numpy as np
import torch
import trimesh
from omegaconf import OmegaConf

from dreamnfsd.models import FieldConfig, build_field

parser = argparse.ArgumentParser()
parser.add_argument("--eps", type=float, action="append", default=[], help="a wider step (repeatable)")
parser.add_argument("--ease", type=float, action="append", default=[], help="an edge-aware threshold T (repeatable)")
parser.add_argument("ckpts", nargs="+")
args = parser.parse_args()
for ckpt in args.ckpts:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FieldConfig), state["config"]["field"]))
    run = ckpt.split("/checkpoints")[0]
    mesh = trimesh.load(run + "/mesh.ply", force="mesh")
    pts, _ = trimesh.sample.sample_surface(mesh, 20000, seed=0)
    x = torch.tensor(pts, dtype=torch.float32)
    edge = np.sort(np.abs(pts), 1)[:, 1] > 0.42  # for a cube: within 0.08 of an edge
    for eps in [cfg.fd_eps, *args.eps]:
        field = build_field(dataclasses.replace(cfg, fd_eps=eps))  # the stencil is built from fd_eps, not saved
        field.load_state_dict(state["scene"]["field"])
        field.eval()
        with torch.no_grad():
            lap = field.differentials(x)["laplacian"].abs().numpy()
        q = " ".join(f"{v:.1f}" for v in np.percentile(lap, [10, 25, 50, 75, 90, 95, 99]))
        shares = f"share > 20: {(lap > 20).mean():.3f}, > 40: {(lap > 40).mean():.3f}"
        for t in args.ease:
            eased = (t / np.maximum(lap, 1e-6)) ** 2 < 0.5
            split = f"edge band {eased[edge].mean():.2f}, faces {eased[~edge].mean():.2f}"
            shares += f" | eased at T {t:g}: {eased.mean():.2f} ({split})"
        print(f"{run} eps {eps:g}: percentiles 10..99 {q} | {shares}")
