"""pyproject's runtime requirements (plus chosen extras) as ``pip install -r`` lines.

The Docker image installs the dependencies in a layer of their own, before the source is copied, so that editing
code does not re-download them; reading them from pyproject keeps a single list of requirements. Standard library
only (tomli on Python 3.10), so that layer needs no more than this file and the package's ``__init__`` files.
"""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["requirements", "tomllib"]


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """``[project.dependencies]`` followed by each extra's ``optional-dependencies``, in order. Raises
    ``ValueError`` naming any extra pyproject does not define."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise ValueError(f"unknown extra(s) {unknown}; pyproject has {sorted(optional)}")
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += optional[extra]
    return reqs
