"""probe_rounded.py RHO probe-args...: the size-pull probe (scripts/probe_size_pull.py) on a cylinder and a cube whose
rims and edges are rounded with radius RHO (their SDFs shrunk by RHO, then offset by RHO)."""

import sys
from pathlib import Path

import dreamnfsd.data.primitives as P

rho = float(sys.argv[1])
P._SDFS["cylinder"] = lambda p: P._cylinder(p, 0.45 - rho, 0.55 - rho) - rho
P._SDFS["cube"] = lambda p: P._box(p, 0.5 - rho) - rho
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from probe_size_pull import main  # noqa: E402 (after the swap, and from the scripts folder)

sys.exit(main(sys.argv[2:]))
