"""|laplacian f| on the surface of trained SDF fields: ``lap_dist.py [--eps E]... RUN/checkpoints/step_000900.pt ...``.

Samples 20,000 points on each run's exported ``mesh.ply`` and prints percentiles of the field's finite-difference
Laplacian there (the training's tetrahedron stencil, at the field's ``fd_eps`` and at each wider ``--eps``), and the
shares above 20 and 40.
"""

import argparse

import numpy as np
import torch
import trimesh
from omegaconf import OmegaConf

from dreamnfsd.models import FieldConfig, build_field
from dreamnfsd.models.sdf_field import _TETRA

parser = argparse.ArgumentParser()
parser.add_argument("--eps", type=float, action="append", default=[], help="a wider step (repeatable)")
parser.add_argument("ckpts", nargs="+")
args = parser.parse_args()
for ckpt in args.ckpts:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FieldConfig), state["config"]["field"]))
    field = build_field(cfg)
    field.load_state_dict(state["scene"]["field"])
    field.eval()
    run = ckpt.split("/checkpoints")[0]
    mesh = trimesh.load(run + "/mesh.ply", force="mesh")
    pts, _ = trimesh.sample.sample_surface(mesh, 20000, seed=0)
    x = torch.tensor(pts, dtype=torch.float32)
    for eps in [cfg.fd_eps, *args.eps]:
        with torch.no_grad():
            corners = field.sdf((x[:, None, :] + torch.tensor(_TETRA) * eps).reshape(-1, 3)).view(-1, 4)
            lap = ((corners.sum(1) - 4.0 * field.sdf(x)) / (2.0 * eps * eps)).abs().numpy()
        q = " ".join(f"{v:.1f}" for v in np.percentile(lap, [10, 25, 50, 75, 90, 95, 99]))
        shares = f"share > 20: {(lap > 20).mean():.3f}, > 40: {(lap > 40).mean():.3f}"
        print(f"{run} eps {eps:g}: percentiles 10..99 {q} | {shares}")
