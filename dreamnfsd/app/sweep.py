"""Hydra callback that writes a sweep's ``summary.json``, ``summary.md`` and ``report.html`` once every job has ended.

Each job writes ``<sweep>/<job>/run.json`` itself (status ``completed``, ``failed`` or ``interrupted``, with its
step, wall time and outputs). A job folder whose ``run.json`` is missing or still says ``running`` / ``exporting``
belongs to a job that died without reporting (killed, out of memory, node lost): it is listed as ``lost``, with the
prompt, guidance and seed read from the job's ``.hydra/config.yaml``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

COLUMNS = ("job", "prompt", "guidance", "seed", "status", "step", "steps", "wall_time_s", "run_dir")
_UNFINISHED = ("running", "exporting")


def _job_number(folder: Path) -> tuple[int, str]:
    m = re.match(r"^(\d+)", folder.name)
    return (int(m.group(1)) if m else 1 << 30, folder.name)


def _from_job_config(job: Path) -> dict:
    """prompt / guidance / seed / steps from the job's composed config, for jobs that wrote no run.json."""
    import yaml

    try:
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
        return {
            "prompt": cfg.get("prompt"),
            "guidance": (cfg.get("guidance") or {}).get("kind"),
            "seed": cfg.get("seed"),
            "steps": (cfg.get("train") or {}).get("steps"),
        }
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return {}


def collect_runs(sweep_dir: Path) -> list[dict]:
    """One row per job folder of a sweep (``<sweep>/<job>/run.json``), in job order."""
    rows = []
    jobs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]
    for job in sorted(jobs, key=_job_number):
        row: dict = {}
        try:
            row = json.loads((job / "run.json").read_text())
        except FileNotFoundError:
            row = {"status": "lost", "error": "the job ended without writing run.json"}
        except (OSError, ValueError) as e:
            row = {"status": "lost", "error": f"unreadable run.json ({e})"}
        if row.get("status") in _UNFINISHED:
            row.update(
                status="lost",
                error=f"the job died while {row['status']} (killed?); resume it with dreamnfsd resume={job}",
            )
        row = {**{k: v for k, v in _from_job_config(job).items() if v is not None}, **row}
        row["job"] = job.name
        row.setdefault("run_dir", str(job))
        rows.append(row)
    return rows


def _cell(value) -> str:
    return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")


def _short(path: str, base: Path | None) -> str:
    try:
        return str(Path(path).relative_to(base)) if base else path
    except ValueError:
        return path


def summary_markdown(rows: list[dict], sweep_dir: Path | None = None) -> str:
    """A table of the jobs; paths relative to ``sweep_dir`` when they lie inside it."""
    lines = ["| " + " | ".join(COLUMNS) + " | outputs / error |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        outputs = ", ".join(
            _short(v, sweep_dir)
            for k, v in (r.get("outputs") or {}).items()
            if isinstance(v, str) and k != "mesh_error"
        )
        cells = {**r, "run_dir": _short(str(r.get("run_dir", "")), sweep_dir)}
        last = _cell(outputs or r.get("error"))
        lines.append("| " + " | ".join(_cell(cells.get(c)) for c in COLUMNS) + f" | {last} |")
    counts: dict[str | None, int] = {}  # by status (None: a row without one)
    for r in rows:
        counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
    done = counts.get("completed", 0)
    return f"# Sweep summary\n\n{done} of {len(rows)} jobs completed ({tally}).\n\n" + "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> list[dict]:
    from dreamnfsd.utils.files import atomic_write_bytes

    rows = collect_runs(sweep_dir)
    atomic_write_bytes((json.dumps(rows, indent=2) + "\n").encode(), Path(sweep_dir, "summary.json"))
    atomic_write_bytes(summary_markdown(rows, Path(sweep_dir)).encode(), Path(sweep_dir, "summary.md"))
    return rows


# The rows of the last sweep this process finished (the CLI exits with 1 when one of them did not complete).
last_rows: list[dict] | None = None


class SweepSummaryCallback(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        global last_rows
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = last_rows = write_summary(sweep_dir)
            done = sum(r.get("status") == "completed" for r in rows)
            print(f"dreamnfsd: sweep finished, {done}/{len(rows)} completed; summary in {sweep_dir}/summary.md")
            report_sweep(sweep_dir)


def report_sweep(sweep_dir: Path) -> None:
    """The sweep's ``report.html`` beside ``summary.md`` (and the report of any job that died without writing its
    own); a report that cannot be written only warns: the summary is written already."""
    try:
        from dreamnfsd.app.report import build_sweep_report, report_or_warn
    except ImportError as e:  # an install without the report's package: the summary is whole
        log.warning("report.html not written (%s); reinstall dreamnfsd, then run dreamnfsd-report %s", e, sweep_dir)
        return
    if (report := report_or_warn(build_sweep_report, sweep_dir)) is not None:
        print(f"dreamnfsd: sweep report: {report.path}", flush=True)
