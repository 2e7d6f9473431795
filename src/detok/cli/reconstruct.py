"""`detok reconstruct`: reconstruct held-out images with a tokenizer; grid PNG, PSNR and SSIM."""

from __future__ import annotations

import argparse
from typing import Any

from detok.cli.common import print_summary

HELP = "reconstruct images: grid PNG, PSNR, SSIM"


def add_parser(sub) -> None:
    p = sub.add_parser("reconstruct", help=HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("tokenizer", help="detok run / checkpoint folder, an upstream .pth, or an external spec")
    p.add_argument("--data", default="", help="dataset name (default: the one the tokenizer trained on)")
    p.add_argument("--root", default="", help="dataset folder (imagefolder / filelist / fashion-mnist)")
    p.add_argument("--file-list", default="", help="file list for --data filelist")
    p.add_argument("--split", default="val", choices=["train", "val"], help="data split")
    p.add_argument("-n", "--num-images", type=int, default=256, help="images to reconstruct (0 = all)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--raw", action="store_true", help="use raw weights instead of EMA")
    p.add_argument("--out", default="", help="output folder (default: TOKENIZER/reconstruct)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.reconstruct import reconstruct_run

    res = reconstruct_run(args.tokenizer, data=args.data, root=args.root, file_list=args.file_list,
                          split=args.split, num_images=args.num_images, batch_size=args.batch_size,
                          use_ema=not args.raw, out=args.out, device=args.device)
    print_summary("detok reconstruct", res)
    return res
