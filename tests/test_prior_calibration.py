"""The built-in prior's size calibration: anchored targets that zero the chosen shapes' mean pulls and hold the rest,
and a calibrated fine-tune stage that records itself, resumes to the same bits and refuses options it cannot run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dreamnfsd.data import SHAPES
from dreamnfsd.guidance.priors import calibration
from dreamnfsd.guidance.priors.builtin import load_components
from dreamnfsd.guidance.priors.builtin_training import PriorTrainConfig, train
from dreamnfsd.utils.errors import UserError

TOY = PriorTrainConfig(n_data=32, batch=4, threads=1, export_every=0, calib_n=10, calib_batch=5)


def cal_shape(i: int) -> str:
    return SHAPES[i % len(SHAPES)]  # calibration images take the shapes in turn


def test_anchored_targets_zero_the_chosen_shapes_mean_pulls_and_hold_the_others():
    teacher = load_components()  # the shipped prior
    cal = calibration.calibration_set(20, seed=1, edge_round=0.04, scale_spread=0.06, offset=("sphere", "torus"))
    assert cal["x"].shape == (20, 3, 32, 32) and cal["dirs"].shape == (20, 3, 3, 32, 32)
    # The offset direction only for the shapes named: the others' is zero, so it holds nothing of theirs.
    offset = torch.isin(cal["shape_idx"], torch.tensor([SHAPES.index("sphere"), SHAPES.index("torus")]))
    assert torch.equal(cal["n_dirs"], 2 + offset.long())
    assert cal["dirs"][~offset, 2].abs().max() == 0 and cal["dirs"][offset, 2].abs().amax((1, 2, 3)).min() > 0
    held = calibration.anchored_targets(teacher, cal, seed=2, shapes=())
    # The sphere's size and offset directions are one: its shift is solved in least squares, and still zeroes both.
    zeroed = calibration.anchored_targets(teacher, cal, seed=2, shapes=("cube", "sphere"))
    chosen = torch.isin(cal["shape_idx"], torch.tensor([SHAPES.index("cube"), SHAPES.index("sphere")]))
    for key in ("delta_C", "delta_D", "eps_n"):
        assert torch.equal(held[key][~chosen], zeroed[key][~chosen]), key
    for shape in ("cube", "sphere"):
        sel = cal["shape_idx"] == SHAPES.index(shape)
        for term in ("pull_C", "pull_D"):
            keep = sel & (zeroed["mask_D"] if term == "pull_D" else True)
            assert keep.any(), (shape, term)
            before, after = held[term][keep].mean(0), zeroed[term][keep].mean(0)
            assert after.abs().max() < 1e-3 * max(1.0, before.abs().max().item()), (shape, term, before, after)
            assert before.abs().max() > 1e-3, (shape, term, before)  # the teacher's pulls were not already 0


def test_a_calibrated_stage_records_itself_and_resumes_to_the_same_bits(tmp_path, monkeypatch):
    first, terms = tmp_path / "first", []
    original = calibration.anchor_loss

    def spy(model, cal, idx, pull_weight):  # each step's term, and on which images
        terms.append((original(model, cal, idx, pull_weight), idx))
        return terms[-1][0]

    monkeypatch.setattr(calibration, "anchor_loss", spy)
    with torch.random.fork_rng():
        train(replace(TOY, steps=2, work_dir=first, out=first / "prior"))
        stage = replace(
            TOY, init_from=first / "prior", calib_weight=1.0, calib_shapes="cube cylinder", calib_offset="cube", seed=2
        )
        straight, split = tmp_path / "straight", tmp_path / "split"
        train(replace(stage, steps=4, work_dir=straight, out=straight / "prior"))
        train(replace(stage, steps=3, work_dir=split, out=split / "prior"))
        train(replace(stage, steps=4, work_dir=split, out=split / "prior", resume=True, init_from=None))
    ck = torch.load(split / "prior_ckpt_seed2.pt", weights_only=False)
    assert ck["step"] == 4 and ck["calib_generator"] is not None
    assert ck["option_values"]["calib_weight"] == [[0, 0.0], [2, 1.0]]
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (straight / "prior" / name).read_bytes() == (split / "prior" / name).read_bytes(), name
    card = (straight / "prior" / "README.md").read_text()
    assert (
        "steps 3-4: weight 1.0, shapes cube cylinder, the surface offset too for cube, per-image pull weight 1.0"
        in card
    )
    assert "--calib-weight 1.0 --calib-shapes cube cylinder --calib-batch 5 --calib-n 10 --calib-offset cube\n" in card
    meta = json.loads((straight / "prior" / "dreamnfsd_prior.json").read_text())
    assert meta["option_values"]["calib_shapes"] == [[0, " ".join(SHAPES)], [2, "cube cylinder"]]
    assert "Size calibration" not in (first / "prior" / "README.md").read_text()
    # The term joined the loss on every calibrated step (2 + 1 + 1), with a gradient, on one image of each shape.
    assert len(terms) == 4 and all(t.requires_grad and t.item() > 0 for t, _ in terms)
    assert all(sorted(cal_shape(i) for i in idx.tolist()) == sorted(SHAPES) for _, idx in terms)
    # A resume with other calibration options would hold other targets: refused, naming the flag.
    with pytest.raises(UserError, match="--resume"):
        train(replace(stage, steps=5, work_dir=split, out=split / "prior", resume=True, init_from=None, calib_n=20))


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"calib_weight": 1.0}, "--calib-weight"),  # no --init-from: nothing to hold in place
        ({"calib_weight": 1.0, "calib_shapes": "cube cubes"}, "--calib-shapes"),
        ({"calib_weight": 1.0, "calib_batch": 3}, "--calib-batch"),
        ({"calib_weight": 1.0, "calib_shapes": "cube", "calib_offset": "torus"}, "--calib-offset"),
    ],
)
def test_calibration_options_that_cannot_run_name_their_flag(tmp_path, change, flag):
    with pytest.raises(UserError, match=flag):
        train(replace(TOY, steps=1, work_dir=tmp_path, out=tmp_path / "prior", **change))
    assert not (tmp_path / "prior").exists() and not list(tmp_path.glob("*.pt"))
