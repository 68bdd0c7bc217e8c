"""Exploration probe (not part of the package): how one prompt's SDF surface evolves after the coarse hand-over.

Trains one built-in prompt (NFSD, seed 0) exactly as a run would and measures the SDF's mesh (64^3 marching cubes;
50k surface samples and 128 lines, so figures differ a little from the benchmark's) at the hand-over and every 100
steps after it. ``--exact`` hands over the exact primitive in place of the carved solid (with ``--until 300``: the
100-step probe's baseline). Extra arguments are run overrides.

    export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
    .venv/bin/python docs/benchmarks/quality_handover/probe_trajectory.py OUT "a red cube" [--exact] [overrides]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.data import primitive_sdf
from dreamnfsd.eval.geometry import GeometrySettings, mesh_geometry_metrics
from dreamnfsd.export.mesh import extract_mesh
from dreamnfsd.guidance.priors import load_prior
from dreamnfsd.train import coarse
from dreamnfsd.train import trainer as trainer_module

KEYS = ("iou", "fscore", "normal_consistency", "chamfer", "area_ratio", "axis_aligned_share")


def exact_handover(shape: str):
    """A stand-in for coarse.sdf_from_density that fits the SDF to the exact primitive."""

    def handover(density_field, sdf_field, cfg, generator) -> dict:
        r, b = cfg.train.coarse_resolution, float(density_field.cfg.bound)
        axis = torch.linspace(-b, b, r)
        pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        target = primitive_sdf(shape, pts).reshape(r, r, r)
        error = coarse.fit_sdf(sdf_field, target, cfg.train.coarse_fit_iters, generator)
        return {"solid_share": 0.0, "fit_error": error}

    return handover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("prompt")
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--until", type=int, default=None)
    args, overrides = parser.parse_known_args()
    shape = args.prompt.split()[-1]
    base = [f"prompt={args.prompt}", "prior=builtin", "guidance=nfsd", "seed=0", "train.val_every=0"]
    cfg = to_run_config(compose([*base, "train.ckpt_every=0", *overrides]))
    if args.exact:
        trainer_module.sdf_from_density = exact_handover(shape)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = trainer_module.Trainer(cfg, out, torch.device("cpu"), load_prior(cfg.prior, "cpu"))
    settings, rows = GeometrySettings(lines=128, n_samples=50_000), []
    start, until = coarse.coarse_steps(cfg), args.until or cfg.train.steps
    while trainer.step < until:
        trainer.train_step()
        if trainer.step >= start and (trainer.step - start) % 100 == 0 or trainer.step == until:
            metrics = mesh_geometry_metrics(extract_mesh(trainer.scene.field, 64), shape, settings)
            rows.append({"step": trainer.step, **{k: round(float(metrics[k]), 4) for k in KEYS if k in metrics}})
            print(json.dumps(rows[-1]), flush=True)
    (out / "trajectory.json").write_text(json.dumps(rows, indent=1))
    torch.save(trainer.scene.field.state_dict(), out / "field.pt")


if __name__ == "__main__":
    main()
