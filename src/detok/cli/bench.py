"""`detok bench tokenizer`: the tokenizer x generator table (the paper's main table) under one budget."""

from __future__ import annotations

import argparse
from typing import Any

from detok.cli.common import print_summary

HELP = "benchmarks of tokenizers: the tokenizer x generator table"


def _families(text: str) -> list[str]:
    """argparse type: a comma list of registered generator families (or 'all'), checked when parsing."""
    from detok.config import ConfigError
    from detok.runs.config import generator_families

    try:
        return generator_families(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_parser(sub) -> None:
    from detok import registry

    fams = [f.name for f in registry.families("generator")]
    p = sub.add_parser("bench", help=HELP)
    what = p.add_subparsers(dest="what", required=True)
    t = what.add_parser(
        "tokenizer",
        help="train each generator on each tokenizer's latents under one budget, evaluate, write the table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Each TOKENIZER is a detok run / checkpoint folder, an upstream .pth, or an external autoencoder\n"
            "(e.g. sd_vae:/path/to/diffusers-folder, mar_kl16:/path/kl16.ckpt; these need --data).\n"
            "A discrete tokenizer (a DDT run) is a row too: ddt_ar trains on its token ids. A pairing of a family\n"
            "with the other kind of tokens is skipped and marked n/a (discrete tokens / continuous latents).\n"
            "Rows accumulate in OUT/table.{json,md,png}; finished cells are skipped, unfinished ones resume.\n"
            "Generator recipes: each family's small CPU recipe (registry; configs/quickstart_<family>.yaml);\n"
            "evaluation: configs/eval_small.yaml for shapes / fashion-mnist (domain-classifier FID), the\n"
            "ImageNet protocol otherwise."
        ),
    )
    t.add_argument("tokenizers", nargs="+", metavar="TOKENIZER")
    t.add_argument("--generators", default="sit,mar", type=_families,
                   help=f"comma list of generator families: {', '.join(fams)} (or 'all'); default sit,mar")
    t.add_argument("--budget", type=int, default=250, help="training steps of every generator (default 250)")
    t.add_argument("--batch-size", type=int, default=0, help="global batch of every generator (0 = the recipe's)")
    t.add_argument("--name", action="append", default=[], help="row name per tokenizer (default: folder name)")
    t.add_argument("--data", default="", help="dataset for external tokenizers (detok runs use their own)")
    t.add_argument("--root", default="", help="dataset folder for --data")
    t.add_argument("--seed", type=int, default=0, help="generator training seed (default 0)")
    t.add_argument("--cache-images", type=int, default=0,
                   help="encode only the first N train images for the generators (0 = the whole split)")
    t.add_argument("--eval-config", action="append", default=[], metavar="YAML",
                   help="evaluation preset (default: eval_small for shapes / fashion-mnist)")
    t.add_argument("--eval", dest="eval_overrides", action="append", default=[], metavar="key=value",
                   help="evaluation override, e.g. --eval n_final=2000 (repeatable)")
    t.add_argument("--set", dest="gen_overrides", action="append", default=[], metavar="key=value",
                   help="override for every generator run, e.g. --set optim.lr=5e-4 (repeatable)")
    t.add_argument("--out", default="runs/bench", help="bench folder (table and one folder per cell)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    t.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from detok import dist
    from detok.eval.table import cell_text
    from detok.runs.bench import bench_tokenizers

    summary = bench_tokenizers(
        args.tokenizers, generators=args.generators, budget=args.budget, batch_size=args.batch_size,
        names=args.name, data=args.data, root=args.root, seed=args.seed, cache_images=args.cache_images,
        eval_presets=args.eval_config, eval_overrides=args.eval_overrides, generator_overrides=args.gen_overrides,
        out=args.out, device=args.device,
    )
    if dist.rank_world()[0] == 0:
        print(Path(summary["table"]["md"]).read_text())
        print_summary("detok bench tokenizer", {
            "cells": {f"{c['tokenizer_name']} x {c['generator']}": cell_text(c) for c in summary["cells"]},
            "table": summary["table"], "seconds": summary["seconds"]})
    return summary
