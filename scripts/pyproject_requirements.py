"""Print pyproject's runtime requirements (plus chosen extras), one per line, for ``pip install -r``.

The Docker image's dependency layer runs this before the source is copied (dreamnfsd.utils.requirements says why).
Usage: ``python scripts/pyproject_requirements.py [--extra cuda ...] [pyproject.toml]`` (tomli on Python 3.10).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or the image's partial copy of it)

from dreamnfsd.utils.requirements import requirements  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional-dependencies group to add")
    args = parser.parse_args(argv)
    try:
        reqs = requirements(args.pyproject, args.extra)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    sys.stdout.write("".join(f"{r}\n" for r in reqs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
