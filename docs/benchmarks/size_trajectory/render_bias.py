"""render_bias.py: does the training renderer show a primitive's zero level set at its true size?
Renders the analytic SDF of a primitive through the real VolumeRenderer (NeuS opacity) at several sharpness values
and step counts, with the preset's pixel jitter and stratified samples, and compares the mean rendered coverage with
the true box-filtered coverage (16x16 supersampled masks)."""

import math
import sys

import torch

from dreamnfsd.data.primitives import make_cameras, primitive_sdf
from dreamnfsd.eval.metrics import true_masks
from dreamnfsd.models import Background, BackgroundConfig, FieldConfig, HashEncodingConfig, SDFConfig
from dreamnfsd.models.sdf_field import SDFField
from dreamnfsd.rendering import RendererConfig, VolumeRenderer

torch.set_num_threads(1)
shape = sys.argv[1] if len(sys.argv) > 1 else "cube"


class Analytic(SDFField):
    def _sdf_albedo(self, x):
        return primitive_sdf(shape, x), torch.zeros(x.shape[0], 3, dtype=x.dtype)


enc = HashEncodingConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=1.5)
g = torch.Generator().manual_seed(0)
V = 16
az = torch.rand(V, generator=g) * 2 * math.pi
el = torch.deg2rad(-10 + 55 * torch.rand(V, generator=g))
res = 32
truth = torch.stack([true_masks(shape, az[i : i + 1], el[i : i + 1], res * 16)[0].float() for i in range(V)])
truth = torch.nn.functional.avg_pool2d(truth[:, None], 16)[:, 0]  # box-filtered coverage (V, 32, 32)
cams = make_cameras(az, el, res)
for s in (50.0, 130.0, 400.0):
    for steps in (64, 128, 256):
        field = Analytic(
            FieldConfig(kind="sdf", encoding=enc, hidden_dim=8, sdf=SDFConfig(sharpness_start=s, sharpness_end=s))
        )
        r = VolumeRenderer(field, None, Background(BackgroundConfig(kind="constant")), RendererConfig(num_steps=steps))
        acc = torch.zeros(V, res, res)
        n = 8
        for k in range(n):
            gen = torch.Generator().manual_seed(k)
            o, d = cams.rays(1.0, gen)
            with torch.enable_grad():  # stratified offsets only while gradients are enabled
                out = r.render(o, d, generator=gen)
            acc += out["opacity"][..., 0].detach()
        acc /= n
        print(
            f"{shape} s={s:5.0f} steps={steps:3d}  rendered area / true {acc.sum().item() / truth.sum().item():.4f}   "
            f"edge px: mean |diff| {(acc - truth).abs().mean().item():.4f}",
            flush=True,
        )
