"""Train the built-in camera-aware pixel prior on procedural primitive renders.

Example (the real run, about two hours on 2 CPU cores):
    nohup .venv/bin/python scripts/train_builtin_prior.py --steps 100000 --max-minutes 130 \
        > work_data/prior_train.log 2>&1 &
Resume after an interruption with the same command plus ``--resume``; export the newest EMA weights without training
with ``--resume --steps 0``. The training itself is dreamnfsd.guidance.priors.builtin_training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# The 2 cores are shared with other jobs: spinning OpenMP threads then wait on descheduled peers and a step becomes
# many times slower. Sleeping waits and glibc keeping large buffers mapped (FIELD-NOTES) avoid that; set before torch
# loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1000000000")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing the package too

from dreamnfsd.data import SHAPES  # noqa: E402
from dreamnfsd.guidance.priors.builtin_training import PriorTrainConfig, train  # noqa: E402
from dreamnfsd.utils.errors import UserError  # noqa: E402

D = PriorTrainConfig


def parse_args(argv: list[str] | None = None) -> PriorTrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--steps", type=int, default=D.steps, help="stop after this many total optimiser steps")
    p.add_argument("--max-minutes", type=float, default=D.max_minutes, help="wall-clock budget, counted from start")
    p.add_argument("--batch", type=int, default=D.batch)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--warmup", type=int, default=D.warmup)
    p.add_argument("--ema", type=float, default=D.ema)
    p.add_argument("--n-data", type=int, default=D.n_data)
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=D.min_snr_gamma,
        help="Min-SNR loss weight min(snr, gamma)/snr for epsilon (0 disables): the plain loss is dominated "
        "by small t and left large-t predictions, which set the image's mean colour, poorly trained",
    )
    p.add_argument(
        "--x0-weight-cap",
        type=float,
        default=D.x0_weight_cap,
        help="also weight each image's loss by clamp(1/snr, 1, cap) (0 disables): the epsilon loss "
        "scales x0 errors by snr, so at large t, where the object's outline and orientation are decided "
        "and the camera is the only clue to them, it barely asked for them and the camera went unused",
    )
    p.add_argument(
        "--cube-weight",
        type=float,
        default=D.cube_weight,
        help="sampling weight of cube images: the cube is the only shape whose look depends on azimuth, "
        "so it carries nearly all of the azimuth signal the camera channels must learn",
    )
    p.add_argument(
        "--pose-harmonics",
        type=int,
        default=D.pose_harmonics,
        help="azimuth harmonics of the UNet's global camera pose embedding (0: ray channels only)",
    )
    p.add_argument(
        "--pose-lr-mult",
        type=float,
        default=D.pose_lr_mult,
        help="learning-rate multiplier of the pose embedding (added late to a trained UNet, it starts at 0)",
    )
    p.add_argument(
        "--scale-jitter",
        type=float,
        default=D.scale_jitter,
        help="training images draw each primitive at 1 ± this size; 0 draws every object at the one size "
        "the benchmark's silhouettes are judged at, which the jittered prior only matched to IoU 0.85-0.91",
    )
    p.add_argument(
        "--edge-round",
        type=float,
        default=D.edge_round,
        help="round the edges of each cube, cylinder and cone by a radius uniform in [0, this] (faces stay in "
        "place): a trained surface's edges are never sharp at 32 px, and a prior that only saw sharp ones reads "
        "a rounded edge as a smaller object and asks for a larger one",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from an exported prior folder's weights (model and EMA; fresh optimiser, warm-up "
        "and random streams) instead of from scratch; its recorded option history carries over",
    )
    p.add_argument(
        "--calib-weight",
        type=float,
        default=D.calib_weight,
        help="weight of the size calibration term (0: off; needs --init-from, the prior it holds in place): a "
        "prior whose guidance pulls a true-size cube outward grows cubes past their size in 3D runs "
        "(dreamnfsd.guidance.priors.calibration)",
    )
    p.add_argument("--calib-shapes", nargs="+", choices=SHAPES, default=SHAPES, help="shapes zeroed (rest held)")
    p.add_argument("--calib-pull-weight", type=float, default=D.calib_pull_weight, help="per-image pulls' weight")
    p.add_argument("--calib-batch", type=int, default=D.calib_batch, help="calibration images a step")
    p.add_argument("--calib-n", type=int, default=D.calib_n, help="calibration images")
    p.add_argument("--calib-edge-round", type=float, default=D.calib_edge_round, help="their edges rounded up to")
    p.add_argument("--calib-scale-spread", type=float, default=D.calib_scale_spread, help="their sizes 1 +- this")
    p.add_argument("--calib-offset", nargs="*", choices=SHAPES, help="also the surface offset, of these (all) shapes")
    p.add_argument("--camera-drop", type=float, default=D.camera_drop)
    p.add_argument("--caption-drop", type=float, default=D.caption_drop)
    p.add_argument("--threads", type=int, default=D.threads)
    p.add_argument("--work-dir", type=Path, default=ROOT / "work_data")
    p.add_argument("--out", type=Path, default=D.out, help="exported model folder")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-minutes", type=float, default=D.checkpoint_minutes)
    p.add_argument(
        "--export-every", type=int, default=D.export_every, help="export the EMA model every N steps (0: only at end)"
    )
    p.add_argument("--log-every", type=int, default=D.log_every)
    args = vars(p.parse_args(argv))
    offset = SHAPES if args["calib_offset"] == [] else args["calib_offset"] or ()  # the flag alone: every shape
    return PriorTrainConfig(**args | {"calib_shapes": " ".join(args["calib_shapes"]), "calib_offset": " ".join(offset)})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (the first ends the run with a checkpoint), or one during start-up
        print("interrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
