"""Interpolate two built-in prior folders' UNet weights (an experiment of prior_calib/cube_round012, not the package):
OUT's UNet is A + ALPHA (B - A), everything else is copied from B.

    .venv/bin/python docs/benchmarks/prior_calib/cube_round012/interpolate.py A B ALPHA OUT
"""

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

a, b, alpha, out = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
shutil.copytree(b, out)  # refuses an existing OUT
(weights,) = list((b / "unet").glob("*.safetensors"))
wa, wb = load_file(a / "unet" / weights.name), load_file(weights)
assert wa.keys() == wb.keys(), "A and B must be the same architecture"
save_file({k: wa[k] + alpha * (wb[k] - wa[k]) for k in wb}, out / "unet" / weights.name, metadata={"format": "pt"})
print(f"wrote {out}")
