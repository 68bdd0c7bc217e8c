"""Write a built-in prior export with its last stage taken at part strength, training nothing.

    .venv/bin/python scripts/blend_builtin_prior.py START END WEIGHT [--out FOLDER]

END must be the export of a training stage that started from START (``train_builtin_prior.py --init-from START``);
the result has END's files with its UNet weights START + WEIGHT (END - START), for a fine-tune that overshoots, and a
model card that records the blend. The work is dreamnfsd.guidance.priors.builtin_training.blend.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing the package too

from dreamnfsd.guidance.priors.builtin import DEFAULT_DIR  # noqa: E402
from dreamnfsd.guidance.priors.builtin_training import blend  # noqa: E402
from dreamnfsd.utils.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("start", type=Path, help="the export the stage started from")
    p.add_argument("end", type=Path, help="the stage's own export")
    p.add_argument("weight", help="the share of the stage's change to keep, between 0 and 1, e.g. 0.5")
    p.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder to write (default: the built-in prior)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        blend(args.start, args.end, args.weight, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
