"""`detok convert`: turn a released upstream l-DeTok tokenizer or MAR checkpoint into a detok checkpoint.

Argument parsing only; the conversion is `detok.runs.convert.convert`.
"""

from __future__ import annotations

import argparse
from typing import Any

from detok.cli.common import print_summary

HELP = "convert a released l-DeTok tokenizer or MAR checkpoint to detok's format"


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help=HELP)
    p.add_argument("source", help="upstream checkpoint (.pth with 'model' / 'model_ema'): tokenizer or MAR")
    p.add_argument("out", help="detok run folder to write")
    p.add_argument("--raw", action="store_true", help="convert 'model' instead of 'model_ema'")
    p.add_argument("--stats", default="", help="tokenizer latent statistics (.npz/.json/.pt, or upstream stats.pkl)")
    p.add_argument("--stats-key", default="", help="entry of the stats file, e.g. detok-BB-gamm3.0-m0.7")
    p.add_argument("--tokenizer", default="", help="MAR only: the detok tokenizer run its latents come from")
    p.add_argument(
        "--rope-layout", default="upstream", choices=["upstream", "rotation"],
        help="released weights were trained with the upstream table layout; keep it to reproduce their outputs",
    )
    p.add_argument(
        "--heads", default=None, metavar="N|E,D",
        help="attention heads the checkpoint was trained with (not visible in its weights): tokenizer E,D "
             "(encoder, decoder) or one number for both, MAR one number; required unless the shapes are a "
             "size upstream releases",
    )
    p.add_argument(
        "--latent-channels", type=int, default=None, metavar="C",
        help="MAR only: latent channels it was trained on; required unless its tokens are 16 wide "
             "(16 channels, patch 1, as released)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.convert import convert

    summary = convert(
        args.source, args.out, raw=args.raw, stats=args.stats, stats_key=args.stats_key,
        tokenizer=args.tokenizer, rope_layout=args.rope_layout, heads=args.heads,
        latent_channels=args.latent_channels,
    )
    print_summary("detok convert", summary)
    return summary
