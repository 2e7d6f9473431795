"""`detok train tokenizer|generator`: argparse -> run config -> `detok.runs.train_*`."""

from __future__ import annotations

import argparse
from typing import Any

from detok.cli.common import add_config_args, family_help, flag_overrides, run_training

HELP = "train a tokenizer, a generator or the multimodal LM"


def add_parser(sub) -> None:
    from detok import registry
    from detok.runs.config import GeneratorRunConfig, TokenizerRunConfig
    from detok.tokenizers.ddt import PRESETS as DDT_PRESETS
    from detok.tokenizers.detok import PRESETS
    from detok.tokenizers.spatial_vq import PRESETS as VQ_PRESETS

    p = sub.add_parser("train", help=HELP)
    what = p.add_subparsers(dest="what", required=True)
    t = what.add_parser("tokenizer", help="train l-DeTok (paper defaults: detok_bb, gamma 3, M 0.7, 200 epochs), "
                        "a DDT tokenizer (ddt_*) or the spatial VQ baseline (vqvit_*)")
    t.add_argument("--model", default=None, metavar="NAME",
                   help=f"tokenizer preset (default {TokenizerRunConfig.model}): {', '.join(sorted(PRESETS))}; "
                        f"discrete tokens: {', '.join(sorted(DDT_PRESETS))}, {', '.join(sorted(VQ_PRESETS))} "
                        "(their tokenizer.* keys are DDTConfig's / SpatialVQConfig's, e.g. tokenizer.num_tokens=64 "
                        "tokenizer.schedule=piecewise tokenizer.quantizer.kind=fsq; recipe: --config quickstart_ddt)")
    t.add_argument("--out", default=None, help="run folder (= train.out_dir)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the run folder's latest checkpoint")
    add_config_args(t, TokenizerRunConfig, example="train.max_steps=1000 tokenizer.gamma=3.0")
    t.epilog += "\n\n" + family_help("tokenizer")
    t.set_defaults(func=main)
    g = what.add_parser("generator", help="train a generator on a tokenizer's latents (cached or online)")
    g.add_argument("--model", default=None, metavar="NAME",
                   help=f"generator (default {GeneratorRunConfig.model}): {', '.join(registry.names('generator'))}")
    g.add_argument("--tokenizer", default=None, help="tokenizer run / checkpoint folder")
    g.add_argument("--cache", default=None, help="latent cache from `detok encode` (default: encode on the fly)")
    g.add_argument("--out", default=None, help="run folder (= train.out_dir)")
    g.add_argument("--resume", action="store_true", help="continue exactly from the run folder's latest checkpoint")
    add_config_args(g, GeneratorRunConfig, example="train.max_steps=1000 generator.width=256")
    g.epilog += ("\n  generator.<field> = ...   # any field of the model's config (below), e.g. generator.depth=6"
                 "\n\n" + family_help("generator"))
    g.set_defaults(func=main_generator)
    from detok.cli.mllm import add_train_parser

    add_train_parser(what)


def main_generator(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.config import generator_config
    from detok.runs.train import train_generator

    overrides = flag_overrides(args, {"model": args.model, "tokenizer": args.tokenizer, "cache": args.cache,
                                      "train.out_dir": args.out})  # fmt: skip
    return run_training("detok train generator", train_generator, generator_config(args.config, overrides),
                        args.resume)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.config import tokenizer_config
    from detok.runs.train import train_tokenizer

    overrides = flag_overrides(args, {"train.out_dir": args.out})
    return run_training("detok train tokenizer", train_tokenizer, tokenizer_config(args.model, args.config, overrides),
                        args.resume)
