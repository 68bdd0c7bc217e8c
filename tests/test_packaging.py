"""A normal install works: the wheel carries the package, its configs and the built-in prior, and its command runs a
job from a folder that is not the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DREAMNFSD_CONFIG_DIR")}
    proc = subprocess.run(
        args, cwd=cwd, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_wheel_installs_into_a_fresh_venv_and_runs_a_job_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("dreamnfsd-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # Reuse this environment's torch and other dependencies through a path entry (its own .pth files, such as the
    # checkout's editable-install hook, are not run from there), so only dreamnfsd comes from the wheel.
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp_path)
    where = _run(
        [str(python), "-c", "import dreamnfsd.app.compose as c; print(c.__file__); print(c.config_dir())"], cwd=tmp_path
    ).stdout.split()
    assert all(str(venv) in w for w in where), where  # the package and its configs come from the wheel

    work = tmp_path / "elsewhere"
    work.mkdir()
    small = ["train.steps=20", "export.mesh_resolution=48", "export.texture_size=128", "export.video_frames=4"]
    proc = _run([str(venv / "bin" / "dreamnfsd"), "prompt=a red cube", "prior=builtin", *small], cwd=work)
    (run_dir,) = (work / "outputs" / "a-red-cube").iterdir()
    assert str(run_dir) in proc.stdout
    for name in ("mesh.glb", "mesh.obj", "turntable.mp4", "run.json", "metrics.jsonl", "config.yaml"):
        assert (run_dir / name).is_file(), name
