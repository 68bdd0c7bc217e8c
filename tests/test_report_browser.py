"""report.html in a real browser: headless Chromium (Debian's ``chromium``, driven by playwright-core from npm through
tests/report_browser.mjs) opens, offline from file://, the reports of a real two-prompt sweep of the main job
(``dreamnfsd --multirun prompt="a red cube","a blue sphere" prior=builtin hydra/launcher=joblib``, a few steps each):
job 0's own report, which is the main job's (``dreamnfsd prompt="a red cube" prior=builtin``), and the sweep's.
Each page must load with no console error and no network request, its 3D view must report
``data-viewer-ready="1"`` (after a mesh is picked too), and the screenshot of the view must not be blank; without
JavaScript every image still shows. Skipped, saying why, without node, playwright-core or chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

DRIVER = REPO / "tests" / "report_browser.mjs"
# The main job's preset in small form: a few steps, a small mesh and texture, short videos.
SHORT = [
    "prior=builtin",
    "train.steps=10",
    "train.val_every=5",
    "train.ckpt_every=0",
    "train.coarse_share=0",  # the coarse stage's fixed-cost hand-over: tests/test_coarse_stage.py
    "export.mesh_resolution=48",
    "export.texture_size=128",
    "export.video_frames=4",
    "export.video_resolution=32",
]
MIN_DRAWN_SHARE = 0.03  # of the viewer's pixels unlike its white background: a drawn mesh covers far more


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _why_skip() -> str | None:
    if shutil.which("node") is None:
        return "node not found: install Node.js to drive the browser test (then npm ci)"
    if not (REPO / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core missing: run npm ci in the repository root"
    if _chromium() is None:
        return "chromium not found: apt-get install -y chromium (scripts/test.sh does so when run as root)"
    return None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real two-prompt joblib sweep of the main job's preset; every job and the sweep say where their report is."""
    if (why := _why_skip()) is not None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("report_sweep")
    args = ["--multirun", "prompt=a red cube,a blue sphere", "hydra/launcher=joblib", f"output_root={root}", *SHORT]
    proc = run_cli(args, env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (root / "sweeps").iterdir()
    jobs = _jobs(sweep_dir)
    assert [j.split("-", 1)[0] for j in jobs] == ["0", "1"] and "a-red-cube" in jobs[0]
    lines = proc.stdout.strip().splitlines()
    for job in jobs:  # each job ends by saying where its report is (as a single run does: the same code)
        assert f"dreamnfsd: report: {sweep_dir / job / 'report.html'}" in lines, proc.stdout[-3000:]
    assert lines[-1] == f"dreamnfsd: sweep report: {sweep_dir / 'report.html'}", proc.stdout[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def browsed(sweep, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Job 0's report (the main job's) and the sweep's, opened in one headless Chromium: {name: (result, shots)}."""
    shots = tmp_path_factory.mktemp("report_shots")
    pages = {"run": sweep / _jobs(sweep)[0] / "report.html", "sweep": sweep / "report.html"}
    args = [str(a) for name, page in pages.items() for a in (page, shots / name)]
    proc = subprocess.run(
        ["node", str(DRIVER), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CHROMIUM": _chromium() or ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    results = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    return {name: (result, shots / name) for name, result in zip(pages, results, strict=True)}


def _jobs(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def drawn_share(png: Path) -> float:
    """The share of a screenshot's pixels that differ clearly from the viewer's white background."""
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    return float((np.abs(pixels - 255).max(axis=-1) > 40).mean())


def check_page(result: dict, shots: Path, meshes: int) -> None:
    assert result["consoleErrors"] == [], result["consoleErrors"]
    assert result["requests"] == [] and result["failedRequests"] == [], (result["requests"], result["failedRequests"])
    assert result["ready"] == "1" and result["error"] is None, result
    assert result["meshes"] == meshes
    for name in ("viewer.png", "viewer_picked.png") if meshes > 1 else ("viewer.png",):
        share = drawn_share(shots / name)
        assert share > MIN_DRAWN_SHARE, f"{name}: only {share:.1%} of the 3D view is drawn"
    no_script = result["noScript"]
    assert no_script["brokenImages"] == [] and no_script["images"] > 0 and no_script["tables"] > 0, no_script


def test_the_main_jobs_report_draws_its_mesh_offline(sweep, browsed):
    page = (sweep / _jobs(sweep)[0] / "report.html").read_text()
    assert "Mesh against the true cube" in page and "COMPLETED" in page.upper()  # built-in prior: 3D metrics
    result, shots = browsed["run"]
    check_page(result, shots, meshes=1)
    assert result["noScript"]["images"] >= 3  # curves, validation images, ... all without JavaScript


def test_the_sweeps_report_draws_each_jobs_mesh_and_links_their_reports(sweep, browsed):
    page = (sweep / "report.html").read_text()
    assert "2 of 2 jobs completed." in page
    for job in _jobs(sweep):  # each card links to the job's own report, relative to the sweep's
        assert f'href="{job}/report.html"' in page and (sweep / job / "report.html").is_file()
    result, shots = browsed["sweep"]
    check_page(result, shots, meshes=2)
