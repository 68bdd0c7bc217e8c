"""``python -m dreamnfsd``: the same as the ``dreamnfsd`` command."""

import sys

from dreamnfsd.app.cli import main

sys.exit(main())
