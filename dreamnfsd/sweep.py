"""Hydra callback that writes a sweep's ``summary.json`` and ``summary.md`` once every job has ended."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback

COLUMNS = ("prompt", "guidance", "seed", "status", "step", "steps", "wall_time_s", "run_dir")


def collect_runs(sweep_dir: Path) -> list[dict]:
    """One row per job folder of a sweep (``<sweep>/<job>/run.json``); a folder without one counts as lost."""
    rows = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        status_file = job / "run.json"
        if status_file.is_file():
            rows.append(json.loads(status_file.read_text()))
        else:
            rows.append({"run_dir": str(job), "status": "lost", "error": "the job ended without writing run.json"})
    return rows


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " | outputs |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        outputs = ", ".join(Path(v).name for k, v in r.get("outputs", {}).items() if isinstance(v, str)
                            and k != "mesh_error") or r.get("error", "")
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + f" | {outputs} |")
    done = sum(r.get("status") == "completed" for r in rows)
    return f"# Sweep summary\n\n{done} of {len(rows)} jobs completed.\n\n" + "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> list[dict]:
    rows = collect_runs(sweep_dir)
    Path(sweep_dir, "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    Path(sweep_dir, "summary.md").write_text(summary_markdown(rows))
    return rows


class SweepSummaryCallback(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_summary(sweep_dir)
            done = sum(r.get("status") == "completed" for r in rows)
            print(f"dreamnfsd: sweep finished, {done}/{len(rows)} completed; summary in {sweep_dir}/summary.md")
