"""Iterate-averaging probe (issue 17): does the export land nearer the truth if it averages the field's parameters?

Trains one built-in prompt exactly as a benchmark run does (NFSD, seed 0, the preset plus any overrides), and from
step START keeps a uniform average and two exponential moving averages (decay 0.98, 0.99) of the final field's
parameters. Every 50 steps from START it extracts the mesh of the last iterate and of each average (resolution 64)
and measures it against the true primitive. Prints one JSON line per mesh and writes them to OUT/avg.json.

    OMP_NUM_THREADS=1 .venv/bin/python docs/benchmarks/quality_fitcol/probe_average.py OUT "a red cube" 600 \
        [overrides...]
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

from dreamnfsd.app.compose import compose, to_run_config
from dreamnfsd.eval.geometry import GeometrySettings, mesh_geometry_metrics
from dreamnfsd.export.mesh import extract_mesh
from dreamnfsd.guidance.priors import load_prior
from dreamnfsd.train.trainer import Trainer

DECAYS = (0.98, 0.99)
KEYS = ("iou", "fscore", "normal_consistency", "chamfer", "area_ratio")


def main() -> None:
    out, prompt, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    base = [f"prompt={prompt}", "prior=builtin", "guidance=nfsd", "seed=0", "train.val_every=0", "train.ckpt_every=0"]
    cfg = to_run_config(compose(base + sys.argv[4:]))
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, out, torch.device("cpu"), load_prior(cfg.prior, "cpu"))
    shape, settings = prompt.split()[-1], GeometrySettings(lines=128, n_samples=50_000)
    rows: list[dict] = []
    uniform: dict[str, torch.Tensor] = {}
    emas: dict[float, dict[str, torch.Tensor]] = {}
    count = 0

    def measure(label: str, params: dict[str, torch.Tensor] | None) -> None:
        field = copy.deepcopy(trainer.scene.field)
        if params is not None:
            with torch.no_grad():
                for k, p in field.named_parameters():
                    p.copy_(params[k])
        m = mesh_geometry_metrics(extract_mesh(field, 64), shape, settings)
        row = {"step": trainer.step, "kind": label, **{k: round(float(m[k]), 4) for k in KEYS}}
        if "axis_aligned_share" in m:
            row["axis"] = round(m["axis_aligned_share"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "avg.json").write_text(json.dumps(rows, indent=1))

    started = time.time()
    while trainer.step < cfg.train.steps:
        trainer.train_step()
        if trainer.step < start or trainer.scene.field.cfg.kind != cfg.field.kind:
            continue
        params = {k: p.detach() for k, p in trainer.scene.field.named_parameters()}
        count += 1
        if count == 1:
            uniform = {k: v.clone() for k, v in params.items()}
            emas = {d: {k: v.clone() for k, v in params.items()} for d in DECAYS}
        else:
            for k, v in params.items():
                uniform[k] += (v - uniform[k]) / count
                for d in DECAYS:
                    emas[d][k].lerp_(v, 1.0 - d)
        if trainer.step % 50 == 0 or trainer.step == cfg.train.steps:
            measure("raw", None)
            measure(f"uniform from {start}", uniform)
            for d in DECAYS:
                measure(f"ema{d}", emas[d])
    print("done", round(time.time() - started), "s")


if __name__ == "__main__":
    main()
