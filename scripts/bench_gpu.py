"""Benchmark the product's NFSD / SDS training step with a prior of Stable Diffusion 2.1-base's exact architecture.

Drives the real Trainer on the app's config with an injected prior (random SD 2.1-base weights, nothing downloaded,
or --prior-model); what is measured, the targets and the tuning: dreamnfsd.benchmarks.gpu.

Usage:
    python scripts/bench_gpu.py                       # SD 2.1-base architecture, 64x64 renders (GPU)
    python scripts/bench_gpu.py --small --steps 2     # tiny dims, CPU-friendly end-to-end check
    python scripts/bench_gpu.py --untuned             # the product exactly as dreamnfsd runs it
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# Runs from a checkout without installing the package too.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamnfsd.benchmarks.common import write_json  # noqa: E402
from dreamnfsd.benchmarks.gpu import GPUBenchConfig, run, table  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--prior-model", default=None, help="a real SD model (hub id or folder) instead of random weights")
    p.add_argument("--untuned", action="store_true", help="no benchmark tuning on top of the product (see docs)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_gpu.json"))
    p.add_argument("overrides", nargs="*", help="further config overrides, e.g. train.lambda_entropy=0")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import diffusers
    import transformers

    # Casting random models to fp16 and saving them makes both libraries warn at length; none of it applies here.
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()

    cfg = GPUBenchConfig(
        small=args.small,
        device=args.device,
        dtype=args.dtype,
        render=args.render,
        batch=args.batch,
        shading=args.shading,
        steps=args.steps,
        warmup=args.warmup,
        via_folder=args.via_folder,
        prior_model=args.prior_model,
        tuned=not args.untuned,
        overrides=args.overrides,
    )
    on_cpu = cfg.torch_device.type == "cpu"
    if on_cpu and not args.small:
        print("bench_gpu: no GPU; the full SD 2.1-base step on a CPU takes minutes (--small to check)", file=sys.stderr)
    threads = args.threads if args.threads is not None else (1 if args.small and on_cpu else 0)
    if threads > 0:  # on a shared few-core machine one thread gives steadier timings than oversubscribed ones
        torch.set_num_threads(threads)
    result = run(cfg)
    print(table(result))
    print(f"wrote {write_json(result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
