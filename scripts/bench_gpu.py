"""Benchmark one NFSD / SDS training step with a prior of Stable Diffusion 2.1-base's exact architecture.

The prior's UNet, VAE and text encoder are built from SD 2.1-base's configs (embedded below) with random weights,
so nothing is downloaded and the compute is the real model's. A step is what training does: render a batch of views
with the project's field and renderer, resize to 512 and VAE-encode with gradient, one batched UNet call through the
project's guidance (3 predictions per view for NFSD: null, prompt, negative; 2 for SDS), backward, Adam step.

Reported per method: steps/s, the share of the step spent in the UNet call, step time over the UNet call alone
(same batch, no guidance around it), and peak GPU memory. Targets on one H100 at 64x64 renders, batch 1:
NFSD peak memory <= 6 GB and step time <= 1.3x the UNet call alone.

What keeps it near those targets (each is in the code below):
- fp16 weights for UNet, VAE and text encoder on CUDA; the field renders under fp16 autocast (hash table and Adam
  state stay fp32);
- channels_last UNet and VAE (tensor-core convolutions without layout transposes), SDPA attention (diffusers'
  default with torch 2; xformers if installed), cudnn.benchmark, fused Adam;
- the text encoder leaves the GPU once the prompts are encoded: every prompt is cached, so it never runs again;
- the VAE encodes at 512 in fp16, and only its encoder is in the graph;
- nothing reads a tensor back to the host inside the timed loop (no .item()); torch.cuda.synchronize() only brackets
  the timed regions, and the UNet's share is taken with CUDA events.

Usage:
    python scripts/bench_gpu.py                       # SD 2.1-base architecture, 64x64 renders (GPU)
    python scripts/bench_gpu.py --small --steps 2     # tiny dims, CPU-friendly end-to-end check
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Runs from a checkout without installing the package too.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Stable Diffusion 2.1-base (stabilityai/stable-diffusion-2-1-base), written out so no download is needed.
SD21_BASE_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    # diffusers' historical name: for SD 2.x these are the numbers of heads (64 channels each).
    "attention_head_dim": [5, 10, 20, 20],
    "dual_cross_attention": False,
    "use_linear_projection": True,
}
SD21_BASE_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# OpenCLIP ViT-H/14's text tower as SD 2.x loads it (the last of its 24 layers is dropped: penultimate features).
SD21_BASE_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
    "attention_dropout": 0.0,
    "dropout": 0.0,
}
SD21_BASE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

# --small: the same block layout at toy widths, so a 2-core CPU runs a whole step in well under a second.
SMALL_UNET = {
    **SD21_BASE_UNET,
    "sample_size": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": [2, 4],
}
SMALL_VAE = {
    **SD21_BASE_VAE,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "sample_size": 32,
}
SMALL_TEXT = {
    **SD21_BASE_TEXT,
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}

PROMPT = "a ceramic mug with a blue glaze"
TARGETS = {"nfsd_peak_memory_gb": 6.0, "nfsd_step_over_unet": 1.3}


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype
    small: bool
    render: int
    batch: int
    shading: str


# --- the prior --------------------------------------------------------------------------------------------------
def char_tokenizer(max_length: int = 77):
    """A CLIP tokenizer over single printable characters: prompt token ids for random weights need no real vocab,
    and the text encoder runs once per prompt, outside the timed loop."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    special = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate([*special, *chars, *(c + "</w>" for c in chars)])}
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        model_max_length=max_length,
        bos_token=special[0],
        eos_token=special[1],
        unk_token=special[1],
        pad_token=special[1],
    )


def build_components(small: bool, device: torch.device, dtype: torch.dtype) -> dict:
    """Random-weight UNet, VAE and text encoder with SD 2.1-base's (or --small's) configs, made on ``device``
    directly (initialising 1.3 B parameters on a GPU takes seconds, on a CPU far longer)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = char_tokenizer()
    text_cfg = CLIPTextConfig(
        **(SMALL_TEXT if small else SD21_BASE_TEXT),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(SMALL_UNET if small else SD21_BASE_UNET))
        vae = AutoencoderKL(**(SMALL_VAE if small else SD21_BASE_VAE))
        text_encoder = CLIPTextModel(text_cfg)
    return {
        "unet": unet.to(dtype=dtype),
        "vae": vae.to(dtype=dtype),
        "text_encoder": text_encoder.to(dtype=dtype),
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(**SD21_BASE_SCHEDULER),
    }


def build_prior(setup: Setup, via_folder: bool):
    """The project's StableDiffusionPrior around the random components; ``via_folder`` round-trips them through
    ``save_pretrained`` and ``StableDiffusionPrior.from_pretrained`` (the loader training uses)."""
    from dreamnfsd.guidance.priors.diffusers_prior import enable_memory_efficient_attention
    from dreamnfsd.guidance.priors.stable_diffusion import StableDiffusionPrior

    parts = build_components(setup.small, setup.device, setup.dtype)
    if via_folder:
        with tempfile.TemporaryDirectory(prefix="bench_sd_") as folder:
            for name, part in parts.items():
                part.save_pretrained(Path(folder) / name)
            del parts
            prior = StableDiffusionPrior.from_pretrained(folder, setup.device, setup.dtype, local_files_only=True)
    else:
        alphas = parts["scheduler"].alphas_cumprod
        prior = StableDiffusionPrior(
            parts["unet"], parts["vae"], parts["tokenizer"], parts["text_encoder"], alphas, "epsilon"
        ).to(setup.device)
        enable_memory_efficient_attention(prior.unet)
    if setup.device.type == "cuda":
        prior.unet.to(memory_format=torch.channels_last)
        prior.vae.to(memory_format=torch.channels_last)
    return prior


def offload_text_encoder(prior) -> None:
    """Every prompt the guidance needs is encoded and cached at construction; the encoder can leave the GPU."""
    # Submodule .to() leaves the prior's cache alone (only Prior._apply clears it).
    prior.text_encoder.to("cpu")
    free_cached(prior.device)


# --- the scene and one training step ----------------------------------------------------------------------------
def run_config(setup: Setup, kind: str):
    """The project's default run config, at the benchmark's render size and batch, for guidance ``kind``."""
    from dreamnfsd.config import RunConfig

    cfg = RunConfig(prompt=PROMPT)
    cfg.camera.height = cfg.camera.width = setup.render
    cfg.train.batch_size = setup.batch
    cfg.guidance.kind = kind
    cfg.guidance.guidance_scale = None
    # Worst case for NFSD: every view past the threshold, so each one needs the negative prediction (3 per view).
    cfg.guidance.nfsd_t_threshold = 0
    cfg.background.kind = "mlp"  # the app's default (configs/config.yaml), not the schema's constant colour
    if setup.small:  # a field a 2-core CPU steps through quickly; the GPU figures use the real defaults
        cfg.field.encoding.n_levels, cfg.field.encoding.log2_hashmap_size = 8, 14
        cfg.renderer.num_steps, cfg.grid.resolution = 32, 32
    return cfg


def make_guidance(prior, setup: Setup, kind: str):
    """The project's Guidance for ``kind``; constructing it encodes and caches every prompt it will use."""
    from dreamnfsd.guidance import Guidance

    cfg = run_config(setup, kind)
    return Guidance(prior, cfg.guidance, cfg.prompt)


class Trainee:
    """Scene, optimizer and RNG for one method; ``step()`` is one training step, never syncing."""

    def __init__(self, setup: Setup, prior, guidance):
        from dreamnfsd.cameras import RandomCameraSampler
        from dreamnfsd.train.scene import build_scene

        self.setup, self.prior, self.guidance = setup, prior, guidance
        self.cfg = run_config(setup, guidance.cfg.kind)
        torch.manual_seed(0)
        self.scene = build_scene(self.cfg, setup.device)
        self.sampler = RandomCameraSampler(self.cfg.camera)
        self.generator = torch.Generator().manual_seed(0)  # CPU, as in training
        params = [*self.scene.field.parameters(), *self.scene.background.parameters()]
        fused = {"fused": True} if setup.device.type == "cuda" else {}
        self.optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.99), eps=1e-15, **fused)
        self.n = 0
        self.last_loss = torch.zeros(())

    def _autocast(self):
        if self.setup.device.type != "cuda":  # CPU autocast (bf16) is slower than fp32 on most CPUs
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16)

    def step(self) -> None:
        from dreamnfsd.train.shading import light_positions

        tc = self.cfg.train
        cams = self.sampler.sample(self.setup.batch, self.generator, self.setup.device)
        origins, dirs = cams.rays()
        lit = self.setup.shading != "albedo"
        lights = light_positions(cams, tc, self.generator) if lit else None
        with self._autocast():
            out = self.scene.renderer.render(
                origins,
                dirs,
                shading=self.setup.shading,
                light_positions=lights,
                ambient=tc.ambient,
                need_normals=lit,
            )
        rgb = out["rgb"].permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        z = self.prior.to_model_space(rgb)  # resize to 512, fp16 VAE encode, with grad
        g = self.guidance.step(z, cams, self.generator, progress=0.5)
        self.optimizer.zero_grad(set_to_none=True)
        g.loss.backward()
        self.optimizer.step()
        self.last_loss = g.loss.detach()  # read once after the timed loop, never inside it
        self.n += 1
        self.scene.renderer.update_occupancy(self.n)  # every few steps, as in training


# --- timing -----------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UNetTimer:
    """Wraps ``prior.predict_noise`` to time each call: CUDA events on GPU (read after the loop), wall clock on
    CPU (where the call is synchronous anyway)."""

    def __init__(self, prior, device: torch.device):
        self.prior, self.device, self.inner = prior, device, prior.predict_noise
        self.spans: list = []
        self.batch = 0
        prior.predict_noise = self

    def __call__(self, x_t, *args, **kwargs):
        self.batch = x_t.shape[0]
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.inner(x_t, *args, **kwargs)
            end.record()
            self.spans.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.inner(x_t, *args, **kwargs)
        self.spans.append(time.perf_counter() - t0)
        return out

    def total_s(self) -> float:
        if self.device.type == "cuda":
            return sum(s.elapsed_time(e) for s, e in self.spans) / 1000
        return sum(self.spans)

    def reset(self) -> None:
        self.spans.clear()

    def restore(self) -> None:
        del self.prior.predict_noise  # the instance attribute; the class method shows through again


def free_cached(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn, n: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls after ``warmup`` untimed ones (cudnn autotuning, lazy init)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def bench_unet_alone(prior, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """The UNet call as the guidance makes it (same shapes, fp16, no grad), with nothing around it."""
    res = prior.resolution // 2 ** (len(prior.vae.config.block_out_channels) - 1)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, prior.unet.config.in_channels, res, res, generator=g, device=device)
    t = torch.randint(20, 980, (batch,), generator=g, device=device)
    emb = prior.encode_text([PROMPT]).expand(batch, -1, -1).contiguous()
    reset_peak(device)
    seconds = timed(lambda: prior.predict_noise(x, t, emb), steps, warmup, device)
    return {"batch": batch, "ms": seconds * 1000, "calls_per_s": 1 / seconds, "peak_memory_gb": peak_gb(device)}


def bench_method(setup: Setup, prior, guidance, steps: int, warmup: int) -> dict:
    trainee = Trainee(setup, prior, guidance)
    timer = UNetTimer(prior, setup.device)
    try:
        for _ in range(warmup):
            trainee.step()
        sync(setup.device)
        timer.reset()
        reset_peak(setup.device)
        seconds = timed(trainee.step, steps, 0, setup.device)
        unet_s = timer.total_s() / steps
    finally:
        timer.restore()
    return {
        "loss_finite": bool(torch.isfinite(trainee.last_loss)),
        "step_ms": seconds * 1000,
        "steps_per_s": 1 / seconds,
        "unet_in_step_ms": unet_s * 1000,
        "unet_share": unet_s / seconds,
        "unet_batch": timer.batch,
        "peak_memory_gb": peak_gb(setup.device),
    }


# --- the report -------------------------------------------------------------------------------------------------
def environment(setup: Setup, prior) -> dict:
    gpu = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else None
    return {
        "device": str(setup.device),
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "config": "small" if setup.small else "sd-2.1-base",
        "dtype": str(setup.dtype).removeprefix("torch."),
        "render": setup.render,
        "prior_resolution": prior.resolution,
        "batch": setup.batch,
        "shading": setup.shading,
        "unet_params_m": sum(p.numel() for p in prior.unet.parameters()) / 1e6,
        "attention": type(next(iter(prior.unet.attn_processors.values()))).__name__,
    }


def check_targets(result: dict) -> dict:
    nfsd = result["methods"]["nfsd"]
    if nfsd["peak_memory_gb"] is None:  # the targets are for a GPU
        return {}
    return {
        "nfsd_peak_memory_gb": nfsd["peak_memory_gb"] <= TARGETS["nfsd_peak_memory_gb"],
        "nfsd_step_over_unet": nfsd["step_over_unet"] <= TARGETS["nfsd_step_over_unet"],
    }


def table(result: dict) -> str:
    env = result["environment"]
    rows = [
        f"{env['config']} prior on {env['gpu'] or env['device']} ({env['dtype']}), render {env['render']}x"
        f"{env['render']} -> {env['prior_resolution']}, batch {env['batch']}, shading {env['shading']}",
        f"{'':10}{'steps/s':>9}{'step ms':>10}{'UNet ms':>10}{'UNet %':>8}{'alone ms':>10}{'step/UNet':>11}"
        f"{'peak GB':>9}",
    ]
    for kind, m in result["methods"].items():
        alone = result["unet_alone"][str(m["unet_batch"])]
        peak = "-" if m["peak_memory_gb"] is None else f"{m['peak_memory_gb']:.2f}"
        rows.append(
            f"{kind.upper() + ' x' + str(m['unet_batch']):10}{m['steps_per_s']:9.2f}{m['step_ms']:10.1f}"
            f"{m['unet_in_step_ms']:10.1f}{100 * m['unet_share']:7.0f}%{alone['ms']:10.1f}"
            f"{m['step_over_unet']:11.2f}{peak:>9}"
        )
    for name, ok in result["targets_met"].items():
        rows.append(f"target {name} <= {TARGETS[name]}: {'met' if ok else 'NOT met'}")
    return "\n".join(rows)


def run(setup: Setup, steps: int, warmup: int, via_folder: bool) -> dict:
    if setup.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: autotune once in the warm-up
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls that autocast leaves in fp32
    prior = build_prior(setup, via_folder)
    guidances = {kind: make_guidance(prior, setup, kind) for kind in ("sds", "nfsd")}
    offload_text_encoder(prior)
    methods = {}
    for kind, guidance in guidances.items():
        methods[kind] = bench_method(setup, prior, guidance, steps, warmup)
        free_cached(setup.device)  # the finished method's scene must not count in the next one's peak
    alone = {}
    for m in methods.values():
        batch = m["unet_batch"]
        alone.setdefault(str(batch), bench_unet_alone(prior, batch, steps, warmup, setup.device))
        m["step_over_unet"] = m["step_ms"] / alone[str(batch)]["ms"]
    result = {
        "environment": environment(setup, prior),
        "steps": steps,
        "warmup": warmup,
        "methods": methods,
        "unet_alone": alone,
        "targets": TARGETS,
    }
    result["targets_met"] = check_targets(result)
    return result


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny UNet/VAE/text dims and a small render (CPU check)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 1 with --small)")
    p.add_argument("--render", type=int, default=None, help="render size in pixels (default 64; 16 with --small)")
    p.add_argument("--batch", type=int, default=1, help="views per step")
    p.add_argument("--shading", default="lambertian", choices=("albedo", "lambertian", "textureless"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="prior weights: auto (fp16 on CUDA, fp32 on CPU) | fp16 | fp32")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; 1 with --small on CPU)")
    p.add_argument("--via-folder", action="store_true", help="load the prior through save_pretrained/from_pretrained")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_gpu.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import diffusers
    import transformers

    from dreamnfsd.guidance.priors.diffusers_prior import resolve_dtype

    # Casting random models to fp16 and saving them makes both libraries warn at length; none of it applies here.
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()

    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(name)
    setup = Setup(
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        small=args.small,
        render=args.render or (16 if args.small else 64),
        batch=args.batch,
        shading=args.shading,
    )
    if device.type == "cpu" and not args.small:
        print(
            "bench_gpu: no GPU; the full SD 2.1-base step on a CPU takes minutes (use --small to check)",
            file=sys.stderr,
        )
    threads = args.threads if args.threads is not None else (1 if args.small and device.type == "cpu" else 0)
    if threads > 0:  # on a shared few-core machine one thread gives steadier timings than oversubscribed ones
        torch.set_num_threads(threads)
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 5)
    result = run(setup, args.steps, warmup, args.via_folder)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
