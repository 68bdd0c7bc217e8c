"""The quality benchmark's ``report.html``, beside its ``results.json``: one row per prompt with the methods side by
side (SDS beside NFSD: their views, normals and key metrics, the better value in bold), the summary tables of
``results.md``, and every saved run's mesh (``runs/<key>.mesh.npz``) in one 3D view with a picker.

It reads only what the benchmark saved (:mod:`dreamnfsd.eval.benchmark`'s run store), so an older folder without
meshes or normals still gets a page: the row says what is missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dreamnfsd.app.report import page as pg
from dreamnfsd.app.report import viewer
from dreamnfsd.app.report.page import esc, fmt, tag
from dreamnfsd.utils.errors import UserError

log = logging.getLogger(__name__)

# (label, where in a run's metrics, whether higher is better: None for no "better").
KEY_METRICS = (
    ("3D IoU", ("geometry", "iou"), True),
    ("F-score@0.02", ("geometry", "fscore"), True),
    ("normal consistency", ("geometry", "normal_consistency"), True),
    ("Chamfer", ("geometry", "chamfer"), False),
    ("F at true volume (size apart)", ("geometry", "fscore_true_volume"), None),
    ("shells", ("geometry", "components"), None),
    ("normals error (°)", ("image_geometry", "normal_angle_deg"), False),
    ("R-precision", ("r_precision",), True),
    ("silhouette IoU side", ("iou", "side"), True),
    ("silhouette IoU top", ("iou", "top"), True),
    ("wall time (s)", ("wall_time_s",), None),
)
IMAGES = (("png", "views"), ("normal.png", "normals"))  # runs/<key>.<suffix>, caption


def read_results(bench_dir: Path) -> dict:
    try:
        results = json.loads((bench_dir / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"report: {bench_dir}/results.json is unreadable ({e}) — rebuild it with "
            f"scripts/bench_quality.py --report-only --out-dir {bench_dir}"
        ) from e
    if not isinstance(results, dict):
        raise UserError(f"report: {bench_dir}/results.json is not the benchmark's results — give its --out-dir")
    return results


def methods_of(results: dict) -> list[str]:
    """The methods in the benchmark's order: its summary's, else the runs' order of first appearance."""
    methods = list(results.get("summary") or {})
    for run in results.get("runs") or []:
        if run.get("method") not in methods:
            methods.append(run.get("method"))
    return [m for m in methods if m]


def prompts_of(results: dict) -> list[str]:
    prompts = list(results.get("prompts") or [])
    return prompts + [r["prompt"] for r in results.get("runs") or [] if r.get("prompt") not in prompts]


def run_metrics(runs_dir: Path, results: dict, prompt: str, method: str) -> dict | None:
    """A run's metrics: its own ``runs/<key>.json`` (a run finished after the last report too), else results.json's."""
    from dreamnfsd.eval.benchmark import run_key

    try:
        return json.loads((runs_dir / f"{run_key(prompt, method)}.json").read_text())
    except (OSError, ValueError):
        pass
    return next((r for r in results.get("runs") or [] if (r.get("prompt"), r.get("method")) == (prompt, method)), None)


def value(run: dict | None, path: tuple[str, ...]):
    node = run
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node if isinstance(node, int | float) else None


def comparison(runs: dict[str, dict | None]) -> pg.Html:
    """A metric per row, a method per column; the better value of a row in bold."""
    head = "".join(f"<th>{esc(m)}</th>" for m in runs)
    rows = []
    for label, path, higher in KEY_METRICS:
        values = {m: value(r, path) for m, r in runs.items()}
        known = [v for v in values.values() if v is not None]
        if not known:
            continue
        best = None if higher is None or len(known) < 2 else (max(known) if higher else min(known))
        if known.count(best) > 1:
            best = None  # a tie: nothing is better
        cells = "".join(
            f"<td>{tag('strong', fmt(v)) if v is not None and v == best else esc(v)}</td>" for v in values.values()
        )
        rows.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    return pg.Html(
        f'<table class="grid compare"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def method_cell(runs_dir: Path, key: str, method: str, run: dict | None, mesh_index: int | None, weights: pg.Weights):
    """A method's pictures of one prompt: its views and normals, as saved by the benchmark."""
    if run is None:
        return pg.Html(f"<div><h4>{esc(method)}</h4><p>not run yet</p></div>")
    pictures = []
    for suffix, caption in IMAGES:
        path = runs_dir / f"{key}.{suffix}"
        if path.is_file():
            img = pg.image(path.read_bytes(), "image/png", f"{run.get('prompt')}, {method}: {caption}", cls="strip")
            pictures.append(f"<figure>{weights.add('run images', img)}<figcaption>{esc(caption)}</figcaption></figure>")
    show = viewer.show_button(mesh_index, f"{method} in 3D") if mesh_index is not None else pg.Html("")
    return pg.Html(f"<div><h4>{esc(method)} {show}</h4>{''.join(pictures) or '<p>no saved images</p>'}</div>")


def prompt_row(
    runs_dir: Path, results: dict, prompt: str, methods: list[str], index: dict, weights: pg.Weights
) -> pg.Html:
    from dreamnfsd.eval.benchmark import run_key

    runs = {m: run_metrics(runs_dir, results, prompt, m) for m in methods}
    cells = "".join(
        method_cell(runs_dir, run_key(prompt, m), m, runs[m], index.get(run_key(prompt, m)), weights) for m in methods
    )
    return pg.Html(
        f'<tr class="prompt-row"><th>{esc(prompt)}</th><td><div class="methods">{cells}</div></td>'
        f"<td>{comparison(runs)}</td></tr>"
    )


def viewer_meshes(runs_dir: Path, prompts: list[str], methods: list[str]) -> tuple[list[viewer.ViewerMesh], dict]:
    """Every saved run mesh, decimated to its share of the page, coloured as its prompt; {run key: index}."""
    from dreamnfsd.data import ALBEDO
    from dreamnfsd.eval.benchmark import load_mesh, run_key

    found = [(p, m, runs_dir / f"{run_key(p, m)}.mesh.npz") for p in prompts for m in methods]
    found = [(p, m, path) for p, m, path in found if path.is_file()]
    budget = viewer.faces_each(len(found))
    meshes: list[viewer.ViewerMesh] = []
    index: dict[str, int] = {}
    for prompt, method, path in found:
        try:
            mesh = load_mesh(path)
        except (OSError, ValueError, KeyError) as e:
            log.warning("could not read %s: %s", path, e)
            continue
        rgb = ALBEDO.get(prompt.split()[1] if len(prompt.split()) > 1 else "", (0.7, 0.7, 0.7))
        colour = viewer.hex_colour(round(c * 255) for c in rgb)
        shown = viewer.ViewerMesh(f"{prompt} · {method}", mesh.vertices, mesh.faces, colour=colour)
        index[run_key(prompt, method)] = len(meshes)
        meshes.append(viewer.simplify(shown, budget))
    return meshes, index


def settings_table(results: dict, methods: list[str]) -> pg.Html:
    overrides = results.get("overrides")
    rows = [
        ("methods", ", ".join(methods)),
        ("steps", results.get("steps")),
        ("seed", results.get("seed")),
        ("config overrides", " ".join(overrides) if overrides else ("none" if overrides is not None else None)),
        ("runs not yet paired (left out of the summary)", ", ".join(results.get("missing") or []) or None),
    ]
    return pg.key_value_table(rows)


def build_benchmark_report(bench_dir: Path) -> pg.Report:
    """Writes ``<bench_dir>/report.html`` from ``results.json``, ``results.md`` and ``runs/``."""
    bench_dir = Path(bench_dir)
    runs_dir = bench_dir / "runs"
    results = read_results(bench_dir)
    methods, prompts = methods_of(results), prompts_of(results)
    weights = pg.Weights()
    meshes, index = viewer_meshes(runs_dir, prompts, methods)
    view, scripts = viewer.meshes_section(meshes, weights, "run", "No saved meshes (runs/*.mesh.npz) in this folder.")
    rows = "".join(prompt_row(runs_dir, results, p, methods, index, weights) for p in prompts)
    head = "".join(f"<th>{esc(h)}</th>" for h in ("prompt", " beside ".join(methods), "metrics (better in bold)"))
    md = bench_dir / "results.md"
    summary = pg.markdown_tables(md.read_text()) if md.is_file() else pg.Html("<p>No results.md.</p>")
    body = pg.Html(
        tag("h1", f"Quality benchmark: {' vs '.join(m.upper() for m in methods)}")
        + tag("p", f"dreamnfsd benchmark · {bench_dir}")
        + settings_table(results, methods)
        + view
        + f'<h2>Per prompt</h2><table class="grid bench" id="prompts"><thead><tr>{head}</tr></thead>'
        + f"<tbody>{rows}</tbody></table>"
        + "<h2>Summary (results.md)</h2>"
        + summary
    )
    title = f"Quality benchmark {bench_dir.name} — dreamnfsd"
    return pg.write_page(bench_dir, pg.document(title, body, weights, scripts), weights)
