"""`detok bench tokenizer`: the tokenizer x generator table (the paper's main table) under one budget."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from detok import dist
from detok.cli.common import print_summary, resolve_config, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks of tokenizers: the tokenizer x generator table")
    what = p.add_subparsers(dest="what", required=True)
    t = what.add_parser(
        "tokenizer",
        help="train each generator on each tokenizer's latents under one budget, evaluate, write the table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Each TOKENIZER is a detok run / checkpoint folder, an upstream .pth, or an external autoencoder\n"
            "(e.g. sd-vae:/path/to/diffusers-folder, mar-kl16:/path/kl16.ckpt; these need --data).\n"
            "Rows accumulate in OUT/table.{json,md,png}; finished cells are skipped, unfinished ones resume.\n"
            "Generator recipes: configs/quickstart_<generator>.yaml; evaluation: configs/eval_small.yaml\n"
            "for shapes / fashion-mnist (domain-classifier FID), the ImageNet protocol otherwise."
        ),
    )
    t.add_argument("tokenizers", nargs="+", metavar="TOKENIZER")
    t.add_argument("--generators", default="sit,mar", help="comma list of dit, sit, lightningdit, mar, rasterar, "
                   "randomar (or 'all')")
    t.add_argument("--budget", type=int, default=250, help="training steps of every generator (the same for all)")
    t.add_argument("--batch-size", type=int, default=0, help="global batch of every generator (0 = the recipe's)")
    t.add_argument("--name", action="append", default=[], help="row name per tokenizer (default: folder name)")
    t.add_argument("--data", default="", help="dataset for external tokenizers (detok runs use their own)")
    t.add_argument("--root", default="", help="dataset folder for --data")
    t.add_argument("--seed", type=int, default=0, help="generator training seed")
    t.add_argument("--cache-images", type=int, default=0,
                   help="encode only the first N train images for the generators (0 = the whole split)")
    t.add_argument("--eval-config", action="append", default=[], metavar="YAML",
                   help="evaluation preset (default: eval_small for shapes / fashion-mnist)")
    t.add_argument("--eval", dest="eval_overrides", action="append", default=[], metavar="key=value",
                   help="evaluation override, e.g. --eval n_final=2000 (repeatable)")
    t.add_argument("--set", dest="gen_overrides", action="append", default=[], metavar="key=value",
                   help="override for every generator run, e.g. --set optim.lr=5e-4 (repeatable)")
    t.add_argument("--out", default="runs/bench", help="bench folder (table and one folder per cell)")
    t.add_argument("--device", default="auto")
    t.set_defaults(func=main)


def row_name(spec: str) -> str:
    """A folder-safe row name: the run folder's name, or the external spec's kind."""
    p = Path(spec)
    name = spec.split(":", 1)[0] if ":" in spec and not p.exists() else (p.name or spec)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.config import from_dict
    from detok.data.build import DataConfig
    from detok.eval.protocol import SMALL_DATASETS, EvalConfig, tokenizer_data_config
    from detok.eval.table import GENERATORS, BenchConfig, prepare_latents, run_cell, write_table
    from detok.tokenizers.load import load_tokenizer

    gens = list(GENERATORS) if args.generators == "all" else [g for g in args.generators.split(",") if g]
    unknown = [g for g in gens if g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}; choose from {', '.join(GENERATORS)}")
    if args.name and len(args.name) != len(args.tokenizers):
        raise ValueError(f"{len(args.name)} --name for {len(args.tokenizers)} tokenizers")
    info = dist.init(args.device)
    out = Path(args.out)
    t0 = time.perf_counter()
    cells = []
    try:
        for i, spec in enumerate(args.tokenizers):
            name = args.name[i] if args.name else row_name(spec)
            fallback = None
            if args.data:
                fallback = from_dict(DataConfig, {"name": args.data, "root": args.root, "num_workers": 0},
                                     prefix="data.")
            tok = load_tokenizer(spec).to(info.device)
            data_cfg = tokenizer_data_config(spec, fallback)
            if fallback is not None:  # an explicit --data wins, at the tokenizer's image size
                data_cfg = fallback
                data_cfg.image_size = int(getattr(getattr(tok, "cfg", None), "image_size", data_cfg.image_size))
            presets = args.eval_config or (["eval_small"] if data_cfg.name in SMALL_DATASETS else [])
            ecfg = resolve_config(EvalConfig, presets, args.eval_overrides)
            bench = BenchConfig(generators=gens, steps=args.budget, batch_size=args.batch_size, seed=args.seed,
                                cache_images=args.cache_images, overrides=args.gen_overrides, eval=ecfg)
            cache = prepare_latents(tok, spec, data_cfg, out / name, info.device, progress=info.is_main,
                                    max_images=bench.cache_images)
            for g in gens:
                cell = run_cell(tok, spec, cache, g, out / name / g, bench, data_cfg, row=name)
                cells.append(cell)
                if info.is_main:
                    print(f"[detok bench] {name} x {g}: FID {cell['fid']:.3f} at cfg {cell['cfg']:g} "
                          f"({cell['feature_net']}, {cell['n']} samples)", flush=True)
        files = write_table(out) if info.is_main else {}
    finally:
        dist.shutdown()
    summary = {"cells": {f"{c['tokenizer_name']} x {c['generator']}": f"FID {c['fid']:.3f} (cfg {c['cfg']:g})"
                         for c in cells},
               "table": {k: str(v) for k, v in files.items()}, "seconds": time.perf_counter() - t0}
    if info.is_main:
        write_json(out / "bench_last.json", summary)
        print((out / "table.md").read_text())
        print_summary("detok bench tokenizer", summary)
    return summary
