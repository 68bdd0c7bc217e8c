"""Train the built-in camera-aware pixel prior on procedural primitive renders.

Example (the real run, about two hours on 2 CPU cores):
    nohup .venv/bin/python scripts/train_builtin_prior.py --steps 100000 --max-minutes 130 \
        > work_data/prior_train.log 2>&1 &
Resume after an interruption with the same command plus ``--resume``; export the newest EMA weights without training
with ``--resume --steps 0``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

# The 2 cores are shared with other jobs: spinning OpenMP threads then wait on descheduled peers and a step became
# 10x slower. Sleeping waits and glibc keeping large buffers mapped (FIELD-NOTES) avoid that; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1000000000")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamnfsd.data import SCALE_JITTER, SHAPES, make_cameras, make_dataset  # noqa: E402
from dreamnfsd.guidance.priors.builtin import (  # noqa: E402
    DEFAULT_DIR,
    MAX_LENGTH,
    POSE_HARMONICS,
    VOCABULARY,
    PriorComponents,
    build_builtin_pipeline_components,
    camera_mse,
    load_components,
    load_metadata,
    predict_noise,
    save_components,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100_000, help="stop after this many total optimiser steps")
    p.add_argument("--max-minutes", type=float, default=130.0, help="wall-clock budget, counted from start")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--n-data", type=int, default=50_000)
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=5.0,
        help="Min-SNR loss weight min(snr, gamma)/snr for epsilon (0 disables): the plain loss is dominated "
        "by small t and left large-t predictions, which set the image's mean colour, poorly trained",
    )
    p.add_argument(
        "--x0-weight-cap",
        type=float,
        default=10.0,
        help="also weight each image's loss by clamp(1/snr, 1, cap) (0 disables): the epsilon loss "
        "scales x0 errors by snr, so at large t, where the object's outline and orientation are decided "
        "and the camera is the only clue to them, it barely asked for them and the camera went unused",
    )
    p.add_argument(
        "--cube-weight",
        type=float,
        default=2.0,
        help="sampling weight of cube images: the cube is the only shape whose look depends on azimuth, "
        "so it carries nearly all of the azimuth signal the camera channels must learn",
    )
    p.add_argument(
        "--pose-harmonics",
        type=int,
        default=POSE_HARMONICS,
        help="azimuth harmonics of the UNet's global camera pose embedding (0: ray channels only)",
    )
    p.add_argument(
        "--pose-lr-mult",
        type=float,
        default=3.0,
        help="learning-rate multiplier of the pose embedding (added late to a trained UNet, it starts at 0)",
    )
    p.add_argument(
        "--scale-jitter",
        type=float,
        default=SCALE_JITTER,
        help="training images draw each primitive at 1 ± this size; 0 draws every object at the one size "
        "the benchmark's silhouettes are judged at, which the jittered prior only matched to IoU 0.85-0.91",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from an exported prior folder's weights (model and EMA; fresh optimiser, warm-up "
        "and random streams) instead of from scratch; its recorded option history carries over",
    )
    p.add_argument("--camera-drop", type=float, default=0.1)
    p.add_argument("--caption-drop", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=ROOT / "work_data")
    p.add_argument("--out", type=Path, default=DEFAULT_DIR, help="exported model folder")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--export-every", type=int, default=500, help="export the EMA model every N steps (0: only at end)")
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args(argv)


def load_data(args: argparse.Namespace, components: PriorComponents) -> dict:
    """The rendered dataset (cached on disk) with pre-tokenised captions."""
    jitter = "" if args.scale_jitter == SCALE_JITTER else f"_jitter{args.scale_jitter:g}"
    cache = args.work_dir / f"prior_data_seed{args.seed}_n{args.n_data}{jitter}.pt"
    if cache.exists():
        data = torch.load(cache)
    else:
        t0 = time.time()
        data = make_dataset(args.n_data, seed=args.seed + 1000, progress=False, scale_jitter=args.scale_jitter)
        print(f"rendered {args.n_data} images in {time.time() - t0:.0f}s", flush=True)
        _atomic_save(data, cache)
    tok = components.tokenizer
    data["input_ids"] = tok(
        data["captions"], padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    data["empty_ids"] = tok([""], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    return data


def _atomic_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_batch(data: dict, idx: torch.Tensor, args: argparse.Namespace, g: torch.Generator) -> tuple:
    """Images (B, 3, 32, 32) in [-1, 1], token ids (B, L) with caption dropout, camera or zero ray channels."""
    b = idx.shape[0]
    x0 = data["rgb"][idx].float() / 127.5 - 1.0
    ids = data["input_ids"][idx].clone()
    drop_text = torch.rand(b, generator=g) < args.caption_drop
    ids[drop_text] = data["empty_ids"][0]
    camera = make_cameras(data["azimuth"][idx], data["elevation"][idx], x0.shape[-1])
    keep_cam = (torch.rand(b, generator=g) >= args.camera_drop).float()
    return x0, ids, camera, keep_cam


def split_params(components: PriorComponents) -> tuple[list, list]:
    """(everything but the pose embedding, the pose embedding): checkpoints from before the embedding hold only the
    first list, in this order."""
    named = list(components.unet.named_parameters())
    base = [p for n, p in named if not n.startswith("class_embedding.")]
    pose = [p for n, p in named if n.startswith("class_embedding.")]
    return base + list(components.text_encoder.parameters()), pose


def camera_diagnostic(components: PriorComponents) -> str:
    components.unet.eval()
    true, yawed = camera_mse(components, 0.0), camera_mse(components, 45.0)
    components.unet.train()
    return f"camera MSE true {true:.5f} yawed-45 {yawed:.5f} ratio {yawed / true:.3f}"


def export(args: argparse.Namespace, ema: PriorComponents, step: int, loss: float) -> None:
    """Write the EMA model to ``args.out`` through a temporary folder so a complete export is always on disk."""
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "train_steps": step,
        "final_loss": round(loss, 5),
        "seed": args.seed,
        "ema_decay": args.ema,
        "ema_history": args.ema_history,
        "batch_size": args.batch,
        "n_train_images": args.n_data,
        "min_snr_gamma": args.min_snr_gamma,
        "min_snr_from_step": args.min_snr_from_step,
        "cube_weight": args.cube_weight,
        "cube_weight_from_step": args.cube_weight_from_step,
        "pose_harmonics": args.pose_harmonics,
        "pose_from_step": args.pose_from_step,
        "x0_weight_cap": args.x0_weight_cap,
        "x0_weight_from_step": args.x0_weight_from_step,
        "scale_jitter": args.scale_jitter,
        "scale_jitter_from_step": args.scale_jitter_from_step,
        "init_steps": args.init_steps,
        "loss_note": "final_loss is the running mean of the (Min-SNR weighted) epsilon MSE",
    }
    save_components(ema, tmp, meta)
    (tmp / "README.md").write_text(model_card(meta))
    old = args.out.with_name(args.out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if args.out.exists():
        os.replace(args.out, old)
    os.replace(tmp, args.out)
    shutil.rmtree(old, ignore_errors=True)


def model_card(meta: dict) -> str:
    return f"""# dreamnfsd built-in prior

A small camera-aware text-to-image diffusion model, trained from scratch on procedural renders of single primitives
on a white background. Pixel space (no VAE), 32x32 RGB in [-1, 1], epsilon prediction, DDPM schedule
`squaredcos_cap_v2` with 1000 steps. Weights are float32 safetensors.

- UNet input: 6 channels = 3 noisy RGB + 3 per-pixel world ray directions
  (`dreamnfsd.cameras.ray_direction_channels`; zeros = no camera, used for 10% of training images).
- Camera pose embedding: `dreamnfsd.cameras.camera_pose_features` (sin/cos of k*azimuth for
  k = 1..{meta["pose_harmonics"]}, sin/cos elevation) through diffusers' `class_embed_type="projection"`, added to
  the timestep embedding; zeroed with the ray channels when the camera is dropped. Added (zero-initialised) at
  step {meta["pose_from_step"]}.
- Cameras: distance 3, vertical fov 40 degrees, azimuth 0-360, elevation -10 to 45 degrees, z-up world.
  The cube is axis-aligned and cylinder, cone and torus stand along z, so the prior knows their orientation.
- Text: captions "a <colour> <shape>", 10% dropped to "" for classifier-free guidance; about 15% of images are
  degraded and captioned with words of the NFSD negative prompt.
- Vocabulary: {" ".join(VOCABULARY)}
- Training: {meta["train_steps"]} steps at batch {meta["batch_size"]}, {meta["n_train_images"]} rendered images,
  AdamW, EMA of the weights (the export; decay from step: {", ".join(f"{d} from {s}" for s, d in meta["ema_history"])}),
  seed {meta["seed"]}; final loss {meta["final_loss"]}.
- Loss: epsilon MSE with Min-SNR-{meta["min_snr_gamma"]} weighting from step {meta["min_snr_from_step"]} (the plain
  MSE before it), and from step {meta["x0_weight_from_step"]} also times clamp(1/snr, 1, {meta["x0_weight_cap"]})
  (x0-space weight at large t); the final loss above is the running mean of the weighted loss.
- Cube images drawn with weight {meta["cube_weight"]} from step {meta["cube_weight_from_step"]} (uniform before): the
  cube carries the azimuth signal.
- Object size: 1 ± {meta["scale_jitter"]} of the canonical primitive from step {meta["scale_jitter_from_step"]}
  (1 ± {SCALE_JITTER} before).{init_note(meta)}

Reproduce (each option above switched on at its step, so one command per stage; a stage may be stopped and resumed
at any step, since the checkpoint holds the optimiser and random states):

{reproduce_commands(meta)}

Load: `dreamnfsd.guidance.priors.builtin.load_components(folder)`; sample with `builtin.sample(...)`.
"""


def init_steps(record: dict) -> list[int]:
    """The steps at which training restarted from an export's weights (``init_from_step``: one restart, older)."""
    if "init_steps" in record:
        return list(record["init_steps"])
    return [record["init_from_step"]] if record.get("init_from_step") else []


def init_note(meta: dict) -> str:
    inits = init_steps(meta)
    if not inits:
        return ""
    ends = [*inits[1:], meta["train_steps"]]
    spans = "; ".join(f"steps {s + 1}-{e} from the step-{s} export" for s, e in zip(inits, ends))
    return (
        f"\n- Continued from exported weights with a fresh optimiser ({spans}; those training checkpoints were "
        "not kept), so the chain below restarts there with `--init-from`."
    )


def reproduce_commands(meta: dict) -> str:
    """The stage-by-stage commands that rebuild an export from its recorded option history."""
    off = {  # option: (the step it took effect, its value before, its value after)
        "--min-snr-gamma": (meta["min_snr_from_step"], 0, meta["min_snr_gamma"]),
        "--cube-weight": (meta["cube_weight_from_step"], 1, meta["cube_weight"]),
        "--pose-harmonics": (meta["pose_from_step"], 0, meta["pose_harmonics"]),
        "--x0-weight-cap": (meta["x0_weight_from_step"], 0, meta["x0_weight_cap"]),
        "--scale-jitter": (meta.get("scale_jitter_from_step", 0), SCALE_JITTER, meta.get("scale_jitter", SCALE_JITTER)),
    }
    inits = init_steps(meta)
    ema = {s: d for s, d in meta["ema_history"]}
    stops = sorted(
        {s for s, _, _ in off.values() if s > 0} | {s for s in ema if s > 0} | set(inits) | {meta["train_steps"]}
    )
    lines, start = [], 0
    for stop in stops:
        opts = [f"{k} {after if start >= s else before}" for k, (s, before, after) in off.items()]
        if opts[-1] == f"--scale-jitter {SCALE_JITTER}":
            opts.pop()  # the default: keeps the commands of exports from before the option unchanged
        decay = [d for s, d in meta["ema_history"] if s <= start][-1]
        since = [s for s in inits if s <= start]  # the restart this stage's work dir belongs to
        if start == 0:
            how = ""
        elif start in inits:
            how = f" --init-from work_data/prior_step{start} --work-dir work_data/from_step{start}"
        else:
            how = " --resume" + (f" --work-dir work_data/from_step{since[-1]}" if since else "")
        out = f" --out work_data/prior_step{stop}" if stop in inits else ""
        lines.append(
            f"    python scripts/train_builtin_prior.py --seed {meta['seed']}{how} --steps {stop} "
            f"{' '.join(opts)} --ema {decay}{out}"
        )
        start = stop
    return "\n".join(lines)


def init_from(args: argparse.Namespace, model: PriorComponents, ema: PriorComponents) -> int:
    """Load an exported prior into ``model`` and ``ema`` and take over its option history; returns its step."""
    meta = load_metadata(args.init_from)
    if meta.get("pose_harmonics", 0) != args.pose_harmonics:
        sys.exit(
            f"error: --init-from {args.init_from} has pose_harmonics={meta.get('pose_harmonics', 0)}; "
            f"pass --pose-harmonics {meta.get('pose_harmonics', 0)}"
        )
    src = load_components(args.init_from)
    for target in (model, ema):
        target.unet.load_state_dict(src.unet.state_dict())
        target.text_encoder.load_state_dict(src.text_encoder.state_dict())
    step = meta["train_steps"]
    for key in (
        "min_snr_from_step",
        "cube_weight_from_step",
        "pose_from_step",
        "x0_weight_from_step",
        "scale_jitter_from_step",
    ):
        setattr(args, key, meta.get(key, 0))
    changed = {
        "min_snr_gamma": "min_snr_from_step",
        "cube_weight": "cube_weight_from_step",
        "x0_weight_cap": "x0_weight_from_step",
        "scale_jitter": "scale_jitter_from_step",
    }
    for option, key in changed.items():
        if getattr(args, option) != meta.get(option, SCALE_JITTER if option == "scale_jitter" else None):
            setattr(args, key, step)
    args.ema_history = meta["ema_history"] + ([[step, args.ema]] if meta["ema_history"][-1][1] != args.ema else [])
    args.init_steps = [*init_steps(meta), step]
    args.warmup_from_step = step
    print(f"initialised from {args.init_from} (step {step}); fresh optimiser", flush=True)
    return step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.min_snr_from_step = args.cube_weight_from_step = args.pose_from_step = args.x0_weight_from_step = 0
    args.scale_jitter_from_step = args.warmup_from_step = 0
    args.init_steps = []
    args.ema_history = [[0, args.ema]]
    start = time.time()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.work_dir / f"prior_ckpt_seed{args.seed}.pt"
    log_path = args.work_dir / f"prior_loss_seed{args.seed}.csv"

    model = build_builtin_pipeline_components(args.seed, args.pose_harmonics)
    ema = copy.deepcopy(model)
    base, pose = split_params(model)
    params, ema_params = base + pose, sum(split_params(ema), [])
    for p in ema_params:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(base, lr=args.lr, weight_decay=0.01)
    pose_group = {"params": pose, "lr_mult": args.pose_lr_mult}
    g = torch.Generator().manual_seed(args.seed)
    step, loss_avg = 0, float("nan")
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        # A checkpoint from before the pose embedding lacks exactly its weights; they keep their zero init.
        adding_pose = bool(pose) and not any(k.startswith("class_embedding.") for k in ck["unet"])
        for target, key in ((model.unet, "unet"), (ema.unet, "ema_unet")):
            missing, unexpected = target.load_state_dict(ck[key], strict=not adding_pose)
            assert not unexpected and all(k.startswith("class_embedding.") for k in missing), (missing, unexpected)
        model.text_encoder.load_state_dict(ck["text_encoder"])
        ema.text_encoder.load_state_dict(ck["ema_text_encoder"])
        if adding_pose:
            opt.load_state_dict(ck["opt"])
            opt.add_param_group(pose_group)
        else:
            if pose:
                opt.add_param_group(pose_group)
            opt.load_state_dict(ck["opt"])
        g.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        step, loss_avg = ck["step"], ck["loss_avg"]
        # Runs before the Min-SNR / cube-weight options trained without them; remember where each began.
        old = ck["args"]
        args.min_snr_from_step = ck.get("min_snr_from_step", old.get("min_snr_gamma") is None and step or 0)
        args.cube_weight_from_step = ck.get("cube_weight_from_step", old.get("cube_weight") is None and step or 0)
        args.x0_weight_from_step = ck.get("x0_weight_from_step", old.get("x0_weight_cap") is None and step or 0)
        args.ema_history = ck.get("ema_history", [[0, old["ema"]]])
        if args.ema_history[-1][1] != args.ema:
            args.ema_history.append([step, args.ema])
        args.pose_from_step = step if adding_pose else ck.get("pose_from_step", 0)
        args.init_steps = init_steps(ck)
        args.warmup_from_step = args.init_steps[-1] if args.init_steps else 0
        args.scale_jitter_from_step = ck.get("scale_jitter_from_step", 0)
        if args.scale_jitter != old.get("scale_jitter", SCALE_JITTER):
            args.scale_jitter_from_step = step
        print(
            f"resumed from {ckpt_path} at step {step}" + (" (pose embedding added)" if adding_pose else ""), flush=True
        )
    else:
        if pose:
            opt.add_param_group(pose_group)
        if args.init_from is not None:
            step = init_from(args, model, ema)

    def save_checkpoint() -> None:
        _atomic_save(
            {
                "unet": model.unet.state_dict(),
                "text_encoder": model.text_encoder.state_dict(),
                "ema_unet": ema.unet.state_dict(),
                "ema_text_encoder": ema.text_encoder.state_dict(),
                "opt": opt.state_dict(),
                "generator": g.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "loss_avg": loss_avg,
                "args": vars(args),
                "min_snr_from_step": args.min_snr_from_step,
                "cube_weight_from_step": args.cube_weight_from_step,
                "pose_from_step": args.pose_from_step,
                "x0_weight_from_step": args.x0_weight_from_step,
                "ema_history": args.ema_history,
                "scale_jitter_from_step": args.scale_jitter_from_step,
                "init_steps": args.init_steps,
            },
            ckpt_path,
        )

    if args.steps <= step:
        export(args, ema, step, loss_avg)
        print(f"exported step {step} to {args.out}", flush=True)
        return

    data = load_data(args, model)
    n = data["rgb"].shape[0]
    sched = model.scheduler
    weights = 1.0 + (args.cube_weight - 1.0) * (data["shape_idx"] == SHAPES.index("cube")).float()
    n_params = sum(p.numel() for p in params)
    print(f"training {n_params / 1e6:.2f}M params on {n} images, from step {step}", flush=True)
    model.unet.train()
    model.text_encoder.train()
    last_ckpt, t_log, step_log = time.time(), time.time(), step
    # SIGTERM (plain `kill PID`) ends the loop cleanly: a checkpoint and an export are written before exiting.
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    with log_path.open("a") as log:
        if step == 0:
            log.write("step,loss,lr,elapsed_s,steps_per_s\n")
        while step < args.steps and (time.time() - start) / 60 < args.max_minutes and not stop["flag"]:
            lr = args.lr * min(1.0, (step - args.warmup_from_step + 1) / args.warmup)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            idx = torch.multinomial(weights, args.batch, replacement=True, generator=g)
            x0, ids, camera, keep_cam = make_batch(data, idx, args, g)
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(sched.config.num_train_timesteps, (args.batch,), generator=g)
            noisy = sched.add_noise(x0, noise, t)
            text_emb = model.text_encoder(ids).last_hidden_state
            # Camera dropout zeroes the ray channels of some images: the "no camera" input of text-only calls.
            eps = predict_noise(model.unet, noisy, t, text_emb, camera, keep_cam)
            per_image = (eps - noise).square().mean(dim=(1, 2, 3))
            ab = sched.alphas_cumprod[t]
            snr = ab / (1 - ab)
            if args.min_snr_gamma > 0:
                per_image = per_image * snr.clamp(max=args.min_snr_gamma) / snr
            if args.x0_weight_cap > 0:
                per_image = per_image * snr.reciprocal().clamp(1.0, args.x0_weight_cap)
            loss = per_image.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            decay = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
            loss_avg = loss.item() if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * loss.item()
            if step % args.log_every == 0:
                rate = (step - step_log) / (time.time() - t_log)
                t_log, step_log = time.time(), step
                elapsed = time.time() - start
                log.write(f"{step},{loss_avg:.5f},{lr:.2e},{elapsed:.0f},{rate:.3f}\n")
                log.flush()
                print(f"step {step} loss {loss_avg:.4f} lr {lr:.1e} {rate:.2f} it/s {elapsed / 60:.1f} min", flush=True)
            if time.time() - last_ckpt > 60 * args.checkpoint_minutes:
                save_checkpoint()
                last_ckpt = time.time()
            if args.export_every and step % args.export_every == 0:
                export(args, ema, step, loss_avg)
                print(f"exported step {step} to {args.out}; EMA {camera_diagnostic(ema)}", flush=True)
    save_checkpoint()
    export(args, ema, step, loss_avg)
    print(f"done: step {step} loss {loss_avg:.4f}; exported to {args.out}", flush=True)


if __name__ == "__main__":
    main()
