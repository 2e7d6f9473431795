"""`detok sample`: class-balanced samples from a trained generator: a grid PNG and an ADM-style `.npz`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from detok import dist
from detok.cli.common import print_summary, write_json
from detok.eval.recon import to_uint8
from detok.generators.load import load_generator
from detok.generators.sampling import balanced_labels, rank_batches, sample_images
from detok.tokenizers.load import load_tokenizer


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a trained generator: grid PNG + .npz of uint8 images (ADM layout)")
    p.add_argument("generator", help="generator run / checkpoint folder")
    p.add_argument("-n", "--num-images", type=int, default=50000, help="samples (class-balanced: label i % classes)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's sample.cfg)")
    p.add_argument("--steps", default=None, help="sampler steps (default: the generator's paper setting)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="decode with this tokenizer (default: the run's)")
    p.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    p.add_argument("--out", default=None, help="output folder (default: GENERATOR/samples)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    info = dist.init(args.device)
    gen, cfg = load_generator(args.generator, use_ema=not args.raw)
    tok = load_tokenizer(args.tokenizer or cfg["tokenizer"])
    gen.to(info.device)
    tok.to(info.device)
    scale = args.cfg if args.cfg is not None else float(cfg.get("sample", {}).get("cfg", 1.0))
    out = Path(args.out or Path(args.generator) / "samples")
    out.mkdir(parents=True, exist_ok=True)
    labels = balanced_labels(args.num_images, cfg["num_classes"])
    t0 = time.perf_counter()
    for start, end in rank_batches(args.num_images, args.batch_size, info.rank, info.world):
        images = sample_images(gen, tok, labels[start:end], cfg=scale, steps=args.steps, seed=args.seed,
                               batch_size=args.batch_size, first_index=start)
        np.savez(out / f".part-{start:08d}.npz", images=to_uint8(images).permute(0, 2, 3, 1).numpy(),
                 labels=labels[start:end].numpy())
        if info.is_main:
            print(f"[detok sample] {end}/{args.num_images}", flush=True)
    dist.barrier()
    summary: dict[str, Any] = {}
    if info.is_main:
        parts = sorted(out.glob(".part-*.npz"))
        arrays = [np.load(p) for p in parts]
        images_u8 = np.concatenate([a["images"] for a in arrays])  # (N, H, W, 3) uint8, ADM's arr_0 layout
        all_labels = np.concatenate([a["labels"] for a in arrays])
        np.savez(out / "samples.npz", arr_0=images_u8, arr_1=all_labels)
        for p in parts:
            p.unlink()
        grid = torch.from_numpy(images_u8[:64]).permute(0, 3, 1, 2).float() / 255
        save_image(make_grid(grid, nrow=8, padding=1, pad_value=1.0), str(out / "samples.png"))
        summary = {
            "generator": str(args.generator), "num_images": int(images_u8.shape[0]), "cfg": scale,
            "steps": args.steps or "default", "seed": args.seed, "weights": "raw" if args.raw else "ema",
            "npz": str(out / "samples.npz"), "grid": str(out / "samples.png"),
            "seconds": time.perf_counter() - t0, "processes": info.world,
        }
        write_json(out / "sample.json", summary)
        print_summary("detok sample", summary)
    dist.shutdown()
    return summary
