"""Issue-level loader check: a tiny Stable-Diffusion-layout folder, loaded offline by the real loader, drives SDS
and NFSD training steps of the real NeRF (field + occupancy-grid renderer) through the VAE encoder."""

from __future__ import annotations

import pytest
import torch

from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.guidance.priors import load_prior
from dreamnfsd.train.trainer import Trainer


@pytest.mark.parametrize("method, field", [("sds", "density"), ("nfsd", "density"), ("nfsd", "sdf")])
def test_tiny_sd_folder_trains_a_nerf(tmp_path, tiny_sd_prior, method, field):
    overrides = [
        f"field={field}",
        "prompt=a red cube",
        f"guidance={method}",
        "prior=stable_diffusion",
        f"prior.model={tiny_sd_prior}",
        "camera.height=16",
        "camera.width=16",
        "field.encoding.n_levels=4",
        "field.encoding.log2_hashmap_size=12",
        "field.hidden_dim=32",
        "grid.resolution=32",
        "train.shading_warmup_steps=1",
        "train.steps=4",
        # Every t above the NFSD threshold, so the negative prompt's row is exercised too.
        "guidance.t_range=[0.5,0.98]",
    ]
    cfg = to_run_config(compose(overrides))
    prior = load_prior(cfg.prior, "cpu")
    assert type(prior).__name__ == "StableDiffusionPrior"
    calls = []
    predict = prior.predict_noise
    prior.predict_noise = lambda x, *a, **k: calls.append(x.shape[0]) or predict(x, *a, **k)

    trainer = Trainer(cfg, tmp_path, torch.device("cpu"), prior)
    before = {k: v.clone() for k, v in trainer.scene.field.state_dict().items() if torch.is_tensor(v)}
    for _ in range(3):
        assert trainer.train_step().finite
    after = trainer.scene.field.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the NeRF did not move"
    assert all(p.grad is None for p in prior.parameters())
    assert calls == [3] * 3 if method == "nfsd" else calls == [2] * 3  # one batched call per step (B = 1)
