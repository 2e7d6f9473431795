"""`detok encode`: latent statistics and a sharded cache of posterior moments for generator training."""

from __future__ import annotations

import argparse
from typing import Any

from detok import dist
from detok.cli.common import print_summary
from detok.cli.reconstruct import data_config_for
from detok.data import build_dataset, collate
from detok.tokenizers.latents import latent_stats, write_cache
from detok.tokenizers.load import load_tokenizer, run_config


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help="cache posterior moments (+ flips) and latent statistics")
    p.add_argument("tokenizer", help="detok run / checkpoint folder, or an upstream .pth")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument("--data", default="", help="dataset name (default: the one the tokenizer trained on)")
    p.add_argument("--root", default="")
    p.add_argument("--file-list", default="")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=4096, help="images per shard file")
    p.add_argument(
        "--recompute-stats", action="store_true",
        help="compute latent statistics over this data (always done when the tokenizer has none)",
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    info = dist.init(args.device)
    tok = load_tokenizer(args.tokenizer).to(info.device)
    ckpt_cfg = run_config(args.tokenizer)
    data_cfg = data_config_for(tok, ckpt_cfg, args)
    dataset = build_dataset(data_cfg, args.split)
    has_stats = not (bool((tok.latent_mean == 0).all()) and bool((tok.latent_std == 1).all()))
    if args.recompute_stats or not has_stats:
        mean, std = latent_stats(tok, dataset, info.device, args.batch_size, args.num_workers, collate=collate)
        tok.set_stats(mean.to(info.device), std.to(info.device))
    meta = write_cache(
        tok, dataset, args.out, info.device,
        source={"tokenizer": str(args.tokenizer), "data": data_cfg.name, "split": args.split},
        batch_size=args.batch_size, shard_size=args.shard_size, num_workers=args.num_workers, collate=collate,
        progress=info.is_main,
    )
    dist.shutdown()
    summary = {k: meta[k] for k in ("count", "latent_shape", "tokenizer_fingerprint")}
    summary.update(out=args.out, shards=len(meta["shards"]), stats="recomputed" if args.recompute_stats or not has_stats
                   else "from tokenizer")
    if info.is_main:
        print_summary("detok encode", summary)
    return summary
