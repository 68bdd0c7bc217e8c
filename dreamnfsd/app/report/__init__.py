"""Self-contained HTML reports (``report.html``) of a run, a sweep and the quality benchmark.

Each report is one file that opens offline from ``file://``: images, videos and the training curves are embedded
as data: URIs and read without JavaScript; only the interactive 3D view (plotly.js, inlined from the plotly wheel)
needs it. Build one with :func:`build_report` (it tells the three kinds of folder apart) or ``dreamnfsd-report``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from dreamnfsd.app.report.page import Report
from dreamnfsd.utils.errors import UserError

__all__ = [
    "NotAReportFolder",
    "Report",
    "build_benchmark_report",
    "build_report",
    "build_run_report",
    "build_sweep_report",
    "report_kind",
    "report_or_warn",
]

log = logging.getLogger(__name__)


class NotAReportFolder(UserError):
    """The folder is not a run, a sweep or a benchmark output folder."""


def report_kind(folder: Path) -> str | None:
    """What a folder is, from the files it holds: "run", "sweep", "benchmark", or None for anything else.

    A benchmark has ``results.json``; a sweep ``summary.json`` or Hydra's ``multirun.yaml``; a run ``run.json``, or
    a ``config.yaml`` beside Hydra's ``.hydra/`` (a run that died before recording a status).
    """
    folder = Path(folder)
    if (folder / "results.json").is_file():
        return "benchmark"
    if (folder / "summary.json").is_file() or (folder / "multirun.yaml").is_file():
        return "sweep"
    if (folder / "run.json").is_file() or ((folder / "config.yaml").is_file() and (folder / ".hydra").is_dir()):
        return "run"
    return None


def build_run_report(run_dir: Path) -> Report:
    """``<run_dir>/report.html``: status, 3D view, videos, curves, validation images, settings, 3D metrics."""
    from dreamnfsd.app.report.run_page import build_run_report as build

    return build(Path(run_dir))


def build_sweep_report(sweep_dir: Path, jobs: bool = False) -> Report:
    """``<sweep_dir>/report.html``: a card per job linking to its own report (rebuilt first when ``jobs``)."""
    from dreamnfsd.app.report.sweep_page import build_sweep_report as build

    return build(Path(sweep_dir), jobs=jobs)


def build_benchmark_report(bench_dir: Path) -> Report:
    """``<bench_dir>/report.html``: SDS beside NFSD per prompt, the summary tables, every run's mesh in 3D."""
    from dreamnfsd.app.report.bench_page import build_benchmark_report as build

    return build(Path(bench_dir))


def build_report(folder: Path) -> Report:
    """The report of whatever ``folder`` is (run, sweep or benchmark); :class:`NotAReportFolder` otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAReportFolder(f"report: {folder} is not a folder — give a run, sweep or benchmark output folder")
    kind = report_kind(folder)
    if kind is None:
        raise NotAReportFolder(
            f"report: {folder} is not a run (run.json), sweep (summary.json) or benchmark (results.json) folder — "
            "give e.g. outputs/<prompt>/<time>, outputs/sweeps/<time> or the benchmark's --out-dir"
        )
    if kind == "sweep":
        return build_sweep_report(folder)
    return build_run_report(folder) if kind == "run" else build_benchmark_report(folder)


def report_or_warn(build: Callable[[Path], Report], folder: Path) -> Report | None:
    """``build(folder)``, or None and a warning: a report must never cost the run, sweep or benchmark it shows.
    Ctrl-C while it is written is taken as "skip the report" too (the run's own status is already recorded)."""
    try:
        return build(Path(folder))
    except (Exception, KeyboardInterrupt) as e:
        log.warning(
            "report.html not written (%s: %s); rebuild it with: dreamnfsd-report %s", type(e).__name__, e, folder
        )
        return None
