"""|laplacian f| on the surface of trained SDF fields: ``lap_dist.py RUN/checkpoints/step_000900.pt ...``.

Samples 20,000 points on each run's exported ``mesh.ply`` and prints percentiles of the field's own
finite-difference Laplacian there, and the shares above 20 and 40.
"""

import sys

import numpy as np
import torch
import trimesh
from omegaconf import OmegaConf

from dreamnfsd.models import FieldConfig, build_field

for ckpt in sys.argv[1:]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FieldConfig), state["config"]["field"]))
    field = build_field(cfg)
    field.load_state_dict(state["scene"]["field"])
    field.eval()
    run = ckpt.split("/checkpoints")[0]
    mesh = trimesh.load(run + "/mesh.ply", force="mesh")
    pts, _ = trimesh.sample.sample_surface(mesh, 20000, seed=0)
    with torch.no_grad():
        lap = field.differentials(torch.tensor(pts, dtype=torch.float32))["laplacian"].abs().numpy()
    q = " ".join(f"{v:.1f}" for v in np.percentile(lap, [10, 25, 50, 75, 90, 95, 99]))
    print(f"{run}: percentiles 10..99 {q} | share > 20: {(lap > 20).mean():.3f}, > 40: {(lap > 40).mean():.3f}")
