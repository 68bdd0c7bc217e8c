"""The size-pull probe: where a guidance term's pull on an object's size crosses zero is the size it prefers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dreamnfsd.eval.size_pull import SizePullConfig, preferred_scale, size_pull
from dreamnfsd.guidance.priors import PriorConfig, load_prior
from tests.conftest import REPO


def test_preferred_scale_interpolates_the_first_fall_through_zero():
    assert preferred_scale([0.9, 1.0, 1.1], [2.0, 1.0, -1.0]) == pytest.approx(1.05)
    assert preferred_scale([0.9, 1.0], [1.0, 0.0]) is None  # touches zero, never below it
    assert preferred_scale([0.9, 1.0, 1.1], [-1.0, -2.0, -3.0]) is None  # shrinks everywhere: no preferred size
    assert preferred_scale([0.9, 1.0, 1.1], [-1.0, 2.0, -2.0]) == pytest.approx(1.05)  # a rise is not a preference


def test_the_shipped_prior_pulls_a_small_cube_larger_and_a_large_cube_smaller():
    """Real weights: the unconditional denoiser and the prompt's direction both know the size they were trained on,
    so a 0.9-scale cube is pulled larger and a 1.1-scale one smaller (a size-blind prior fails this)."""
    prior = load_prior(PriorConfig(kind="builtin"))
    cfg = SizePullConfig(scales=(0.9, 1.1), n=32, phrase_groups=False)
    pulls = size_pull(prior, cfg)
    assert set(pulls) == {"unconditional", "conditional", "delta_C", "nfsd", "sds", "delta_D"}
    for term in ("unconditional", "conditional", "delta_C", "nfsd"):
        (small, small_se), (large, large_se) = pulls[term]
        assert small > 3 * small_se and large < -3 * large_se, (term, pulls[term])
        assert 0.9 < preferred_scale(list(cfg.scales), [small, large]) < 1.1


def test_the_script_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "pull.json"
    args = ["--n", "4", "--scales", "0.95", "1.05", "--shape", "sphere", "--color", "blue", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "scripts/probe_size_pull.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "preferred scale" in proc.stdout and "delta_D[blur]" in proc.stdout
    report = json.loads(out.read_text())
    assert report["config"]["shape"] == "sphere" and len(report["pull"]["delta_C"]) == 2


def test_the_script_takes_a_t_band_and_pixel_centre_rays(tmp_path):
    out = tmp_path / "band.json"
    args = ["--n", "4", "--scales", "0.95", "1.05", "--t-range", "0.5", "0.98", "--supersample", "1"]
    proc = subprocess.run(
        [sys.executable, "scripts/probe_size_pull.py", *args, "--no-phrase-groups", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "t in 0.5-0.98 T, 1x1 rays a pixel" in proc.stdout and "delta_D[blur]" not in proc.stdout
    report = json.loads(out.read_text())
    assert report["config"]["t_range"] == [0.5, 0.98] and report["config"]["supersample"] == 1


@pytest.mark.parametrize(
    ("flag", "value"), [("--t-range", ["0.6", "0.2"]), ("--supersample", ["0"]), ("--axes", ["zw"]), ("--axes", ["nz"])]
)
def test_the_script_refuses_a_bad_band_or_ray_count_naming_the_flag(tmp_path, flag, value):
    out = tmp_path / "never.json"
    proc = subprocess.run(
        [sys.executable, "scripts/probe_size_pull.py", flag, *value, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and f"{flag}:" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_the_shipped_prior_knows_a_cylinders_height():
    """--axes z: the unconditional denoiser pulls a 10%-short cylinder taller and a 10%-tall one shorter."""
    prior = load_prior(PriorConfig(kind="builtin"))
    cfg = SizePullConfig(shape="cylinder", color="blue", scales=(0.9, 1.1), n=32, phrase_groups=False, axes="z")
    (short, short_se), (tall, tall_se) = size_pull(prior, cfg)["unconditional"]
    assert short > 3 * short_se and tall < -3 * tall_se, (short, tall)


def test_the_shipped_prior_knows_a_torus_tube():
    """--axes n: the unconditional denoiser pulls a torus whose tube is 0.05 thin thicker, and a 0.05 thick one
    thinner (the offset direction a calibration can hold besides size and height)."""
    prior = load_prior(PriorConfig(kind="builtin"))
    cfg = SizePullConfig(shape="torus", color="purple", scales=(0.9, 1.1), n=32, phrase_groups=False, axes="n")
    (thin, thin_se), (thick, thick_se) = size_pull(prior, cfg)["unconditional"]
    assert thin > 3 * thin_se and thick < -3 * thick_se, (thin, thick)
