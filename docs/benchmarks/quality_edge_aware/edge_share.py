"""Which share of a trained surface an edge-aware curvature weight would ease:
``edge_share.py RUN/checkpoints/step_000900.pt ...`` (main-job runs with their ``mesh.ply``).

For each wide stencil and threshold T, the share of 20,000 surface points whose weight ``min(1, (T / |Δf|)²)``
falls under 0.5; a cube's points are split into the band within 0.08 of an edge and the faces.
"""

import argparse
import dataclasses

import numpy as np
import torch
import trimesh
from omegaconf import OmegaConf

from dreamnfsd.models import FieldConfig, build_field

parser = argparse.ArgumentParser()
parser.add_argument("ckpts", nargs="+")
args = parser.parse_args()
for ckpt in args.ckpts:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FieldConfig), state["config"]["field"]))
    run = ckpt.split("/checkpoints")[0]
    pts, _ = trimesh.sample.sample_surface(trimesh.load(run + "/mesh.ply", force="mesh"), 20000, seed=0)
    x = torch.tensor(pts, dtype=torch.float32)
    edge = np.sort(np.abs(pts), 1)[:, 1] > 0.42  # for a cube: within 0.08 of an edge
    for eps in (0.03, 0.05, 0.08):
        field = build_field(dataclasses.replace(cfg, fd_eps=eps))  # the stencil is built from fd_eps, not saved
        field.load_state_dict(state["scene"]["field"])
        with torch.no_grad():
            lap = field.differentials(x)["laplacian"].abs().numpy()
        line = f"{ckpt}: stencil {eps}, median |lap| {np.median(lap):.1f}"
        for t in (8, 12, 16):
            eased = (t / np.maximum(lap, 1e-6)) ** 2 < 0.5
            split = f"edge band {eased[edge].mean():.2f}, faces {eased[~edge].mean():.2f}"
            line += f" | T {t}: {eased.mean():.2f} ({split})"
        print(line)
