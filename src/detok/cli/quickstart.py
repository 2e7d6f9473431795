"""`detok quickstart`: minutes on a laptop CPU: a small l-DeTok on built-in data, then generators on its latents."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from detok.cli.bench import _families
from detok.cli.common import print_summary

DATA = ("fashion-mnist", "shapes")


def add_parser(sub) -> None:
    p = sub.add_parser("quickstart", help="train a small l-DeTok and generators on its latents, in minutes (CPU)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="shapes", choices=DATA, help="built-in dataset")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--steps", type=int, default=0, help="tokenizer steps (0 = the preset's)")
    p.add_argument("--generator-steps", type=int, default=0, help="steps of each generator (0 = the preset's)")
    p.add_argument("--generators", default="sit,mar", type=lambda s: _families(s) if s.strip() else [],
                   help="comma-separated generator families to train on the latents ('' = none, 'all')")
    p.add_argument("--cache-images", type=int, default=5000,
                   help="training images encoded (with their flips) for the generators (0 = all)")
    p.add_argument("--eval-samples", type=int, default=500,
                   help="samples per generator for its FID in domain-classifier features (0 = no FID)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="tokenizer run overrides, e.g. train.max_steps=50")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.quickstart import quickstart

    summary = quickstart(args.data, args.out, steps=args.steps, generator_steps=args.generator_steps,
                         generators=args.generators, cache_images=args.cache_images, eval_samples=args.eval_samples,
                         overrides=args.overrides)
    print_summary(f"detok quickstart ({args.data}) -> {Path(args.out) / 'summary.json'}", summary)
    return summary
