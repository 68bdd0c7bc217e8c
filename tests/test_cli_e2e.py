"""End-to-end: the ``dreamnfsd`` command trains a few steps on a tiny prior and writes every output; resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreamnfsd.train.checkpoint import list_checkpoints
from tests.conftest import run_cli, tiny_run_overrides

pytestmark = pytest.mark.slow


def _only_run_dir(root: Path) -> Path:
    runs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# Guidance and field are independent of each other here: each method and each field runs once.
@pytest.mark.parametrize("guidance, field", [("nfsd", "density"), ("sds", "sdf")])
def test_cli_writes_every_output_and_resumes(tmp_path, tiny_pixel_prior, guidance, field):
    import imageio.v2 as imageio
    import numpy as np
    import trimesh

    args = [
        "prompt=a red cube",
        f"guidance={guidance}",
        f"field={field}",
        *tiny_run_overrides(tiny_pixel_prior, tmp_path),
        "train.steps=10",
        "train.ckpt_every=5",
        "train.val_every=5",
    ]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    assert run_dir.parent.name == "a-red-cube"
    assert str(run_dir) in proc.stdout  # it says where the outputs are

    for name in (
        "config.yaml",
        "mesh.obj",
        "mesh.ply",
        "mesh.glb",
        "turntable.mp4",
        "turntable_rgb_normal_opacity.mp4",
        "turntable_albedo.mp4",
        "run.json",
        "metrics.jsonl",
    ):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000005.pt", "step_000010.pt"]
    assert (run_dir / "validation" / "step_000010.png").is_file()
    assert "guidance_scale" in (run_dir / "config.yaml").read_text()

    mesh = trimesh.load(run_dir / "mesh.ply", force="mesh")  # the obj and glb split vertices along UV seams
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert mesh.is_watertight and mesh.volume > 0  # wound outwards
    for name in ("mesh.obj", "mesh.glb"):
        textured = trimesh.load(run_dir / name, force="mesh")
        assert len(textured.faces) == len(mesh.faces) and textured.visual.uv is not None, name
    assert (run_dir / "texture.png").is_file() and "map_Kd texture.png" in (run_dir / "mesh.mtl").read_text()
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [10]
    frames = _read_frames(run_dir / "turntable.mp4")
    assert frames.shape[0] == 6 and frames.shape[1:3] == (24, 24)
    panels = _read_frames(run_dir / "turntable_rgb_normal_opacity.mp4")
    assert panels.shape[0] == 6 and panels.shape[2] == 3 * 24
    still = imageio.imread(run_dir / "turntable.png")  # lossless: the frames' shaded and normals panels
    assert still.shape == (2 * 24, 6 * 24, 3)
    assert np.abs(still[:24, :24].astype(int) - panels[0, :, :24]).mean() < 12  # its first frame is the video's

    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["step"] == 10

    # Resume continues from the saved step, and the finished run's files are kept.
    mesh_before = (run_dir / "mesh.obj").read_bytes()
    proc = run_cli(
        [
            f"resume={run_dir}",
            *tiny_run_overrides(tiny_pixel_prior, tmp_path),
            "train.steps=15",
            "train.ckpt_every=5",
            "train.val_every=5",
            f"guidance={guidance}",
            f"field={field}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr and "at step 10" in proc.stderr
    assert json.loads((run_dir / "run.json").read_text())["step"] == 15
    assert (run_dir / "checkpoints" / "step_000015.pt").is_file()
    assert (run_dir / "mesh.obj").read_bytes() == mesh_before
    assert list((run_dir / "exports").glob("step000015-*/mesh.obj"))
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [10, 15]


def test_shipped_builtin_geometry_exports_one_positive_volume_shell(tmp_path):
    """The main job's preset in small form: the built-in prior's SDF run exports one outward solid."""
    import trimesh

    args = ["prompt=a red cube", "prior=builtin", f"output_root={tmp_path}", "train.steps=40", "train.val_every=0"]
    args += ["train.ckpt_every=0", "export.video_frames=4", "export.video_resolution=32", "export.mesh_resolution=64"]
    args += ["export.texture_size=256"]  # small, with room for the charts of a rough 40-step surface
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 8: the SDF starts from the density field's surface" in proc.stdout + proc.stderr  # its coarse stage
    run_dir = _only_run_dir(tmp_path)
    mesh = trimesh.load(run_dir / "mesh.ply", force="mesh")
    assert mesh.is_watertight and mesh.volume > 0.1 and len(mesh.split(only_watertight=False)) == 1
    assert mesh.vertex_normals.shape == mesh.vertices.shape


def _read_frames(path: Path):
    import imageio.v2 as imageio
    import numpy as np

    return np.stack(list(imageio.mimread(path, memtest=False)))


def test_reexport_writes_beside_the_run(tmp_path, tiny_pixel_prior, capsys):
    from dreamnfsd.app.cli import export_main

    proc = run_cli(
        ["prompt=a blue sphere", *tiny_run_overrides(tiny_pixel_prior, tmp_path), "train.steps=4", "export.video=false"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    flags = ["--mesh-resolution", "24", "--video-frames", "3", "--video-resolution", "16", "--texture-size", "64"]
    assert export_main([str(run_dir), *flags]) == 0
    (out,) = list((run_dir / "exports").iterdir())
    assert (out / "mesh.ply").is_file() and _read_frames(out / "turntable.mp4").shape[0] == 3
    assert export_main([str(run_dir), "--texture-size", "8"]) == 2  # checked as a run's override, before writing
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export.texture_size" in err[0] and list((run_dir / "exports").iterdir()) == [out]
    assert "e.g. --texture-size 1024" in err[0]  # the fix is written as the flag this command takes
    # Only what the flags set is checked: a run saved with a value today's ranges refuse still re-exports.
    (ckpt,) = list_checkpoints(run_dir)[-1:]
    state = torch.load(ckpt, weights_only=False)
    state["config"]["train"]["num_threads"] = 5000
    torch.save(state, ckpt)
    assert export_main([str(run_dir), *flags]) == 0
