"""The GPU benchmark times the product's training step, and runs end to end on a CPU in its --small form, writing
every field it promises."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamnfsd.benchmarks import gpu as gpu_bench
from dreamnfsd.benchmarks.step import PHASES, PRIOR_CALL
from dreamnfsd.train.shading import choose_shading

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_gpu.py"


def test_sd21_base_configs_build_the_real_architecture():
    """The configs build models with exactly the parameter counts of stabilityai/stable-diffusion-2-1-base's
    published weights (built on the meta device: no memory, no download). Comparing the config dicts with copied
    literals, as an earlier version did, could not fail."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**gpu_bench.SD21_BASE_UNET)
        vae = AutoencoderKL(**gpu_bench.SD21_BASE_VAE)
        text = CLIPTextModel(CLIPTextConfig(**gpu_bench.SD21_BASE_TEXT))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # unet/diffusion_pytorch_model.safetensors, vae/..., text_encoder/model.safetensors of the published checkpoint
    assert (count(unet), count(vae), count(text)) == (865_910_724, 83_653_863, 340_387_840)
    assert text.config.hidden_size == unet.config.cross_attention_dim  # the UNet attends to this text encoder


@pytest.mark.parametrize("shading", ["albedo", "lambertian", "textureless"])
def test_run_config_is_the_apps_config_with_every_step_in_the_chosen_shading(shading):
    bench = gpu_bench.GPUBenchConfig(small=True, device="cpu", shading=shading, batch=2)
    cfg = gpu_bench.run_config(bench, "nfsd")
    assert cfg.guidance.kind == "nfsd" and cfg.guidance.scale == 7.5 and cfg.guidance.nfsd_t_threshold == 0
    assert (cfg.camera.height, cfg.camera.width, cfg.train.batch_size) == (16, 16, 2)
    assert cfg.background.kind == "mlp"  # configs/config.yaml's default, not the schema's
    assert cfg.field.encoding.n_levels == 8 and cfg.grid.resolution == 32
    g = torch.Generator().manual_seed(0)
    assert {choose_shading(step, cfg.train, g) for step in range(20)} == {shading}
    assert gpu_bench.run_config(bench, "sds").guidance.scale == 100.0


def _run_bench(tmp_path: Path, *args: str, timeout: int = 120, gpu: bool = False) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(SCRIPT), *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_small_bench_runs_on_cpu_and_writes_json(tmp_path):
    stdout, result = _run_bench(tmp_path, "--small", "--steps", "2", "--device", "cpu", "--via-folder")
    assert "NFSD x3" in stdout and "SDS x2" in stdout
    env_info = result["environment"]
    assert env_info["config"] == "small" and env_info["device"] == "cpu" and env_info["render"] == 16
    assert env_info["prior_resolution"] == 32
    assert env_info["step"] == "dreamnfsd.train.trainer.Trainer.train_step" and env_info["tuning"] == []
    assert set(result["methods"]) == {"nfsd", "sds"}
    for kind, batch in (("nfsd", 3), ("sds", 2)):
        m = result["methods"][kind]
        assert m["unet_batch"] == batch and m["loss_finite"]
        for key in ("step_ms", "steps_per_s", "unet_in_step_ms", "unet_share", "step_over_unet"):
            assert math.isfinite(m[key]) and m[key] > 0, (kind, key, m[key])
        assert m["unet_share"] < 1.0  # the UNet call is part of the step
        # The trainer's own phases: the step is Trainer.train_step, with the prior call inside the guidance phase.
        assert set(m["phase_ms"]) == {*PHASES, PRIOR_CALL}, m["phase_ms"]
        assert 0 < m["phase_ms"][PRIOR_CALL] <= m["phase_ms"]["guidance"]
        assert m["peak_memory_gb"] is None  # GPU memory only
        assert result["unet_alone"][str(batch)]["ms"] > 0
    assert result["targets_met"] == {}  # the targets are judged on a GPU only


@pytest.mark.cuda
@pytest.mark.slow
def test_full_bench_meets_targets_on_gpu(tmp_path):
    """SD 2.1-base architecture at 64x64 on a real GPU: NFSD peak memory and step/UNet ratio within target."""
    _, result = _run_bench(tmp_path, "--steps", "10", "--device", "cuda", timeout=600, gpu=True)
    assert result["environment"]["config"] == "sd-2.1-base"
    assert result["targets_met"] and all(result["targets_met"].values()), result["methods"]["nfsd"]
