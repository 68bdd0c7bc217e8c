"""The built-in prior's training end to end at toy size: train, export, resume, and add the pose embedding late."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamnfsd.guidance.priors import PixelPrior, builtin_training
from dreamnfsd.guidance.priors.builtin import UNET_WEIGHTS
from dreamnfsd.guidance.priors.builtin_training import PriorTrainConfig, train
from dreamnfsd.guidance.priors.pixel import pose_harmonics
from dreamnfsd.utils.errors import UserError

TOY = PriorTrainConfig(n_data=32, batch=4, threads=1, export_every=0)


def test_train_export_resume_and_add_the_pose_embedding(tmp_path):
    common = replace(TOY, work_dir=tmp_path, out=tmp_path / "prior")
    with torch.random.fork_rng():
        train(replace(common, steps=2, pose_harmonics=0))
        assert pose_harmonics(PixelPrior.from_pretrained(str(tmp_path / "prior")).unet) == 0
        before = torch.load(tmp_path / "prior_ckpt_seed0.pt", weights_only=False)
        train(replace(common, steps=3, resume=True))  # default: a 4-harmonic pose embedding is added
    after = torch.load(tmp_path / "prior_ckpt_seed0.pt", weights_only=False)
    assert before["step"] == 2 and after["step"] == 3 and after["pose_from_step"] == 2
    assert not any(k.startswith("class_embedding.") for k in before["unet"])
    assert after["unet"]["class_embedding.linear_1.weight"].shape == (128, 10)
    assert len(after["opt"]["param_groups"]) == 2 and after["opt"]["param_groups"][1]["lr_mult"] == 3.0
    # The EMA (diffusers' EMAModel) resumed its count and took in the new embedding's 2 weights and 2 biases.
    assert after["ema"]["optimization_step"] == 3 and after["ema"]["decay"] == 0.999
    assert len(after["ema"]["shadow_params"]) == len(before["ema"]["shadow_params"]) + 4
    meta = json.loads((tmp_path / "prior" / "dreamnfsd_prior.json").read_text())
    assert meta["train_steps"] == 3 and meta["pose_from_step"] == 2 and meta["pose_harmonics"] == 4
    card = (tmp_path / "prior" / "README.md").read_text()  # one command per stage, the embedding off before step 2
    assert "--seed 0 --steps 2 --min-snr-gamma 5.0 --cube-weight 2.0 --pose-harmonics 0" in card
    assert "--seed 0 --resume --steps 3 --min-snr-gamma 5.0 --cube-weight 2.0 --pose-harmonics 4" in card
    prior = PixelPrior.from_pretrained(str(tmp_path / "prior"))
    assert prior.camera_aware and pose_harmonics(prior.unet) == 4


def test_init_from_an_export_continues_its_steps_and_records_the_size_change(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    with torch.random.fork_rng():
        train(replace(TOY, steps=2, work_dir=first, out=first / "prior"))
        train(
            replace(
                TOY,
                steps=4,
                work_dir=second,
                out=second / "prior",
                init_from=first / "prior",
                scale_jitter=0.0,
                ema=0.99,
            )
        )
    assert (second / "prior_data_seed0_n32_jitter0.pt").exists()  # the jittered cache is not reused
    ck = torch.load(second / "prior_ckpt_seed0.pt", weights_only=False)
    assert ck["step"] == 4 and ck["init_steps"] == [2] and ck["option_values"]["scale_jitter"] == [[0, 0.1], [2, 0.0]]
    meta = json.loads((second / "prior" / "dreamnfsd_prior.json").read_text())
    assert meta["train_steps"] == 4 and meta["scale_jitter"] == 0
    assert meta["option_values"]["ema"] == [[0, 0.999], [2, 0.99]]
    card = (second / "prior" / "README.md").read_text()
    assert "--seed 0 --steps 2 " in card and "--ema 0.999 --n-data 32 --out work_data/prior_step2" in card
    assert (
        "--seed 0 --init-from work_data/prior_step2 --work-dir work_data/from_step2 --steps 4 "
        "--min-snr-gamma 5.0 --cube-weight 2.0 --pose-harmonics 4 --x0-weight-cap 10.0 --scale-jitter 0.0 "
        "--ema 0.99 --n-data 32"
    ) in card
    # The export loads and its weights moved from the initial ones.
    a = PixelPrior.from_pretrained(str(first / "prior")).unet.conv_in.weight
    b = PixelPrior.from_pretrained(str(second / "prior")).unet.conv_in.weight
    assert a.shape == b.shape and not torch.equal(a, b)


def test_a_second_restart_keeps_the_first_in_the_reproduce_chain(tmp_path):
    dirs = [tmp_path / name for name in ("first", "second", "third")]
    with torch.random.fork_rng():
        train(replace(TOY, steps=2, work_dir=dirs[0], out=dirs[0] / "prior"))
        for prev, cur, steps, seed in ((dirs[0], dirs[1], 3, 0), (dirs[1], dirs[2], 4, 1)):
            train(replace(TOY, steps=steps, seed=seed, work_dir=cur, out=cur / "prior", init_from=prev / "prior"))
    meta = json.loads((dirs[2] / "prior" / "dreamnfsd_prior.json").read_text())
    assert meta["train_steps"] == 4 and meta["init_steps"] == [2, 3]
    assert meta["option_values"]["seed"] == [[0, 0], [3, 1]]  # the last restart took a new seed
    card = (dirs[2] / "prior" / "README.md").read_text()
    assert "steps 3-3 from the step-2 export; steps 4-4 from the step-3 export" in card
    assert "seed 0 from step 0, 1 from step 3;" in card
    assert "--seed 0 --steps 2 " in card and "--ema 0.999 --n-data 32 --out work_data/prior_step2" in card
    assert "--seed 0 --init-from work_data/prior_step2 --work-dir work_data/from_step2 --steps 3 " in card
    assert "--ema 0.999 --n-data 32 --out work_data/prior_step3" in card
    assert "--seed 1 --init-from work_data/prior_step3 --work-dir work_data/from_step3 --steps 4 " in card


def test_blend_takes_a_stage_at_part_strength_and_the_chain_keeps_it(tmp_path):
    """``blend`` writes the stage's export with its UNet weights a given fraction of the way from the export it started
    from; the card records it and rebuilds it, and a later stage started from the blend keeps it in its chain."""
    dirs = [tmp_path / name for name in ("first", "second", "third")]
    blended = tmp_path / "blended"
    with torch.random.fork_rng():
        train(replace(TOY, steps=2, work_dir=dirs[0], out=dirs[0] / "prior"))
        train(replace(TOY, steps=3, work_dir=dirs[1], out=dirs[1] / "prior", init_from=dirs[0] / "prior"))
        with pytest.raises(UserError, match="WEIGHT must be between 0 and 1"):
            builtin_training.blend(dirs[0] / "prior", dirs[1] / "prior", 1.5, blended)
        with pytest.raises(UserError, match="END .* must be the export of a stage started from START"):
            builtin_training.blend(dirs[1] / "prior", dirs[0] / "prior", 0.5, blended)
        other = tmp_path / "other"  # START's record, another UNet
        shutil.copytree(dirs[0] / "prior", other)
        weights = load_file(other / UNET_WEIGHTS)
        save_file({k: v for k, v in weights.items() if not k.startswith("class_embedding.")}, other / UNET_WEIGHTS)
        with pytest.raises(UserError, match="have different UNets"):
            builtin_training.blend(other, dirs[1] / "prior", 0.5, blended)
        assert not blended.exists()  # bad input writes nothing
        meta = builtin_training.blend(dirs[0] / "prior", dirs[1] / "prior", 0.5, blended)
        train(replace(TOY, steps=4, work_dir=dirs[2], out=dirs[2] / "prior", init_from=blended))
    a, b, mid = (PixelPrior.from_pretrained(str(f)) for f in (dirs[0] / "prior", dirs[1] / "prior", blended))
    for name, w in mid.unet.state_dict().items():
        assert torch.equal(w, a.unet.state_dict()[name] + 0.5 * (b.unet.state_dict()[name] - a.unet.state_dict()[name]))
    assert not torch.equal(mid.unet.conv_in.weight, b.unet.conv_in.weight)
    for name, w in mid.text_encoder.state_dict().items():  # the text encoder is the stage's own
        assert torch.equal(w, b.text_encoder.state_dict()[name])
    assert meta["blends"] == [[3, 2, 0.5]] and meta["train_steps"] == 3
    card = (blended / "README.md").read_text()
    assert "the UNet weights of the step-2 export plus 0.5 times the change of steps 3-3" in card
    assert "--ema 0.999 --n-data 32 --out work_data/prior_step3_full\n" in card
    assert (
        card.rstrip()
        .splitlines()[-3]
        .endswith("blend_builtin_prior.py work_data/prior_step2 work_data/prior_step3_full 0.5")
    )
    card = (dirs[2] / "prior" / "README.md").read_text()  # the next stage starts from the blend, written as step 3
    assert (
        "blend_builtin_prior.py work_data/prior_step2 work_data/prior_step3_full 0.5 --out work_data/prior_step3\n"
        in card
    )
    assert "--init-from work_data/prior_step3 --work-dir work_data/from_step3 --steps 4 " in card
    with pytest.raises(UserError, match="is a blend already"):
        builtin_training.blend(dirs[0] / "prior", blended, 0.5, tmp_path / "twice")


def test_ctrl_c_ends_training_with_a_checkpoint_and_an_export(tmp_path, monkeypatch):
    """The first Ctrl-C finishes the step under way, then checkpoints and exports (no steps lost, no traceback); the
    handlers are restored afterwards."""
    step = builtin_training.train_step

    def step_then_ctrl_c(*args):
        lr = step(*args)
        os.kill(os.getpid(), signal.SIGINT)
        return lr

    monkeypatch.setattr(builtin_training, "train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    with torch.random.fork_rng():
        state = train(replace(TOY, steps=5, work_dir=tmp_path, out=tmp_path / "prior"))
    assert state.step == 1 and signal.getsignal(signal.SIGINT) is before
    assert torch.load(tmp_path / "prior_ckpt_seed0.pt", weights_only=False)["step"] == 1
    assert json.loads((tmp_path / "prior" / "dreamnfsd_prior.json").read_text())["train_steps"] == 1


def test_every_option_change_on_resume_is_recorded_in_the_card(tmp_path):
    """Each option keeps a [step, value] history, so any change on a resume (a second change of one option, a new
    learning rate) is recorded at its step and the card's chain gives each stage its own values."""
    common = replace(TOY, work_dir=tmp_path, out=tmp_path / "prior")
    with torch.random.fork_rng():
        train(replace(common, steps=2, cube_weight=1.0))
        train(replace(common, steps=3, cube_weight=2.0, resume=True))
        train(replace(common, steps=4, cube_weight=1.0, lr=1e-4, resume=True))
    ck = torch.load(tmp_path / "prior_ckpt_seed0.pt", weights_only=False)
    assert ck["option_values"]["cube_weight"] == [[0, 1.0], [2, 2.0], [3, 1.0]]
    assert ck["option_values"]["lr"] == [[0, 3e-4], [3, 1e-4]]
    assert ck["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 4 / TOY.warmup)  # the new rate was used
    meta = json.loads((tmp_path / "prior" / "dreamnfsd_prior.json").read_text())
    assert meta["lr"] == 1e-4 and meta["option_values"] == ck["option_values"]
    card = (tmp_path / "prior" / "README.md").read_text()
    assert "learning rate 0.0003 from step 0, 0.0001 from step 3" in card
    assert "weight 1.0 from step 0, 2.0 from step 2, 1.0 from step 3" in card
    assert "--seed 0 --steps 2 --min-snr-gamma 5.0 --cube-weight 1.0 " in card
    assert "--seed 0 --resume --steps 3 --min-snr-gamma 5.0 --cube-weight 2.0 " in card
    assert "--seed 0 --resume --steps 4 --min-snr-gamma 5.0 --cube-weight 1.0 " in card
    assert "--x0-weight-cap 10.0 --lr 0.0001 --ema 0.999" in card and card.count("--lr") == 1


def test_options_added_later_are_recorded_on_resume_and_older_records_read_as_their_defaults(tmp_path):
    """Edge rounding, the data size and the warm-up joined the [step, value] history late: a change is recorded at its
    step, and a record without them had their defaults throughout (so the shipped card is unchanged)."""
    common = replace(TOY, work_dir=tmp_path, out=tmp_path / "prior")
    with torch.random.fork_rng():
        train(replace(common, steps=2))
        train(replace(common, steps=3, edge_round=0.05, n_data=24, warmup=50, resume=True))
    meta = json.loads((tmp_path / "prior" / "dreamnfsd_prior.json").read_text())
    assert meta["option_values"]["edge_round"] == [[0, 0.0], [2, 0.05]]
    cached = sorted(p.name for p in tmp_path.glob("prior_data_*"))
    assert cached == ["prior_data_seed0_n24_round0.05.pt", "prior_data_seed0_n32.pt"]  # a new set for new options
    card = (tmp_path / "prior" / "README.md").read_text()
    assert "r 0.0 from step 0, 0.05 from step 2." in card and card.count("--edge-round 0.05") == 1
    assert "32 from step 0, 24 from step 2 rendered images" in card and "300 from step 0, 50 from step 2 steps" in card
    assert "--resume --steps 3 " in card and card.count("--n-data 24 --warmup 50") == 1
    # The shipped prior's record predates the option: its edges were sharp throughout and its card is unchanged.
    shipped = json.loads((builtin_training.DEFAULT_DIR / "dreamnfsd_prior.json").read_text())
    assert builtin_training.export_values(shipped)["edge_round"] == [[0, 0.0]]
    assert "--edge-round" not in builtin_training.model_card(shipped)


# The 4,757-step prior's metadata (shipped until 2026-12-05), written before the [step, value] history: one change
# per option, from the value the card assumed before it.
LEGACY_META = {
    "train_steps": 4757,
    "final_loss": 0.0105,
    "seed": 0,
    "ema_decay": 0.995,
    "ema_history": [[0, 0.999], [2782, 0.995]],
    "batch_size": 64,
    "n_train_images": 50000,
    "min_snr_gamma": 5.0,
    "min_snr_from_step": 1033,
    "cube_weight": 2.0,
    "cube_weight_from_step": 1297,
    "pose_harmonics": 4,
    "pose_from_step": 1394,
    "x0_weight_cap": 10.0,
    "x0_weight_from_step": 2522,
    "scale_jitter": 0.0,
    "scale_jitter_from_step": 3866,
    "init_from_step": 3866,
}


def test_a_card_from_before_the_value_history_gives_the_commands_it_shipped_with():
    """Older metadata is read through its one-change-per-option keys: the chain is the one its card gave."""
    card = builtin_training.model_card(LEGACY_META)
    commands = [line.split(" --seed ", 1)[1] for line in card.splitlines() if line.startswith("    python ")]
    assert commands == [
        "0 --steps 1033 --min-snr-gamma 0 --cube-weight 1 --pose-harmonics 0 --x0-weight-cap 0 --ema 0.999",
        "0 --resume --steps 1297 --min-snr-gamma 5.0 --cube-weight 1 --pose-harmonics 0 --x0-weight-cap 0 --ema 0.999",
        "0 --resume --steps 1394 --min-snr-gamma 5.0 --cube-weight 2.0 --pose-harmonics 0 --x0-weight-cap 0 "
        "--ema 0.999",
        "0 --resume --steps 2522 --min-snr-gamma 5.0 --cube-weight 2.0 --pose-harmonics 4 --x0-weight-cap 0 "
        "--ema 0.999",
        "0 --resume --steps 2782 --min-snr-gamma 5.0 --cube-weight 2.0 --pose-harmonics 4 --x0-weight-cap 10.0 "
        "--ema 0.999",
        "0 --resume --steps 3866 --min-snr-gamma 5.0 --cube-weight 2.0 --pose-harmonics 4 --x0-weight-cap 10.0 "
        "--ema 0.995 --out work_data/prior_step3866",
        "0 --init-from work_data/prior_step3866 --work-dir work_data/from_step3866 --steps 4757 --min-snr-gamma 5.0 "
        "--cube-weight 2.0 --pose-harmonics 4 --x0-weight-cap 10.0 --scale-jitter 0.0 --ema 0.995",
    ]
    assert "cap 0 from step 0, 10.0 from step 2522" in card and "jitter 0.1 from step 0, 0.0 from step 3866" in card
