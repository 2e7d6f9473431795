"""`detok sample`: class-balanced samples from a trained generator: a grid PNG and an ADM-style `.npz`."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from detok.cli.common import print_summary

HELP = "sample a trained generator: grid PNG + .npz of uint8 images (ADM layout)"


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help=HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("generator", help="generator run / checkpoint folder")
    p.add_argument("-n", "--num-images", type=int, default=50000,
                   help="samples, class-balanced: sample i has label i mod the number of classes")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the run's sample.cfg_scale)")
    p.add_argument("--cfg", type=float, default=None, dest="cfg_deprecated", help=argparse.SUPPRESS)
    p.add_argument("--steps", default=None, help="sampler steps (what they count: `detok train generator --help`); "
                   "default: the generator's paper setting")
    p.add_argument("--head-steps", default=None, help="per-token diffusion head steps (MAR, RasterAR, RandomAR)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch and process")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (batches seeded by index: any process count "
                   "gives the same images)")
    p.add_argument("--tokenizer", default=None, help="decode with this tokenizer (default: the run's)")
    p.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    p.add_argument("--out", default=None, help="output folder (default: GENERATOR/samples)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.sample import sample_run

    scale = args.cfg_scale
    if args.cfg_deprecated is not None:
        warnings.warn("detok sample --cfg is deprecated; use --cfg-scale", DeprecationWarning, stacklevel=1)
        print("[detok sample] --cfg is deprecated; use --cfg-scale", flush=True)
        scale = args.cfg_deprecated if scale is None else scale
    summary = sample_run(args.generator, num_images=args.num_images, cfg_scale=scale, steps=args.steps,
                         head_steps=args.head_steps, batch_size=args.batch_size, seed=args.seed,
                         tokenizer=args.tokenizer, use_ema=not args.raw, out=args.out, device=args.device)
    if summary:
        print_summary("detok sample", summary)
    return summary
