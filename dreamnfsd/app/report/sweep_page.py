"""A sweep's ``report.html``, beside its ``summary.md``: a card per job (thumbnail, prompt, guidance, seed, status,
wall time, key metrics) linking to the job's own ``report.html``, and every job's mesh in one 3D view with a picker.

The jobs are the sweep summary's rows (:func:`dreamnfsd.app.sweep.collect_runs`), so a failed or lost job is shown
exactly as ``summary.md`` lists it. Key metrics come from each job's own report (its ``#report-facts`` JSON), which
is built first where it is missing (a job that died without writing one) or when asked to rebuild them all.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from dreamnfsd.app.report import media, viewer
from dreamnfsd.app.report import page as pg
from dreamnfsd.app.report.facts import RunFacts, read_mesh, read_run
from dreamnfsd.app.report.page import REPORT_NAME, esc, key_value_table, tag
from dreamnfsd.app.report.run_page import build_run_report

log = logging.getLogger(__name__)

FACTS = re.compile(r'<script type="application/json" id="report-facts">(.*?)</script>', re.S)
VALIDATION_ROWS = 4  # shaded, albedo, normals, opacity (Trainer.validate)


@dataclass
class Job:
    """One job of the sweep: its summary row, what its folder holds, and the numbers its own report states."""

    row: dict
    facts: RunFacts
    report_facts: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.row.get("job"))

    @property
    def status(self) -> str:
        return str(self.row.get("status") or "unknown")

    @property
    def report(self) -> Path:
        return self.facts.run_dir / REPORT_NAME


def read_report_facts(path: Path) -> dict:
    """The ``#report-facts`` JSON a run's report carries, {} without a readable one."""
    try:
        match = FACTS.search(path.read_text(errors="replace"))
        return json.loads(match.group(1)) if match else {}
    except (OSError, ValueError):
        return {}


def ensure_job_report(folder: Path, rebuild: bool) -> None:
    """Builds a job's own report when it has none (or ``rebuild``); a failure costs that report only."""
    if (folder / REPORT_NAME).is_file() and not rebuild:
        return
    try:
        build_run_report(folder)
    except Exception as e:
        log.warning("report of sweep job %s not written: %s", folder, e)


def read_jobs(sweep_dir: Path, rebuild: bool) -> list[Job]:
    from dreamnfsd.app.sweep import collect_runs

    jobs = []
    for row in collect_runs(sweep_dir):
        folder = sweep_dir / str(row["job"])
        ensure_job_report(folder, rebuild)
        jobs.append(Job(row, read_run(folder), read_report_facts(folder / REPORT_NAME)))
    return jobs


def job_thumbnail(job: Job) -> bytes | None:
    """The first frame of the job's turntable, else its newest validation image's first view, else None."""
    video = job.facts.output("turntable", "turntable.mp4")
    frame = media.video_frame(video) if video is not None else None
    if frame is None:
        images = sorted((job.facts.run_dir / "validation").glob("step_*.png"))
        if images:
            import imageio.v2 as imageio

            try:
                grid = imageio.imread(images[-1])
                frame = media.first_tile(grid, VALIDATION_ROWS, job.facts.setting("camera.width"))
            except (OSError, ValueError):
                frame = None
    return media.thumbnail(frame) if frame is not None else None


def card_rows(job: Job) -> list[tuple[str, object]]:
    r, geometry = job.row, job.report_facts.get("geometry") or {}
    step = f"{r.get('step')} of {r.get('steps')}" if r.get("step") is not None else None
    final_loss = job.report_facts.get("final_loss", job.facts.final_loss)
    return [
        ("job", job.name),
        ("guidance", r.get("guidance")),
        ("seed", r.get("seed")),
        ("step", step),
        ("wall time (s)", r.get("wall_time_s")),
        ("final loss", final_loss),
        ("3D IoU", geometry.get("iou")),
        ("F-score@0.02", geometry.get("fscore")),
        ("normal consistency", geometry.get("normal_consistency")),
        ("Chamfer", geometry.get("chamfer")),
    ]


def card(job: Job, mesh_index: int | None, weights: pg.Weights) -> pg.Html:
    """A job's card; failed, interrupted and lost jobs are coloured and say why."""
    thumb = job_thumbnail(job)
    prompt = str(job.row.get("prompt") or job.name)
    if thumb is not None:
        picture = weights.add("thumbnails", pg.image(thumb, "image/png", f"{prompt}: first turntable frame"))
    else:
        picture = pg.Html('<div class="nothumb">no image</div>')
    href = f"{quote(job.name)}/{REPORT_NAME}"
    link = tag("a", "job report", href=href) if job.report.is_file() else pg.Html("no job report")
    error = tag("p", job.row.get("error"), cls="error") if job.row.get("error") else pg.Html("")
    show = viewer.show_button(mesh_index) if mesh_index is not None else pg.Html("")
    return pg.Html(
        f'<article class="card {esc(job.status)}" id="job-{esc(job.name)}">{picture}'
        f"<h3>{tag('a', prompt, href=href) if job.report.is_file() else esc(prompt)}</h3>"
        f"<p>{tag('span', job.status, cls=f'status {job.status}')}</p>{key_value_table(card_rows(job))}{error}"
        f"<p>{link} {show}</p></article>"
    )


def viewer_meshes(jobs: list[Job]) -> tuple[list[viewer.ViewerMesh], dict[str, int]]:
    """Every job's mesh, decimated to its share of the page, and each job's index among them."""
    loaded = [(job, read_mesh(job.facts)) for job in jobs]
    loaded = [(job, mesh) for job, mesh in loaded if mesh is not None and len(mesh.faces)]
    budget = viewer.faces_each(len(loaded))
    meshes: list[viewer.ViewerMesh] = []
    index: dict[str, int] = {}
    for job, mesh in loaded:
        label = f"job {job.name}: {job.row.get('prompt')} ({job.row.get('guidance')}, seed {job.row.get('seed')})"
        index[job.name] = len(meshes)
        meshes.append(viewer.simplify(viewer.from_trimesh(mesh, label), budget))
    return meshes, index


def tally(jobs: list[Job]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    done = counts.get("completed", 0)
    listed = "" if done == len(jobs) else f" ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
    return f"{done} of {len(jobs)} jobs completed{listed}."


def build_sweep_report(sweep_dir: Path, jobs: bool = False) -> pg.Report:
    """Writes ``<sweep_dir>/report.html``; each job's own report is built first where missing (every one when
    ``jobs``)."""
    sweep_dir = Path(sweep_dir)
    weights = pg.Weights()
    found = read_jobs(sweep_dir, rebuild=jobs)
    meshes, index = viewer_meshes(found)
    view, scripts = viewer.meshes_section(meshes, weights, "job", "No job wrote a mesh.")
    cards = "".join(card(job, index.get(job.name), weights) for job in found)
    summary = sweep_dir / "summary.md"
    table = pg.details("summary.md", pg.markdown_tables(summary.read_text())) if summary.is_file() else pg.Html("")
    body = pg.Html(
        tag("h1", f"Sweep {sweep_dir.name}")
        + tag("p", f"dreamnfsd sweep · {sweep_dir}")
        + tag("p", tally(found), cls="tally", id="sweep-tally")
        + f'<div class="cards" id="jobs">{cards}</div>'
        + view
        + table
    )
    return pg.write_page(sweep_dir, pg.document(f"Sweep {sweep_dir.name} — dreamnfsd", body, weights, scripts), weights)
