"""`detok encode`: latent statistics and a sharded cache of posterior moments for generator training."""

from __future__ import annotations

import argparse
from typing import Any

from detok.cli.common import print_summary

HELP = "cache posterior moments (+ flips) and latent statistics"


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help=HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("tokenizer", help="detok run / checkpoint folder, an upstream .pth, or an external spec")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument("--data", default="", help="dataset name (default: the one the tokenizer trained on)")
    p.add_argument("--root", default="", help="dataset folder (imagefolder / filelist / fashion-mnist)")
    p.add_argument("--file-list", default="", help="file list for --data filelist (`relative/path label` lines)")
    p.add_argument("--split", default="train", choices=["train", "val"], help="data split to encode")
    p.add_argument("--bad-images", default="", choices=["", "skip", "fail"],
                   help="unreadable images: skip them (named in the summary and meta.json) or fail; "
                   "default: the tokenizer run's data.bad_images")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--shard-size", type=int, default=4096, help="images per shard file")
    p.add_argument("--recompute-stats", action="store_true",
                   help="compute latent statistics over this data (always done when the tokenizer has none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok import dist
    from detok.runs.encode import encode

    summary = encode(args.tokenizer, args.out, data=args.data, root=args.root, file_list=args.file_list,
                     split=args.split, bad_images=args.bad_images, batch_size=args.batch_size, num_workers=args.num_workers,
                     shard_size=args.shard_size, recompute_stats=args.recompute_stats, device=args.device)
    if dist.rank_world()[0] == 0:
        print_summary("detok encode", summary)
    return summary
