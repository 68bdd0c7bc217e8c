"""report.html builders without a browser, on synthetic folders: a run in each state, a sweep with completed, failed
and lost jobs, the quality benchmark, the ``dreamnfsd-report`` command and the hooks that must never cost a run.
(tests/test_report_browser.py opens real reports in headless Chromium.)"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from dreamnfsd.app.cli import report_main
from dreamnfsd.app.report import build_report, report_kind
from dreamnfsd.app.report.page import markdown_tables
from dreamnfsd.app.sweep import write_summary
from tests.conftest import tiny_run_overrides

CUBE_RGBA = (217, 31, 26, 255)


def make_run(folder: Path, prompt="a red cube", status="completed", mesh=True, video=False, prior="builtin", step=20):
    """A run folder as ``dreamnfsd`` leaves it: config, run.json, metrics.jsonl, validation images, mesh.ply with
    vertex colours and (optionally) a turntable video."""
    import imageio.v2 as imageio
    import trimesh
    import yaml

    cfg = {
        "prompt": prompt,
        "seed": 3,
        "device": "cpu",
        "prior": {"kind": prior, "model": prior},
        "guidance": {"kind": "nfsd", "guidance_scale": 7.5},
        "train": {"steps": 20, "batch_size": 2},
        "camera": {"height": 32, "width": 32},
        "field": {"kind": "sdf"},
    }
    (folder / ".hydra").mkdir(parents=True)
    for path in (folder / "config.yaml", folder / ".hydra" / "config.yaml"):
        path.write_text(yaml.safe_dump(cfg))
    (folder / ".hydra" / "overrides.yaml").write_text(f"- prompt={prompt}\n")
    records = [
        {"step": s, "loss": 10 / s, "t": 900 - 10 * s, "grad_norm": 1.0 + s, "skipped": 0} for s in range(1, step + 1)
    ]
    records[min(3, step - 1)]["loss"] = None  # a non-finite loss is logged as null: a gap in the curve
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 2')  # torn
    grid = np.full((4 * 32, 2 * 32, 3), 255, np.uint8)
    grid[8:24, 8:24] = CUBE_RGBA[:3]
    (folder / "validation").mkdir()
    for s in (10, step):
        imageio.imwrite(folder / "validation" / f"step_{s:06d}.png", grid)
    outputs: dict = {}
    if mesh:
        box = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).subdivide().subdivide()
        box.visual.vertex_colors = np.tile(CUBE_RGBA, (len(box.vertices), 1)).astype(np.uint8)
        box.export(folder / "mesh.ply")
        outputs.update(ply=str(folder / "mesh.ply"), mesh_watertight=True, mesh_volume=1.0)
    if video:
        frames = np.full((3, 32, 32, 3), 255, np.uint8)
        frames[:, 8:24, 8:24] = CUBE_RGBA[:3]
        imageio.mimwrite(folder / "turntable.mp4", list(frames), fps=8, macro_block_size=1)
        outputs["turntable"] = str(folder / "turntable.mp4")
        imageio.imwrite(folder / "turntable.png", np.concatenate(list(frames), axis=1))
        outputs["turntable_sheet"] = str(folder / "turntable.png")
    run = {"prompt": prompt, "guidance": "nfsd", "seed": 3, "run_dir": str(folder), "steps": 20, "step": step}
    run.update(wall_time_s=12.5, steps_per_s=1.6, nan_skips=0, rollbacks=0, status=status)
    if status == "completed":
        run.update(outputs=outputs, export_time_s=3.2)
    elif status == "interrupted":
        run["signal"] = "SIGINT"
    elif status == "failed":
        run["error"] = "train: 2 steps in a row gave NaN/inf at step 7"
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def unpack(page: str, element_id: str) -> str:
    """A gzip+base64 block of the page, as the boot script unpacks it."""
    m = re.search(rf'<script type="application/gzip;base64" id="{element_id}">([^<]*)</script>', page)
    assert m, element_id
    return gzip.decompress(base64.b64decode(m.group(1))).decode()


def check_self_contained(page: str) -> None:
    """Nothing the page loads lies outside it: no external src, stylesheet, script or network URL."""
    assert not re.search(r'<(script|img|video|source|iframe|link)[^>]+(src|href)="(?!data:)', page)
    assert "cdn" not in page.lower().split("<script", 1)[0]
    for m in re.finditer(r'(src|href)="([^"]*)"', page):
        assert not m.group(2).startswith(("http:", "https:", "//")), m.group(0)[:80]


def check_weight(report) -> None:
    """The builder's weight per part adds up to the file, and the footer states the same size."""
    page = report.path.read_text()
    assert report.size == report.path.stat().st_size == sum(report.parts.values())
    assert f'<span id="page-bytes">{report.size}</span>' in page


def built(folder: Path, kind: str):
    """The report of ``folder`` (a ``kind`` folder), checked to be self-contained and weighed right: (report, page)."""
    assert report_kind(folder) == kind
    report = build_report(folder)
    page = report.path.read_text()
    assert report.path == folder / "report.html"
    check_self_contained(page)
    check_weight(report)
    return report, page


def test_run_report_holds_view_videos_curves_images_settings_and_3d_metrics(tmp_path):
    run = make_run(tmp_path / "run", video=True)
    report, page = built(run, "run")
    for part in ("plotly.js (gzip, 3D viewer)", "3D mesh data (gzip)", "curves (SVG)", "videos", "validation images"):
        assert report.parts[part] > 0, part
    assert 'id="run-status"' in page and "COMPLETED" in page.upper() and "20 of 20" in page
    assert page.count('src="data:video/mp4;base64,') == 1 and page.count('src="data:image/png;base64,') == 3
    assert "turntable.png: shaded above normals" in page  # the still beside the videos
    assert 'src="data:image/svg+xml;base64,' in page
    assert "Mesh against the true cube" in page and "3D IoU" in page and "prompt=a red cube" in page
    assert "once scaled to the true volume (size apart from shape)" in page
    facts = json.loads(re.search(r'id="report-facts">(.*?)</script>', page).group(1))
    assert facts["status"] == "completed" and facts["geometry"]["iou"] > 0.95
    figure = json.loads(unpack(page, "viewer-data"))
    (trace,) = figure["data"]
    assert trace["type"] == "mesh3d" and len(trace["vertexcolor"]) > 0 and trace["vertexcolor"][0] == "#d91f1a"
    assert "Plotly" in unpack(page, "plotly-js")[:5000] and "viewerReady" in page


def test_an_interrupted_run_without_mesh_says_so_and_needs_no_javascript(tmp_path):
    run = make_run(
        tmp_path / "run", prompt="a <b>red</b> cube", status="interrupted", mesh=False, prior="pixel", step=7
    )
    report = build_report(run)
    page = report.path.read_text()
    banner = re.search(r'<div class="banner interrupted" id="run-status">(.*?)</div>', page).group(1)
    assert "Interrupted by SIGINT at step 7 of 20" in banner and f"dreamnfsd resume={run}" in banner
    assert "<b>red</b>" not in page and "a &lt;b&gt;red&lt;/b&gt; cube" in page  # shown as typed
    assert "No 3D view" in page and "plotly" not in page.lower() and "Mesh against" not in page
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts == ['<script type="application/json" id="report-facts">']  # data only: nothing to run
    check_weight(report)


def test_a_run_that_died_while_starting_gets_a_report_too(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text("prompt: a red cube\n")
    page = build_report(run).path.read_text()
    assert "No run.json" in page and "No metrics.jsonl records yet" in page


def make_sweep(sweep: Path) -> Path:
    """Four jobs: completed, failed, lost (died while running) and lost (never wrote run.json)."""
    make_run(sweep / "0", video=True)
    make_run(sweep / "1", prompt="a blue sphere", status="failed", mesh=False, prior="pixel", step=7)
    make_run(sweep / "2", prompt="a green cone", status="running", mesh=False, prior="pixel", step=3)
    (sweep / "3" / ".hydra").mkdir(parents=True)
    (sweep / "3" / ".hydra" / "config.yaml").write_text("prompt: a red torus\nseed: 1\nguidance: {kind: sds}\n")
    write_summary(sweep)
    return sweep


def test_sweep_report_has_a_card_per_job_linking_to_its_report(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    report, page = built(sweep, "sweep")
    cards = re.findall(r'<article class="card (\w+)" id="job-(\d)">(.*?)</article>', page, re.S)
    assert [(status, job) for status, job, _ in cards] == [
        ("completed", "0"),
        ("failed", "1"),
        ("lost", "2"),
        ("lost", "3"),
    ]
    for _, job, body in cards:
        assert f'href="{job}/report.html"' in body and (sweep / job / "report.html").is_file()  # built where missing
    assert "a blue sphere" in cards[1][2] and "NaN/inf at step 7" in cards[1][2]
    assert "died while running" in cards[2][2] and "without writing run.json" in cards[3][2]
    assert "a red torus" in cards[3][2] and "sds" in cards[3][2]  # read from the job's config
    assert 'src="data:image/png;base64,' in cards[0][2] and "3D IoU" in cards[0][2]  # thumbnail, key metrics
    assert "1 of 4 jobs completed" in page and report.parts["thumbnails"] > 0
    figure = json.loads(unpack(page, "viewer-data"))
    assert [t["name"] for t in figure["data"]] == ["job 0: a red cube (nfsd, seed 3)"]
    assert 'data-show-mesh="0"' in cards[0][2]
    # dreamnfsd-report <sweep> --jobs rebuilds every job's own report too.
    (sweep / "1" / "report.html").write_text("stale")
    assert report_main([str(sweep), "--jobs"]) == 0
    assert "a blue sphere" in (sweep / "1" / "report.html").read_text()


def make_benchmark(out: Path) -> Path:
    """A quality benchmark folder: two prompts by SDS and NFSD, as scripts/bench_quality.py saves them."""
    import imageio.v2 as imageio
    import trimesh

    from dreamnfsd.eval.benchmark import quantise_mesh, run_key

    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True)
    prompts, methods, runs = ["a red cube", "a blue sphere"], ["sds", "nfsd"], []
    for p in prompts:
        mesh = trimesh.creation.box() if p.endswith("cube") else trimesh.creation.icosphere(subdivisions=2)
        for i, m in enumerate(methods):
            run = {"prompt": p, "method": m, "r_precision": 0.5 + 0.5 * i, "iou": {"side": 0.8, "top": 0.7 + 0.1 * i}}
            run.update(geometry={"iou": 0.9 - 0.1 * i, "chamfer": 0.01, "components": 1}, wall_time_s=100.0)
            runs.append(run)
            key = run_key(p, m)
            (runs_dir / f"{key}.json").write_text(json.dumps(run))
            imageio.imwrite(runs_dir / f"{key}.png", np.full((16, 80, 3), 200, np.uint8))
            np.savez_compressed(runs_dir / f"{key}.mesh.npz", **quantise_mesh(mesh, 1.0))
    results = {"summary": {m: {} for m in methods}, "runs": runs, "prompts": prompts, "missing": [], "steps": 30}
    (out / "results.json").write_text(json.dumps(results))
    (out / "results.md").write_text("| method | 3D IoU |\n|---|---|\n| sds | **0.9** |\n| nfsd | `0.8` |\n")
    return out


def test_benchmark_report_sets_the_methods_side_by_side_per_prompt(tmp_path):
    out = make_benchmark(tmp_path / "bench")
    report, page = built(out, "benchmark")
    rows = re.findall(r'<tr class="prompt-row"><th>(.*?)</th>(.*?)</tr></tbody></table></td></tr>', page, re.S)
    assert [p for p, _ in rows] == ["a red cube", "a blue sphere"]
    for _, row in rows:
        assert row.index("<h4>sds") < row.index("<h4>nfsd") and row.count('src="data:image/png') == 2
        assert "<td><strong>0.9</strong></td><td>0.8</td>" in row  # 3D IoU: the better in bold
        assert "<td>0.5</td><td><strong>1</strong></td>" in row  # R-precision
    figure = json.loads(unpack(page, "viewer-data"))
    names = [t["name"] for t in figure["data"]]
    assert names == ["a red cube · sds", "a red cube · nfsd", "a blue sphere · sds", "a blue sphere · nfsd"]
    assert figure["data"][0]["color"] == "#d91f1a" and figure["layout"]["scene"]["aspectmode"] == "cube"
    assert page.count("<option ") == 4 and 'data-show-mesh="3"' in page
    assert "<td><strong>0.9</strong></td>" in page and "<code>0.8</code>" in page  # results.md as tables


def test_markdown_and_plotly_data_cannot_break_out_of_the_page():
    assert markdown_tables("| a |\n|---|\n| <script>x</script> |") == (
        '<table class="grid"><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;script&gt;x&lt;/script&gt;</td>'
        "</tr></tbody></table>"
    )
    from dreamnfsd.app.report.viewer import ViewerMesh, figure_json

    mesh = ViewerMesh("</script><script>alert(1)</script>", np.eye(3), np.array([[0, 1, 2]]))
    assert "</script>" not in figure_json([mesh]) and "<" not in figure_json([mesh])


def test_report_command_rebuilds_a_report_and_prints_its_path_last(tmp_path, capsys):
    run = make_run(tmp_path / "run", mesh=False, prior="pixel")
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"dreamnfsd-report: wrote {run / 'report.html'}" and "bytes (" in out[-2]


@pytest.mark.parametrize(
    "args, says",
    [
        (["{tmp}/nowhere"], "is not a folder"),
        (["{tmp}/empty"], "is not a run (run.json), sweep (summary.json) or benchmark (results.json) folder"),
        (["{tmp}/file.txt"], "is not a folder"),
        (["{tmp}/bad_bench"], "results.json is unreadable"),
        ([], "the following arguments are required: folder"),
        (["{tmp}/empty", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_report_command_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "bad_bench").mkdir()
    (tmp_path / "bad_bench" / "results.json").write_text("{torn")
    try:
        code = report_main([a.format(tmp=tmp_path) for a in args])
    except SystemExit as e:  # argparse's own mistakes
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("dreamnfsd-report: error: ") and says in err, err
    assert "Traceback" not in err and "—" in err  # names the fix too


def test_a_failing_report_only_warns_and_never_costs_the_run(tmp_path, monkeypatch, caplog, capsys):
    import dreamnfsd.app.report as report_pkg
    from dreamnfsd.app.run import report_run
    from dreamnfsd.app.sweep import report_sweep

    def broken(folder):
        raise RuntimeError("no plotly here")

    monkeypatch.setattr(report_pkg, "build_run_report", broken)
    monkeypatch.setattr(report_pkg, "build_sweep_report", lambda folder: (_ for _ in ()).throw(KeyboardInterrupt()))
    with caplog.at_level(logging.WARNING):
        report_run(tmp_path)  # no exception
        report_sweep(tmp_path)  # Ctrl-C while writing it: skipped, not a crash
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(f"dreamnfsd-report {tmp_path}" in w for w in warnings), warnings
    assert "RuntimeError: no plotly here" in warnings[0] and "KeyboardInterrupt" in warnings[1]
    assert "report:" not in capsys.readouterr().out


def test_the_command_ends_by_printing_where_the_report_is(tmp_path, monkeypatch, capsys, tiny_pixel_prior):
    """Whatever a run did (here: it was interrupted), its last line of output is its report's path, and the report
    says what happened. The training is stubbed: what precedes the report is tested elsewhere."""
    from dreamnfsd.app import run as run_module
    from dreamnfsd.app.cli import main

    def interrupted(dcfg, run_dir):
        status = {"prompt": "a red cube", "status": "interrupted", "signal": "SIGINT", "step": 3, "steps": 20}
        (run_dir / "run.json").write_text(json.dumps(status))
        print("dreamnfsd: SIGINT — stopped at step 3; checkpoint saved.")
        return run_module.RunStatus("interrupted", 130)

    monkeypatch.setattr(run_module, "_run_and_record", interrupted)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["prompt=a red cube", *tiny_run_overrides(tiny_pixel_prior, tmp_path)])
    assert info.value.code == 130
    (run_dir,) = (tmp_path / "a-red-cube").iterdir()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"dreamnfsd: report: {run_dir / 'report.html'}"
    assert "Interrupted by SIGINT at step 3 of 20" in (run_dir / "report.html").read_text()
