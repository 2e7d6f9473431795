"""`detok quickstart`: minutes on a laptop CPU: train a small l-DeTok on built-in data, reconstruct, summarise."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from detok.cli.common import print_summary, write_json
from detok.cli.train import tokenizer_config, train_tokenizer
from detok.engine import dist

PRESETS = {"shapes": "quickstart_shapes", "fashion-mnist": "quickstart_fashion"}


def add_parser(sub) -> None:
    p = sub.add_parser("quickstart", help="train a small l-DeTok on built-in data in minutes (CPU)")
    p.add_argument("--data", default="shapes", choices=sorted(PRESETS), help="built-in dataset")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--steps", type=int, default=0, help="tokenizer steps (default: the preset's)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="tokenizer run overrides")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(args.out)
    overrides = [f"train.out_dir={out / 'tokenizer'}", *args.overrides]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    cfg = tokenizer_config(None, [PRESETS[args.data]], overrides)
    tok = train_tokenizer(cfg, recon_images=256)
    dist.shutdown()
    rec = tok["reconstruction"]
    grid = cfg.tokenizer.image_size // cfg.tokenizer.patch_size
    summary = {
        "data": args.data,
        "tokenizer": {
            "model": cfg.model,
            "psnr": rec["psnr"],
            "ssim": rec["ssim"],
            "seconds": tok["seconds"],
            "steps": tok["steps"],
            "img_per_s": tok["img_per_s"],
            "latent_shape": [cfg.tokenizer.latent_dim, grid, grid],
            "gamma": cfg.tokenizer.gamma,
            "mask_ratio": cfg.tokenizer.mask_ratio,
            "reconstructions": rec["grid"],
            "run_dir": tok["run_dir"],
        },
        "total_seconds": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    print_summary(f"detok quickstart ({args.data}) -> {out / 'summary.json'}", summary)
    return summary
