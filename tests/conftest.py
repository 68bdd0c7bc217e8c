"""Shared fixtures: offline Hugging Face, tiny in-code priors, and a runner for the CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` alone marks a GPU check: ``pytest -m cuda`` selects them all, and without a CUDA
    device each one skips, saying why (one place, so the marker and the skip cannot drift apart)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skipif(True, reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip, append=False)  # first of the skipifs: the reason shown is the CUDA one


def _ours(handler: logging.Handler) -> bool:
    return not type(handler).__module__.startswith("_pytest")  # pytest adds and removes its own, phase by phase


@pytest.fixture(autouse=True)
def _restore_logging():
    """A command run in-process configures logging through Hydra, with handlers on that test's captured streams;
    left in place, they write to closed files in whichever test comes next on the same worker. Each test gets back
    the handlers, levels and flags it started with (pytest's own capture handlers are left to pytest)."""

    def loggers():
        return [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]

    saved = {lg.name: ([h for h in lg.handlers if _ours(h)], lg.level, lg.propagate, lg.disabled) for lg in loggers()}
    yield
    for lg in loggers():
        handlers, level, propagate, disabled = saved.get(lg.name, ([], lg.level, lg.propagate, lg.disabled))
        lg.handlers[:] = [h for h in lg.handlers if not _ours(h)] + handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


@pytest.fixture(scope="session")
def tiny_pixel_prior(tmp_path_factory) -> Path:
    """A tiny random camera-aware pixel prior folder (16 px), built once per session."""
    from tests.tiny_models import build_tiny_pixel_prior

    return build_tiny_pixel_prior(tmp_path_factory.mktemp("tiny_pixel_prior"), camera=True, resolution=16)


@pytest.fixture(scope="session")
def tiny_sd_prior(tmp_path_factory) -> Path:
    from tests.tiny_models import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"))


def tiny_run_overrides(prior_folder: Path, output_root: Path) -> list[str]:
    """A run small enough for a CPU test: 16 px renders, a small hash grid, few steps, small exports."""
    return [
        "prior=pixel",
        f"prior.model={prior_folder}",
        f"output_root={output_root}",
        "train=quick",
        "camera.height=16",
        "camera.width=16",
        "field.encoding.n_levels=4",
        "field.encoding.log2_hashmap_size=12",
        "field.hidden_dim=32",
        "grid.resolution=32",
        "export.mesh_resolution=40",
        "export.video_frames=6",
        "export.video_resolution=24",
        "train.val_views=2",
    ]


def run_cli(args: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``dreamnfsd`` in a subprocess (as a user would), returning the completed process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dreamnfsd", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
