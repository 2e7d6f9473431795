"""`detok fid`: FID / sFID / IS / precision-recall of any image set against another set or reference statistics."""

from __future__ import annotations

import argparse
from typing import Any

from detok.cli.common import print_summary

HELP = "score any samples (.npz or image folder) against images or reference statistics: FID, sFID, IS, P / R"


def add_parser(sub) -> None:
    p = sub.add_parser("fid", help=HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description=HELP + ". INPUT1: the samples (an ADM-layout .npz, arr_0 uint8 N x H x W x 3, "
                       "or a folder of images); INPUT2: a folder or .npz of images, an ADM reference batch, or a "
                       "statistics .npz with mu / sigma (torch-fidelity, MAR).")
    p.add_argument("input1", help="samples: .npz (arr_0) or image folder")
    p.add_argument("input2", help="reference: image folder, samples / ADM .npz, or mu / sigma statistics .npz")
    p.add_argument("--feature-net", default="inception", choices=["inception", "domain"],
                   help="inception: TF-compatible FID Inception (offline weights, see README); domain: the "
                        "classifier detok trains for --data")
    p.add_argument("--data", default="", help="with --feature-net domain: the data set (shapes, fashion-mnist)")
    p.add_argument("--image-size", type=int, default=32, help="with --feature-net domain: its input side")
    p.add_argument("--batch-size", type=int, default=100, help="images per feature batch")
    p.add_argument("--no-precision-recall", action="store_true", help="skip k-NN precision / recall")
    p.add_argument("--out", default="", help="also write the scores and recipe to this JSON file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.io import write_json
    from detok.runs.fid import score_sets

    res = score_sets(args.input1, args.input2, feature_net=args.feature_net, data=args.data,
                     image_size=args.image_size, batch_size=args.batch_size,
                     precision_recall=not args.no_precision_recall)
    if args.out:
        write_json(args.out, res)
    print_summary("detok fid", res)
    return res
