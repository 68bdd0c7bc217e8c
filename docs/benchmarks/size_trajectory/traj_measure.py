"""traj_measure.py RUN_DIR SHAPE: face positions (median coordinate of near-axis-normal vertices), volume and F at
every checkpoint, for the live field and (where there is one) the EMA average."""

import glob
import sys

import numpy as np
import torch
from omegaconf import OmegaConf

from dreamnfsd.eval.geometry import mesh_geometry_metrics
from dreamnfsd.export.mesh import extract_mesh
from dreamnfsd.models import FieldConfig, build_field
from dreamnfsd.train.coarse import checkpoint_field_kind

run, shape = sys.argv[1], sys.argv[2]


def measure(f, tag, step):
    with torch.no_grad():
        m = extract_mesh(f, 96, threshold="auto")
    v, n = np.asarray(m.vertices), np.asarray(m.vertex_normals)
    out = []
    for ax in range(3):
        for s in (1, -1):
            sel = n[:, ax] * s > np.cos(np.deg2rad(20))
            out.append(s * np.median(v[sel, ax]) if sel.sum() > 10 else np.nan)
    g = mesh_geometry_metrics(m, shape)
    r = np.hypot(v[:, 0], v[:, 1])
    side = np.abs(n[:, 2]) < 0.3
    print(
        step,
        tag,
        " ".join(f"{x:.3f}" for x in out),
        f"r_side {np.median(r[side]):.3f}",
        f"vol {g['volume']:.3f} F {g['fscore']:.3f} IoU {g['iou']:.3f}",
        f"share {g.get('axis_aligned_share') or float('nan'):.2f} s {float(f.sharpness):.0f}",
        flush=True,
    )


for p in sorted(glob.glob(run + "/checkpoints/step_*.pt")):
    step = int(p[-9:-3])
    if len(sys.argv) > 3 and step < int(sys.argv[3]):
        continue
    st = torch.load(p, map_location="cpu", weights_only=False)
    fs = st["scene"]["field"]
    if checkpoint_field_kind(fs) != "sdf":
        continue
    fc = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FieldConfig), st["config"]["field"]))
    f = build_field(fc)
    f.load_state_dict(fs)
    f.eval()
    measure(f, "live", step)
    if st.get("ema"):
        with torch.no_grad():
            for k, prm in f.named_parameters():
                prm.copy_(st["ema"][k])
        measure(f, "ema ", step)
