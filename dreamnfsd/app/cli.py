"""Command-line entry points: ``dreamnfsd`` (Hydra app), ``dreamnfsd-export`` and ``dreamnfsd-report``.

``dreamnfsd`` first composes and checks the config itself (:mod:`dreamnfsd.app.preflight`: values, prior files,
device, output folder, resume target) and loads the prior, so a user error prints one line, exits with code 2 and
writes nothing; only then does Hydra create the run folder and call :func:`dreamnfsd.app.run.run_from_hydra`.
A ``--multirun`` sweep is checked job by job first. ``--debug`` (or ``HYDRA_FULL_ERROR=1``) shows tracebacks instead.
"""

from __future__ import annotations

import os
import re
import sys

# Exit codes: 0 done; 1 the run failed after it started (disk full, NaN abort, a bug; its folder says why);
# 2 bad input (one line on stderr, nothing written); 130 / 143 stopped by SIGINT / SIGTERM (checkpoint saved).
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _fail(message: str) -> int:
    print(f"dreamnfsd: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _split_argv(argv: list[str]) -> tuple[bool, bool, list[str], list[str]]:
    """Returns (debug, multirun, hydra args to pass on, plain ``key=value`` overrides)."""
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    passed = [a for a in argv if a != "--debug"]
    multirun = any(a in ("-m", "--multirun") for a in passed)
    overrides = [a for a in passed if not a.startswith("-") and not a.startswith("hydra")]
    return debug, multirun, passed, overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, multirun, passed, overrides = _split_argv(argv)
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if any(a in ("-h", "--help", "--hydra-help", "-c", "--cfg", "--info") for a in passed):
        return _hydra_main(passed)

    from dreamnfsd.app.preflight import preflight, preflight_sweep
    from dreamnfsd.utils.errors import UserError

    hydra_args = [a for a in passed if a not in overrides]
    try:
        if multirun:
            # Every combination must compose (an unknown key or a bad type fails the whole sweep up front); a bad
            # value in one combination is that job's failure, recorded in the summary, and the others go on.
            preflight_sweep(overrides)
            return _run_sweep(passed)
        plan = preflight(overrides)
    except UserError as e:
        if debug:
            raise
        return _fail(str(e))
    except KeyboardInterrupt:
        print("dreamnfsd: interrupted before training started; nothing was written", file=sys.stderr)
        return EXIT_SIGINT
    return _hydra_main([*hydra_args, *plan.overrides, f"hydra.run.dir={plan.run_dir}"])


def _run_sweep(args: list[str]) -> int:
    """A ``--multirun`` sweep; exits 1 when any job did not complete (``summary.md`` says which and why)."""
    from dreamnfsd.app import sweep

    sweep.last_rows = None
    _hydra_main(args)
    rows: list[dict] = sweep.last_rows or []  # set by the sweep callback during _hydra_main
    return EXIT_FAILED if any(r.get("status") != "completed" for r in rows) else 0


def _hydra_main(args: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    from dreamnfsd.app.compose import CONFIG_SEARCH_PATH, register_resolvers
    from dreamnfsd.app.schema import register_configs

    register_configs()
    register_resolvers()

    @hydra.main(config_path=CONFIG_SEARCH_PATH, config_name="config", version_base="1.3")
    def _task(cfg: DictConfig) -> None:
        from dreamnfsd.app.run import run_from_hydra

        status = run_from_hydra(cfg)
        if status.exit_code and not status.in_sweep:
            sys.exit(status.exit_code)

    saved = sys.argv
    sys.argv = [saved[0], *args]
    try:
        _task()
    finally:
        sys.argv = saved
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """``dreamnfsd-export <run dir or checkpoint> [--mesh-resolution N] [--video-resolution N] ...``."""
    import argparse

    from dreamnfsd.utils.errors import UserError

    parser = argparse.ArgumentParser(
        prog="dreamnfsd-export",
        description="Re-export a run's mesh and videos from its newest (or a given) checkpoint into "
        "<run>/exports/<time>/, leaving the run's own outputs untouched.",
    )
    parser.add_argument("run", help="a run folder (outputs/<prompt>/<time>) or a checkpoint file")
    parser.add_argument("--mesh-resolution", type=int, default=None)
    parser.add_argument("--threshold", default=None, help="density iso-level, or 'auto'")
    parser.add_argument("--video-resolution", type=int, default=None)
    parser.add_argument("--video-frames", type=int, default=None)
    parser.add_argument("--texture-size", type=int, default=None, help="texels per side of the mesh's texture")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--no-mesh", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    try:
        from dreamnfsd.app.run import reexport

        out = reexport(args)
    except UserError as e:
        if args.debug:
            raise
        return _fail(as_export_flags(str(e)))
    print(f"dreamnfsd-export: wrote {out}")
    return 0


def as_export_flags(message: str) -> str:
    """dreamnfsd-export takes flags, not overrides: a fix written as ``export.texture_size=1024`` becomes
    ``--texture-size 1024`` (the message still opens with the field's name)."""
    from dreamnfsd.app.run import REEXPORT_FIELDS

    def flag(m: re.Match) -> str:
        return f"--{m[1].replace('_', '-')} {m[2]}" if m[1] in REEXPORT_FIELDS else m[0]

    return re.sub(r"(?<=e\.g\. )export\.(\w+)=(\S+)", flag, message)


REPORT_USAGE = "usage: dreamnfsd-report <run, sweep or benchmark folder> [--jobs] [--debug]"


def _report_args(argv: list[str] | None):
    """``dreamnfsd-report``'s arguments; a mistake is one line and exit 2, like every other bad input here."""
    import argparse

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message: str):
            print(f"dreamnfsd-report: error: {message} — {REPORT_USAGE}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR)

    parser = OneLineParser(
        prog="dreamnfsd-report",
        description="(Re)build the self-contained report.html of a run folder (outputs/<prompt>/<time>), a sweep "
        "folder (outputs/sweeps/<time>) or a quality benchmark's --out-dir, and print its path.",
    )
    parser.add_argument("folder", help="a run, sweep or benchmark output folder")
    parser.add_argument("--jobs", action="store_true", help="a sweep: rebuild every job's own report too")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def report_main(argv: list[str] | None = None) -> int:
    """``dreamnfsd-report <folder>``: writes ``<folder>/report.html`` (for an older run too) and prints its path
    last, after what the page weighs."""
    from pathlib import Path

    from dreamnfsd.utils.errors import UserError

    args = _report_args(argv)
    try:
        from dreamnfsd.app.report import build_report, build_sweep_report, report_kind

        folder = Path(args.folder).expanduser()
        if args.jobs and folder.is_dir() and report_kind(folder) == "sweep":
            report = build_sweep_report(folder, jobs=True)
        else:
            report = build_report(folder)
    except UserError as e:
        if args.debug:
            raise
        print(f"dreamnfsd-report: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"dreamnfsd-report: the page weighs {report.weight_line()}")
    print(f"dreamnfsd-report: wrote {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
