"""`detok train mllm`, `detok generate`, `detok caption`, `detok edit`: the multimodal LM's verbs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from detok.cli.common import add_config_args, family_help, flag_overrides, print_summary, run_training

GENERATE_HELP = "text-to-image with a multimodal LM run: a PNG grid, one row per prompt"

CAPTION_HELP = "describe images with a multimodal LM run"

EDIT_HELP = "edit an image from an instruction with a multimodal LM run"


def add_train_parser(what) -> None:
    """`detok train mllm` (a subcommand of `detok train`)."""
    from detok import registry
    from detok.runs.mllm import MLLMRunConfig

    m = what.add_parser("mllm", help="train the multimodal LM (text + discrete image tokens: text-to-image, "
                        "captioning, editing) on shapes")
    m.add_argument("--model", default=None, metavar="NAME",
                   help=f"multimodal LM (default {MLLMRunConfig.model}): {', '.join(registry.names('mllm'))}")
    m.add_argument("--tokenizer", default=None, help="discrete tokenizer run (ddt_* or vqvit_*)")
    m.add_argument("--out", default=None, help="run folder (= train.out_dir)")
    m.add_argument("--resume", action="store_true", help="continue exactly from the run folder's latest checkpoint")
    add_config_args(m, MLLMRunConfig, example="train.max_steps=1000 mllm.text_slot=16 mixture.edit=0.3")
    m.epilog += ("\n  mllm.<field> = ...   # any field of the model's config (below), e.g. mllm.cfg_scale=2"
                 "\n\n" + family_help("mllm"))
    m.set_defaults(func=main_train)


def main_train(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.mllm import mllm_run_config, train_mllm

    overrides = flag_overrides(args, {"model": args.model, "tokenizer": args.tokenizer, "train.out_dir": args.out})
    return run_training("detok train mllm", train_mllm, mllm_run_config(args.config, overrides), args.resume)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="multimodal LM run folder (`detok train mllm`)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the model's)")
    p.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help=GENERATE_HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p)
    p.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable)")
    p.add_argument("-n", "--num-images", type=int, default=8, help="images per prompt")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance on image tokens (default: the model's)")
    p.add_argument("--out", default=None, help="output PNG (default: RUN/generate.png)")
    p.set_defaults(func=main_generate)


def add_caption_parser(sub) -> None:
    p = sub.add_parser("caption", help=CAPTION_HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p)
    p.add_argument("images", nargs="+", help="image files (resized to the tokenizer's side)")
    p.set_defaults(func=main_caption)


def add_edit_parser(sub) -> None:
    p = sub.add_parser("edit", help=EDIT_HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p)
    p.add_argument("image", help="source image file")
    p.add_argument("--instruction", required=True, help='e.g. "make the circles red"')
    p.add_argument("-n", "--num-images", type=int, default=4, help="edited versions")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance on image tokens (default: the model's)")
    p.add_argument("--out", default=None, help="output PNG (default: RUN/edit.png)")
    p.set_defaults(func=main_edit)


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from detok.dist import pick_device
    from detok.runs.mllm import load_mllm

    run = load_mllm(args.run, use_ema=not args.raw)
    device = pick_device(args.device)
    run["model"].to(device)
    run["tokenizer"].to(device)
    return run


def main_generate(args: argparse.Namespace) -> dict[str, Any]:
    from detok.eval.mllm import save_prompt_grid
    from detok.runs.mllm import generate

    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    run = _load(args)
    images = generate(run["model"], run["vocab"], run["tokenizer"], args.prompt, args.num_images, seed=args.seed,
                      cfg_scale=args.cfg_scale, temperature=args.temperature, progress=True)
    out = Path(args.out) if args.out else run["run"] / "generate.png"
    save_prompt_grid(images, args.prompt, args.num_images, out)
    summary = {"prompts": args.prompt, "images_per_prompt": args.num_images, "grid": str(out),
               "cfg_scale": args.cfg_scale if args.cfg_scale is not None else run["model"].cfg.cfg_scale,
               "seed": args.seed}
    print_summary("detok generate", summary)
    return summary


def main_caption(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.mllm import caption, read_images

    run = _load(args)
    import torch

    images = read_images(args.images, run["tokenizer"].cfg.image_size)
    rng = torch.Generator(device=next(run["model"].parameters()).device).manual_seed(args.seed)
    captions = caption(run["model"], run["vocab"], run["tokenizer"], images, temperature=args.temperature, rng=rng)
    width = max(len(p) for p in args.images)
    print("\n".join(f"{p:<{width}}  {c}" for p, c in zip(args.images, captions)), flush=True)
    return {"captions": dict(zip(args.images, captions))}


def main_edit(args: argparse.Namespace) -> dict[str, Any]:
    from detok.eval.mllm import save_edit_grid
    from detok.runs.mllm import edit, read_images

    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    run = _load(args)
    source = read_images([args.image], run["tokenizer"].cfg.image_size)
    sources = source.expand(args.num_images, -1, -1, -1)
    results = edit(run["model"], run["vocab"], run["tokenizer"], sources, [args.instruction] * args.num_images,
                   cfg_scale=args.cfg_scale, temperature=args.temperature, seed=args.seed)
    out = Path(args.out) if args.out else run["run"] / "edit.png"
    save_edit_grid(sources, results, [args.instruction] * args.num_images, out)
    summary = {"image": args.image, "instruction": args.instruction, "edits": args.num_images, "grid": str(out),
               "seed": args.seed}
    print_summary("detok edit", summary)
    return summary
