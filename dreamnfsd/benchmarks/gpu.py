"""Benchmark of the product's NFSD / SDS training step with a prior of Stable Diffusion 2.1-base's exact architecture.

The step is :meth:`dreamnfsd.train.trainer.Trainer.train_step` itself (render, VAE encode with gradient, guidance,
regularisers, backward, the finite check, Adam over its parameter groups, occupancy update), on the app's config
composed from ``configs/`` as the CLI does. The prior is injected: by default a :class:`StableDiffusionPrior` whose
UNet, VAE and text encoder are built from SD 2.1-base's configs (below) with random weights, so nothing is downloaded
and the compute is the real model's; or a real model (``prior_model``), loaded as training loads it.

Reported per method: steps/s, the share of the step spent in the UNet call (CUDA events), step time over the UNet call
alone (same batch, no guidance around it), peak GPU memory, and the step's phases (a second pass with the trainer's
phase timer on, which synchronises at phase edges). Targets on one H100 at 64x64 renders, batch 1: NFSD peak memory
<= 6 GB and step time <= 1.3x the UNet call alone.

``tuned`` (the default) adds, on CUDA, what the benchmark does around the product, each recorded in the report's
``environment.tuning``: channels_last UNet and VAE, cudnn.benchmark, TF32 matmuls, and the text encoder moved to the
CPU once every prompt is encoded and cached. ``tuned=False`` measures the product exactly as ``dreamnfsd`` runs it.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamnfsd.benchmarks.common import format_table, free_cached, peak_gb, reset_peak, sync, timed
from dreamnfsd.benchmarks.step import PHASES, compose_run_config, phase_breakdown

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

# small: the same block layout at toy widths, so a 2-core CPU runs whole steps quickly.
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
# A field a 2-core CPU steps through quickly in the small form; the full benchmark uses the app's defaults.
SMALL_SCENE = (
    "field.encoding.n_levels=8",
    "field.encoding.log2_hashmap_size=14",
    "renderer.num_steps=32",
    "grid.resolution=32",
)

PROMPT = "a ceramic mug with a blue glaze"
TARGETS = {"nfsd_peak_memory_gb": 6.0, "nfsd_step_over_unet": 1.3}
METHODS = ("sds", "nfsd")


@dataclass
class GPUBenchConfig:
    small: bool = False  # toy UNet/VAE/text widths and a small scene and render (a CPU check)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # prior weights: auto (fp16 on CUDA, fp32 on CPU) | fp16 | fp32
    render: int | None = None  # render size in pixels; None: 64, or 16 when small
    batch: int = 1  # views per step
    shading: str = "lambertian"  # every timed step uses it: albedo | lambertian | textureless
    steps: int = 20  # timed steps per measurement
    warmup: int | None = None  # untimed steps first; None: 5, or 1 when small
    via_folder: bool = False  # load the random prior through save_pretrained / StableDiffusionPrior.from_pretrained
    prior_model: str | None = None  # a real SD model (hub id or folder) instead of random SD 2.1-base weights
    tuned: bool = True  # the benchmark's additions on CUDA (see the module docstring)
    overrides: list[str] = field(default_factory=list)  # further config overrides, e.g. train.batch_size=2

    @property
    def torch_device(self) -> torch.device:
        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        from dreamnfsd.guidance.priors.diffusers_prior import resolve_dtype

        return resolve_dtype(self.dtype, self.torch_device)

    @property
    def render_px(self) -> int:
        return self.render or (16 if self.small else 64)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else (1 if self.small else 5)

    @property
    def tuning(self) -> list[str]:
        """What the benchmark adds around the product on this device."""
        if not self.tuned or self.torch_device.type != "cuda":
            return []
        return ["channels_last", "cudnn.benchmark", "tf32_matmul", "text_encoder_offload"]


# --- the prior ------------------------------------------------------------------------------------------------------
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
    """Random-weight UNet, VAE and text encoder with SD 2.1-base's (or the small) configs, made on ``device``
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


def random_prior(cfg: GPUBenchConfig):
    """The project's StableDiffusionPrior around random components; ``cfg.via_folder`` round-trips them through
    ``save_pretrained`` and ``StableDiffusionPrior.from_pretrained`` (the loader training uses)."""
    from dreamnfsd.guidance.priors.diffusers_prior import enable_memory_efficient_attention
    from dreamnfsd.guidance.priors.stable_diffusion import StableDiffusionPrior

    device, dtype = cfg.torch_device, cfg.torch_dtype
    parts = build_components(cfg.small, device, dtype)
    if not cfg.via_folder:
        alphas = parts["scheduler"].alphas_cumprod
        prior = StableDiffusionPrior(
            parts["unet"], parts["vae"], parts["tokenizer"], parts["text_encoder"], alphas, "epsilon"
        ).to(device)
        enable_memory_efficient_attention(prior.unet)
        return prior
    with tempfile.TemporaryDirectory(prefix="bench_sd_") as folder:
        for name, part in parts.items():
            part.save_pretrained(Path(folder) / name)
        del parts
        return StableDiffusionPrior.from_pretrained(folder, device, dtype, local_files_only=True)


def build_prior(cfg: GPUBenchConfig):
    """The prior to inject: random SD 2.1-base-shaped weights, or ``cfg.prior_model`` loaded as training does."""
    if cfg.prior_model is None:
        prior = random_prior(cfg)
    else:
        from dreamnfsd.guidance.priors import load_prior

        prior_cfg = compose_run_config([f"prompt={PROMPT}", *prior_overrides(cfg)]).prior
        prior = load_prior(prior_cfg, cfg.torch_device)
    if "channels_last" in cfg.tuning:  # tensor-core convolutions without layout transposes
        prior.unet.to(memory_format=torch.channels_last)
        prior.vae.to(memory_format=torch.channels_last)
    return prior


def prior_overrides(cfg: GPUBenchConfig) -> list[str]:
    if cfg.prior_model is None:
        return []
    return ["prior.kind=stable_diffusion", f"prior.model={cfg.prior_model}", f"prior.dtype={cfg.dtype}"]


def offload_text_encoder(prior) -> None:
    """Every prompt the guidance needs is encoded and cached already; the encoder can leave the GPU."""
    # Submodule .to() leaves the prior's cache alone (only Prior._apply clears it).
    prior.text_encoder.to("cpu")
    free_cached(prior.device)


# --- the run config and one method ----------------------------------------------------------------------------------
SHADING_OVERRIDES = {  # every step (no warm-up) uses the one shading, through the trainer's own schedule
    "albedo": ["train.albedo_ratio=1"],
    "lambertian": ["train.shading_warmup_steps=0", "train.albedo_ratio=0", "train.textureless_ratio=0"],
    "textureless": ["train.shading_warmup_steps=0", "train.albedo_ratio=0", "train.textureless_ratio=1"],
}


def run_config(cfg: GPUBenchConfig, kind: str):
    """The app's config (``configs/``, as the CLI composes it) for guidance ``kind``, at the benchmark's render size,
    batch and shading."""
    if cfg.shading not in SHADING_OVERRIDES:
        raise ValueError(f"shading {cfg.shading!r} is not one of {', '.join(SHADING_OVERRIDES)}")
    overrides = [
        f"prompt={PROMPT}",
        f"guidance={kind}",
        # Worst case for NFSD: every view past the threshold, so each one needs the negative prediction (3 per view).
        "guidance.nfsd_t_threshold=0",
        f"camera.height={cfg.render_px}",
        f"camera.width={cfg.render_px}",
        f"train.batch_size={cfg.batch}",
        *SHADING_OVERRIDES[cfg.shading],
        *(SMALL_SCENE if cfg.small else []),
        *prior_overrides(cfg),
        *cfg.overrides,
    ]
    return compose_run_config(overrides)


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
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            out = self.inner(x_t, *args, **kwargs)
            self.spans.append(time.perf_counter() - t0)
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.inner(x_t, *args, **kwargs)
        end.record()
        self.spans.append((start, end))
        return out

    def total_s(self) -> float:
        if self.device.type == "cuda":
            return sum(s.elapsed_time(e) for s, e in self.spans) / 1000
        return sum(self.spans)

    def reset(self) -> None:
        self.spans.clear()

    def restore(self) -> None:
        del self.prior.predict_noise  # the instance attribute; the class method shows through again


def bench_method(run_cfg, prior, device: torch.device, steps: int, warmup: int) -> dict:
    """Time ``Trainer.train_step`` for ``run_cfg``'s guidance: ``steps`` steps after ``warmup`` untimed ones, then
    the same number again with the phase timer on."""
    from dreamnfsd.train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as run_dir:
        trainer = Trainer(run_cfg, Path(run_dir), device, prior)
        timer = UNetTimer(prior, device)
        results = []
        try:
            for _ in range(warmup):
                trainer.train_step()
            sync(device)
            timer.reset()
            reset_peak(device)
            seconds = timed(lambda: results.append(trainer.train_step()), steps, 0, device)
            unet_s = timer.total_s() / steps
            peak = peak_gb(device)
            phases = phase_breakdown(trainer, steps)
        finally:
            timer.restore()
    # Read back once after the timed loop: the trainer's own finite check (loss and every gradient) per step.
    finite = all(r.finite and bool(torch.isfinite(r.loss)) for r in results)
    return {
        "loss_finite": finite,
        "step_ms": seconds * 1000,
        "steps_per_s": 1 / seconds,
        "unet_in_step_ms": unet_s * 1000,
        "unet_share": unet_s / seconds,
        "unet_batch": timer.batch,
        "peak_memory_gb": peak,
        "phase_ms": phases["phase_ms"],
        "phase_pass_step_ms": phases["step_ms"],
    }


def bench_unet_alone(prior, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """The UNet call as the guidance makes it (same shapes and dtype, no grad), with nothing around it."""
    res = prior.resolution // 2 ** (len(prior.vae.config.block_out_channels) - 1)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, prior.unet.config.in_channels, res, res, generator=g, device=device)
    t = torch.randint(20, 980, (batch,), generator=g, device=device)
    emb = prior.encode_text([PROMPT]).expand(batch, -1, -1).contiguous()
    reset_peak(device)
    seconds = timed(lambda: prior.predict_noise(x, t, emb), steps, warmup, device)
    return {"batch": batch, "ms": seconds * 1000, "calls_per_s": 1 / seconds, "peak_memory_gb": peak_gb(device)}


# --- the run and its report -----------------------------------------------------------------------------------------
def run(cfg: GPUBenchConfig) -> dict:
    """Both methods and the UNet alone; returns the JSON report."""
    from dreamnfsd.guidance import Guidance

    device, warmup = cfg.torch_device, cfg.warmup_steps
    if "cudnn.benchmark" in cfg.tuning:
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: autotune once in the warm-up
    if "tf32_matmul" in cfg.tuning:
        torch.set_float32_matmul_precision("high")  # the fp32 matmuls that autocast leaves in fp32
    prior = build_prior(cfg)
    run_cfgs = {kind: run_config(cfg, kind) for kind in METHODS}
    for run_cfg in run_cfgs.values():  # encodes and caches every prompt the trainers will ask for
        Guidance(prior, run_cfg.guidance, run_cfg.prompt)
    if "text_encoder_offload" in cfg.tuning:
        offload_text_encoder(prior)
    methods = {}
    for kind in METHODS:
        methods[kind] = bench_method(run_cfgs[kind], prior, device, cfg.steps, warmup)
        free_cached(device)  # the finished method's scene must not count in the next one's peak
    alone: dict[str, dict] = {}
    for m in methods.values():
        batch = m["unet_batch"]
        alone.setdefault(str(batch), bench_unet_alone(prior, batch, cfg.steps, warmup, device))
        m["step_over_unet"] = m["step_ms"] / alone[str(batch)]["ms"]
    result = {
        "environment": environment(cfg, prior),
        "steps": cfg.steps,
        "warmup": warmup,
        "methods": methods,
        "unet_alone": alone,
        "targets": TARGETS,
    }
    result["targets_met"] = check_targets(result)
    return result


def environment(cfg: GPUBenchConfig, prior) -> dict:
    device = cfg.torch_device
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "config": cfg.prior_model or ("small" if cfg.small else "sd-2.1-base"),
        "dtype": str(cfg.torch_dtype).removeprefix("torch."),
        "render": cfg.render_px,
        "prior_resolution": prior.resolution,
        "batch": cfg.batch,
        "shading": cfg.shading,
        "step": "dreamnfsd.train.trainer.Trainer.train_step",
        "tuning": cfg.tuning,
        "unet_params_m": sum(p.numel() for p in prior.unet.parameters()) / 1e6,
        "attention": type(next(iter(prior.unet.attn_processors.values()))).__name__,
    }


def check_targets(result: dict) -> dict:
    """Whether NFSD meets each target; empty on a CPU (the targets are for a GPU)."""
    nfsd = result["methods"]["nfsd"]
    if nfsd["peak_memory_gb"] is None:
        return {}
    return {
        "nfsd_peak_memory_gb": nfsd["peak_memory_gb"] <= TARGETS["nfsd_peak_memory_gb"],
        "nfsd_step_over_unet": nfsd["step_over_unet"] <= TARGETS["nfsd_step_over_unet"],
    }


def table(result: dict) -> str:
    """The report as text: one row per method, its phases, and the targets."""
    env = result["environment"]
    head = (
        f"{env['config']} prior on {env['gpu'] or env['device']} ({env['dtype']}), render {env['render']}x"
        f"{env['render']} -> {env['prior_resolution']}, batch {env['batch']}, shading {env['shading']}"
    )
    columns = [
        ("", "<9"),
        ("steps/s", ">8.2f"),
        ("step ms", ">9.1f"),
        ("UNet ms", ">9.1f"),
        ("UNet %", ">7.0%"),
        ("alone ms", ">9.1f"),
        ("step/UNet", ">10.2f"),
        ("peak GB", ">8.2f"),
    ]
    rows = []
    for kind, m in result["methods"].items():
        alone = result["unet_alone"][str(m["unet_batch"])]
        label = f"{kind.upper()} x{m['unet_batch']}"
        rows.append(
            (
                label,
                m["steps_per_s"],
                m["step_ms"],
                m["unet_in_step_ms"],
                m["unet_share"],
                alone["ms"],
                m["step_over_unet"],
                m["peak_memory_gb"],
            )
        )
    phase_cols = [("phases ms", "<9"), *((name, ">10.1f") for name in PHASES)]
    phase_rows = [
        (f"{kind.upper()}", *(m["phase_ms"].get(name) for name in PHASES)) for kind, m in result["methods"].items()
    ]
    lines = [head, format_table(columns, rows), format_table(phase_cols, phase_rows)]
    lines += [f"target {k} <= {TARGETS[k]}: {'met' if ok else 'NOT met'}" for k, ok in result["targets_met"].items()]
    if env["tuning"]:
        lines.append(f"benchmark tuning on top of the product: {', '.join(env['tuning'])}")
    return "\n".join(lines)
