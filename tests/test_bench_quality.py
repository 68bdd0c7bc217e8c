"""scripts/bench_quality.py --quick end to end (CI-sized): every output file and every reported field exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import imageio.v2 as imageio
import pytest

from dreamnfsd.eval.benchmark import run_key
from dreamnfsd.guidance.priors.builtin import DEFAULT_DIR
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not (DEFAULT_DIR / "unet").exists(), reason="built-in prior not exported yet")


@pytest.mark.slow
def test_quick_benchmark_writes_json_markdown_and_contact_sheet(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def bench(*extra, rc=0):
        proc = subprocess.run(
            # The override goes last, so where --prompts is given it must still be taken as an override.
            [
                sys.executable,
                "scripts/bench_quality.py",
                "--quick",
                "--steps",
                "4",
                "--out-dir",
                str(out),
                *extra,
                "train.num_threads=0",  # torch's default: both cores of a CI machine
                # The coarse hand-over (carve, fit) costs as much at 4 steps as at 1,000: tests/test_coarse_stage.py.
                "train.coarse_share=0",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == rc, proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    # Two shards one after the other share the folder. The first runs SDS only, so no prompt has both methods yet
    # and no report is written (methods are compared on the same prompts only).
    assert "no report written" in bench("--shard", "1/2") and not (out / "results.json").exists()
    # The second shard with a third prompt: its NFSD run is kept, but the prompt stays out of the summary.
    bench("--shard", "2/2", "--prompts", "a red cube", "a blue sphere", "a green cube")
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == ["a-green-cube.sds", "a-green-cube.nfsd"]
    assert [r["prompt"] for r in results["runs"]] == ["a red cube"] * 2 + ["a blue sphere"] * 2
    assert results["prompts"] == ["a red cube", "a blue sphere", "a green cube"]
    assert results["overrides"] == ["train.num_threads=0", "train.coarse_share=0"]
    assert "Not yet run by every method" in (out / "results.md").read_text()
    # Everything is saved: a rerun (or resume) trains nothing.
    assert re.search(r"R-prec \d", bench()) is None
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == []
    assert results["prompts"] == ["a red cube", "a blue sphere"] and results["steps"] == 4
    assert sorted(results["summary"]) == ["nfsd", "sds"]
    assert {r["guidance_scale"] for r in results["runs"]} == {100.0, 7.5}  # each method at its own scale
    for summary in results["summary"].values():
        for key in (
            "r_precision",
            "iou_side",
            "iou_top",
            "iou_min_shape_group",
            "cube_top_rotation_variation",
            "colour_error",
            "broken_view_share",
            "wall_time_s",
            "iou_any_scale_side",
            "iou_any_scale_top",
            "iou3d",
            "fscore",
            "normal_consistency",
            "chamfer",
            "normal_angle_deg",
            "depth_rel_error",
            "min_prompt_iou3d",
            "one_shell",
        ):
            assert summary[key] is not None, key
        assert set(summary["per_shape"]) == {"cube", "sphere"}
        assert "axis_aligned_share" in summary["per_shape"]["cube"]
        assert all({"volume_ratio", "fscore_true_volume"} <= set(v) for v in summary["per_shape"].values())
    assert len(results["runs"]) == 4
    for run in results["runs"]:
        assert 0 <= run["r_precision"] <= 1 and set(run["r_precision_by_group"]) == {"side", "mid", "top"}
        assert set(run["iou"]) == {"side", "top"} and all(0 <= v <= 1 for v in run["iou"].values())
        assert all(run["iou_any_scale"][g] >= run["iou"][g] for g in ("side", "top"))  # the same search, and size
        assert run["rotation_step_deg"] == 1.0 and all(0 <= v < 360 for v in run["rotation_deg"].values())
        assert 0 <= run["top_rotation_variation"] <= 1 and run["colour_error"] >= 0
        assert run["wall_time_s"] > 0 and len(run["predicted"]) == 14
        # Each run's file keeps its resolved config: the overrides typed and the preset's own values.
        config = json.loads((out / "runs" / f"{run_key(run['prompt'], run['method'])}.json").read_text())["config"]
        assert config["train"]["steps"] == 4 and config["train"]["coarse_share"] == 0 and "config" not in run
        assert config["camera"]["height"] == 32 and config["guidance"]["kind"] == run["method"]
        g = run["geometry"]
        assert 0 <= g["iou"] <= 1 and 0 <= g["fscore"] <= 1 and g["components"] >= 1 and g["chamfer"] > 0
        assert run["image_geometry"]["pixels"] > 0 and 0 <= run["image_geometry"]["normal_angle_deg"] <= 180
        for suffix in (".png", ".opacity.png", ".normal.png", ".depth.png", ".mesh.npz"):
            assert (out / "runs" / f"{run_key(run['prompt'], run['method'])}{suffix}").stat().st_size < 2_000_000
    table = (out / "results.md").read_text()
    assert "| method | scale | 3D IoU | F-score@0.02 |" in table and "| a blue sphere | nfsd |" in table
    assert "| method | scale | R-precision | IoU side | IoU top |" in table and "| target | measured | met |" in table
    assert "| cube axis-aligned | volume / true | F at true volume |" in table
    sheet = imageio.imread(out / "contact_sheet.png")
    assert sheet.shape[0] == 2 * 2 * 32 and sheet.shape[2] == 3  # one row per prompt, 2x upscaled 32 px views
    geo = imageio.imread(out / "geometry_sheet.png")  # per method: shaded views, then their normals, 3x upscaled
    assert geo.shape[:2] == (2 * 3 * 32, 3 * (4 * 5 * 32 + 3 * 4))
    assert "on a 1.0° grid, against truth masks sampled 1x1 per pixel." in table
    # --rescore recomputes every metric from the saved files, without training: spoiled values come back.
    path = out / "runs" / "a-red-cube.sds.json"
    saved = json.loads(path.read_text())
    spoiled = {**saved, "iou": {"side": 0.0, "top": 0.0}, "geometry": {**saved["geometry"], "iou": 0.0}}
    spoiled["image_geometry"] = {**saved["image_geometry"], "normal_angle_deg": 0.0}
    path.write_text(json.dumps(spoiled))
    assert re.search(r"R-prec \d", bench("--rescore")) is None
    rescored = json.loads(path.read_text())
    assert rescored["iou"] == pytest.approx(saved["iou"], abs=0.01)  # the PNG holds opacity to 1/255
    assert rescored["geometry"]["iou"] == pytest.approx(saved["geometry"]["iou"], abs=0.002)  # uint16 vertices
    assert rescored["image_geometry"]["normal_angle_deg"] == pytest.approx(
        saved["image_geometry"]["normal_angle_deg"], abs=2.0
    )  # normals stored as 8-bit colours
    # A saved run of another prior is refused, not mixed into the report.
    path = out / "runs" / "a-red-cube.sds.json"
    path.write_text(path.read_text().replace(run["prior"], "0123456789abcdef"))
    assert "was run with another prior" in bench("--report-only", rc=1)
