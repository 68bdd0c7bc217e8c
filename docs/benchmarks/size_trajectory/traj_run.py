"""traj_run.py OUT_ROOT overrides...: the CLI run, keeping every checkpoint (for a trajectory of the surface)."""

import functools
import sys

import dreamnfsd.train.trainer as T
from dreamnfsd.train.checkpoint import save_checkpoint

T.save_checkpoint = functools.partial(save_checkpoint, keep=1000)
from dreamnfsd.app.cli import main  # noqa: E402 (after the patch, which the CLI's trainer import must see)

sys.exit(main(sys.argv[1:]))
