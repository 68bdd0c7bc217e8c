"""What a run folder says about itself, read once for its report (and for the sweep report's cards): ``run.json``,
``config.yaml``, ``metrics.jsonl``, its output files, its mesh and the mesh's 3D metrics against the true primitive
of a built-in-prior prompt. Every reader tolerates a missing or torn file: a report is written for a run in any state.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class RunFacts:
    """What a run folder says about itself: ``run.json``, ``config.yaml`` (parsed and as text), the metrics log."""

    run_dir: Path
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    config_text: str = ""
    overrides_text: str = ""
    records: list[dict] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(self.status.get("status") or "unknown")

    @property
    def prompt(self) -> str:
        return str(self.status.get("prompt") or self.config.get("prompt") or "")

    def setting(self, dotted: str):
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def output(self, key: str, name: str) -> Path | None:
        """An output file: where run.json says it is (a newer export), else in the run folder, else None."""
        recorded = (self.status.get("outputs") or {}).get(key)
        for path in (Path(recorded) if isinstance(recorded, str) else None, self.run_dir / name):
            if path is not None and path.is_file():
                return path
        return None

    @property
    def final_loss(self) -> float | None:
        losses = [r["loss"] for r in self.records if r.get("loss") is not None]
        return float(losses[-1]) if losses else None

    @property
    def builtin_shape(self) -> str | None:
        """The true primitive of a built-in-prior prompt ("a red cube" -> "cube"), else None."""
        words = self.prompt.split()
        if self.setting("prior.kind") != "builtin" or not words:
            return None  # checked first: dreamnfsd.data imports torch, which a report otherwise does not need
        from dreamnfsd.data import SHAPES

        return words[-1] if words[-1] in SHAPES else None


def read_run(run_dir: Path) -> RunFacts:
    import yaml

    from dreamnfsd.train.metrics_log import METRICS_FILE, read_metrics

    run_dir = Path(run_dir)
    facts = RunFacts(run_dir, records=read_metrics(run_dir / METRICS_FILE))
    try:
        facts.status = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        facts.status = {}
    for name in ("config.yaml", ".hydra/config.yaml"):
        try:
            facts.config_text = (run_dir / name).read_text()
            facts.config = yaml.safe_load(facts.config_text) or {}
            break
        except (OSError, yaml.YAMLError):
            continue
    with contextlib.suppress(OSError):
        facts.overrides_text = (run_dir / ".hydra" / "overrides.yaml").read_text()
    return facts


def measure(mesh, shape: str | None) -> tuple[dict | None, str | None]:
    """3D metrics of the run's mesh against its true primitive (built-in prompts only); never raises."""
    if shape is None or mesh is None:
        return None, None if shape is None else "the run wrote no mesh.ply"
    from dreamnfsd.eval.geometry import mesh_geometry_metrics

    try:
        return mesh_geometry_metrics(mesh, shape), None
    except Exception as e:  # a degenerate mesh must not cost the whole report
        log.warning("3D metrics of %s failed: %s", shape, e)
        return None, f"{type(e).__name__}: {e}"


def read_mesh(facts: RunFacts):
    """The run's ``mesh.ply`` as a trimesh, or None (none written, or unreadable: then the page says so)."""
    ply = facts.output("ply", "mesh.ply")
    if ply is None:
        return None
    try:
        import trimesh

        return trimesh.load(ply, force="mesh")
    except Exception as e:  # a torn file costs the 3D view and the metrics, not the page
        log.warning("could not read %s: %s", ply, e)
        return None
