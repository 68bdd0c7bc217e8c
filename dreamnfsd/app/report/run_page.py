"""A run's ``report.html``: status, the mesh in 3D, turntable videos, training curves, validation images, settings.

Everything but the 3D view is plain HTML (images and videos embedded as data: URIs), so the page reads without
JavaScript; the page also carries its key numbers as JSON (``#report-facts``) for the sweep report to pick up.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dreamnfsd.app.report import media, viewer
from dreamnfsd.app.report.facts import RunFacts, measure, read_mesh, read_run
from dreamnfsd.app.report.page import (
    Html,
    Report,
    Weights,
    details,
    document,
    esc,
    grid_table,
    image,
    key_value_table,
    pre,
    tag,
    video,
    write_page,
)

log = logging.getLogger(__name__)

MAX_VALIDATION_IMAGES = 8
FACT_METRICS = ("iou", "fscore", "normal_consistency", "chamfer")
VIDEOS = (  # (run.json outputs key, file name, caption, css class)
    ("turntable", "turntable.mp4", "shaded turntable", "video"),
    ("turntable_albedo", "turntable_albedo.mp4", "albedo turntable", "video"),
    ("turntable_panels", "turntable_rgb_normal_opacity.mp4", "shaded | normals | opacity", "video wide"),
)
# (key in mesh_geometry_metrics, label, whether higher is better: set for the metrics the benchmark has a target for)
GEOMETRY_ROWS = (
    ("iou", "3D IoU", True),
    ("fscore", "F-score@0.02", True),
    ("normal_consistency", "normal consistency", True),
    ("chamfer", "Chamfer distance", False),
    ("area_ratio", "area / true area", None),
    ("components", "components", None),
    ("watertight", "watertight", None),
    ("volume", "volume", None),
    ("true_volume", "true volume", None),
    ("fscore_true_volume", "F-score@0.02 once scaled to the true volume (size apart from shape)", None),
    ("axis_aligned_share", "axis-aligned area share (cube)", None),
)


def status_banner(facts: RunFacts) -> Html:
    """The run's outcome in words, first thing on the page; an unfinished run says so loudly and how to go on."""
    s, state = facts.status, facts.state
    step, steps, where = s.get("step"), s.get("steps") or facts.setting("train.steps"), facts.run_dir
    if state == "completed":
        text = f"Completed: {step} of {steps} steps in {s.get('wall_time_s')} s of training, then exported."
    elif state == "interrupted":
        how = f" by {s['signal']}" if s.get("signal") else ""
        if s.get("error"):
            text = f"Interrupted{how}: {s['error']}. Start it again with: dreamnfsd resume={where}"
        elif step is not None and steps is not None and step >= steps:
            text = (
                f"Interrupted{how} during export: training finished ({step} steps) and is saved, but the mesh "
                f"and videos may be missing. Export again with: dreamnfsd-export {where}"
            )
        else:
            text = (
                f"Interrupted{how} at step {step} of {steps}: this is not a finished result. A checkpoint is "
                f"saved; resume with: dreamnfsd resume={where}"
            )
    elif state == "failed":
        text = f"Failed at step {step} of {steps}: {s.get('error') or 'no reason recorded'}"
    elif state in ("running", "exporting"):
        text = (
            f"Still {state} when this report was written (step {step} of {steps}), or the process died: if none "
            f"is running, resume with: dreamnfsd resume={where}"
        )
    else:
        text = "No run.json: the run never recorded a status (it may have died while starting)."
    label = tag("span", state, cls=f"status {state}")
    return Html(f'<div class="banner {esc(state)}" id="run-status">{label} — {esc(text)}</div>')


def run_table(facts: RunFacts) -> Html:
    s, outputs = facts.status, facts.status.get("outputs") or {}
    rows = [
        ("status", facts.state),
        ("step", f"{s.get('step')} of {s.get('steps')}" if "step" in s else None),
        ("training wall time (s)", s.get("wall_time_s")),
        ("steps / s", s.get("steps_per_s")),
        ("export time (s)", s.get("export_time_s")),
        ("final loss", facts.final_loss),
        ("NaN/inf steps skipped", s.get("nan_skips")),
        ("rollbacks", s.get("rollbacks")),
        ("mesh watertight", outputs.get("mesh_watertight")),
        ("mesh volume", outputs.get("mesh_volume")),
        ("no mesh because", outputs.get("mesh_error")),
        ("error", s.get("error")),
        ("run folder", str(facts.run_dir)),
    ]
    return key_value_table(rows)


def output_links(facts: RunFacts) -> Html:
    """Links to the run's files (not loaded by the page: following one is the reader's choice)."""
    links = []
    for key, name in (("glb", "mesh.glb"), ("obj", "mesh.obj"), ("ply", "mesh.ply")) + tuple(
        (k, n) for k, n, _, _ in VIDEOS
    ):
        path = facts.output(key, name)
        if path is not None:
            href = path.relative_to(facts.run_dir) if path.is_relative_to(facts.run_dir) else path.as_uri()
            links.append(tag("a", path.name, href=str(href)))
    return Html("Files: " + ", ".join(links)) if links else Html("")


def geometry_section(metrics: dict | None, shape: str | None, error: str | None) -> Html:
    if shape is None:
        return Html("")
    from dreamnfsd.eval.summary import TARGETS_3D

    head = f"<h2>Mesh against the true {esc(shape)}</h2>"
    if metrics is None:
        return Html(f"{head}<p>Not measured: {esc(error or 'no mesh')}.</p>")
    rows = []
    for key, label, higher in GEOMETRY_ROWS:
        if metrics.get(key) is None:  # not measured (the cube's share), or no positive volume to scale
            continue
        target = TARGETS_3D.get(key)
        goal = None if target is None else f"{'≥' if higher else '≤'} {target}"
        met = None if target is None else (metrics[key] >= target if higher else metrics[key] <= target)
        rows.append((label, metrics[key], goal, met))
    table = grid_table(["metric", "value", "benchmark target", "met"], rows, cls="grid geometry")
    note = (
        "<p>dreamnfsd.eval.geometry on mesh.ply, best rotation about the vertical axis "
        f"({metrics.get('rotation_deg', 0):.0f}°); the benchmark holds every shape to these targets.</p>"
    )
    return Html(head + table + note)


def viewer_section(facts: RunFacts, mesh, weights: Weights) -> tuple[Html, bool]:
    """(the 3D view's section, whether the page needs the viewer's scripts)."""
    head = "<h2>Mesh</h2>"
    if mesh is None:
        why = (facts.status.get("outputs") or {}).get("mesh_error") or f"no mesh.ply (the run is {facts.state})"
        return Html(f"{head}<p>No 3D view: {esc(why)}.</p>"), False
    full = viewer.from_trimesh(mesh, "mesh.ply")
    shown = viewer.simplify(full, viewer.RUN_MAX_FACES)
    note = f"mesh.ply: {len(full.faces)} faces" + (
        f", shown decimated to {len(shown.faces)}." if len(shown.faces) < len(full.faces) else "."
    )
    block = viewer.viewer_block(viewer.figure_json([shown]), weights, note=note)
    return Html(head + block), True


def videos_section(facts: RunFacts, weights: Weights) -> Html:
    items = []
    for key, name, caption, cls in VIDEOS:
        path = facts.output(key, name)
        if path is not None:
            items.append(weights.add("videos", video(path.read_bytes(), caption, cls)))
    if not items:
        return Html(f"<h2>Turntable videos</h2><p>No videos (the run is {esc(facts.state)}).</p>")
    still = facts.output("turntable_sheet", "turntable.png")
    if still is not None:
        alt = "turntable.png: six turntable frames, shaded above normals"
        img = weights.add("videos", image(still.read_bytes(), "image/png", alt, cls="pixel"))
        items.append(f"<figure>{img}<figcaption>turntable.png: shaded above normals</figcaption></figure>")
    return Html('<h2>Turntable videos</h2><div class="row">' + "".join(items) + "</div>")


def curves_section(facts: RunFacts, weights: Weights) -> Html:
    head = "<h2>Training curves</h2>"
    svg = media.curves_svg(facts.records)
    if svg is None:
        return Html(f"{head}<p>No metrics.jsonl records yet.</p>")
    alt = "training curves from metrics.jsonl: loss, timestep t, gradient norm"
    img = weights.add("curves (SVG)", image(svg, "image/svg+xml", alt, cls="curves", id="curves"))
    last = facts.records[-1]
    return Html(f"{head}{img}<p>{len(facts.records)} logged steps, the last at step {esc(last['step'])}.</p>")


def validation_section(facts: RunFacts, weights: Weights) -> Html:
    head = "<h2>Validation views over training</h2>"
    paths = sorted((facts.run_dir / "validation").glob("step_*.png"))
    if not paths:
        return Html(f"{head}<p>No validation images.</p>")
    shown = media.evenly(paths, MAX_VALIDATION_IMAGES)
    figures = []
    for path in shown:
        step = int(path.stem.split("_")[-1])
        img = weights.add("validation images", image(path.read_bytes(), "image/png", f"step {step}", cls="pixel"))
        figures.append(f"<figure>{img}<figcaption>step {step}</figcaption></figure>")
    more = (
        f" {len(shown)} of {len(paths)} shown, evenly spaced; all are in validation/."
        if len(shown) < len(paths)
        else ""
    )
    text = f"<p>Rows: shaded, albedo, normals, opacity of fixed views; the newest last.{more}</p>"
    return Html(head + text + '<div class="valgrid">' + "".join(figures) + "</div>")


def settings_section(facts: RunFacts) -> Html:
    h, w = facts.setting("camera.height"), facts.setting("camera.width")
    rows = [
        ("prompt", facts.prompt),
        ("guidance", facts.setting("guidance.kind")),
        ("guidance scale", facts.setting("guidance.guidance_scale")),
        ("prior", f"{facts.setting('prior.kind')} ({facts.setting('prior.model')})"),
        ("seed", facts.setting("seed")),
        ("steps", facts.setting("train.steps")),
        ("batch size", facts.setting("train.batch_size")),
        ("render size", f"{h} x {w}" if h is not None else None),
        ("field", facts.setting("field.kind")),
        ("device", facts.setting("device")),
    ]
    body = [key_value_table(rows)]
    if facts.config_text:
        body.append(details("config.yaml (the resolved settings)", pre(facts.config_text)))
    if facts.overrides_text:
        body.append(details("command-line overrides (.hydra/overrides.yaml)", pre(facts.overrides_text)))
    if facts.status:
        body.append(details("run.json", pre(json.dumps(facts.status, indent=2))))
    return Html("<h2>Settings</h2>" + "".join(body))


def facts_json(facts: RunFacts, metrics: dict | None) -> Html:
    """Key numbers as JSON in the page (not run by the browser), read back by the sweep report."""
    data = {"status": facts.state, "step": facts.status.get("step"), "final_loss": facts.final_loss}
    if metrics is not None:
        data["geometry"] = {k: metrics[k] for k in FACT_METRICS if k in metrics}
    return Html(f'<script type="application/json" id="report-facts">{viewer.json_for_script(data)}</script>')


def build_run_report(run_dir: Path) -> Report:
    """Writes ``<run_dir>/report.html``. Works for a run in any state (a failed or interrupted run gets a report
    that says so first)."""
    facts = read_run(Path(run_dir))
    weights = Weights()
    mesh = read_mesh(facts)
    shape = facts.builtin_shape
    metrics, error = measure(mesh, shape)
    view, needs_js = viewer_section(facts, mesh, weights)
    subtitle = " · ".join(
        f"{k} {v}" for k, v in (("guidance", facts.setting("guidance.kind")), ("seed", facts.setting("seed"))) if v
    )
    body = Html(
        "".join(
            [
                tag("h1", facts.prompt or facts.run_dir.name),
                tag("p", f"dreamnfsd run · {subtitle} · {facts.run_dir}"),
                status_banner(facts),
                '<div class="top"><div><h2>Run</h2>',
                run_table(facts),
                tag("p", output_links(facts)),
                geometry_section(metrics, shape, error),
                "</div><div>",
                view,
                "</div></div>",
                videos_section(facts, weights),
                curves_section(facts, weights),
                validation_section(facts, weights),
                settings_section(facts),
                facts_json(facts, metrics),
            ]
        )
    )
    scripts = viewer.viewer_scripts(weights) if needs_js else Html("")
    title = f"{facts.prompt or facts.run_dir.name} — dreamnfsd run ({facts.state})"
    return write_page(facts.run_dir, document(title, body, weights, scripts), weights)
