"""Train the shape/colour classifier on procedural renders (elevation -10..90 degrees, overhead views included).

.venv/bin/python scripts/train_classifier.py --threads 1 --minutes 8

The training itself is dreamnfsd.eval.classifier_training.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing the package too

from dreamnfsd.eval.classifier_training import ClassifierTrainConfig, train_classifier  # noqa: E402

D = ClassifierTrainConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--n-train", type=int, default=D.n_train)
    p.add_argument("--n-val", type=int, default=D.n_val)
    p.add_argument("--minutes", type=float, default=D.minutes)
    p.add_argument("--batch", type=int, default=D.batch)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--threads", type=int, default=D.threads)
    p.add_argument("--out", type=Path, default=D.out)
    p.add_argument("--cache", type=Path, default=ROOT / "work_data", dest="cache_dir", help="dataset cache folder")
    p.add_argument("--log-every", type=int, default=D.log_every)
    cfg = ClassifierTrainConfig(**vars(p.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_classifier(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
