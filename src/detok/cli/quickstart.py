"""`detok quickstart`: minutes on a laptop CPU: a small l-DeTok on built-in data, then generators on its latents."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from detok import dist
from detok.cli.common import print_summary, write_json
from detok.cli.train import tokenizer_config, train_generator, train_tokenizer
from detok.config import resolve
from detok.data import build_dataset, collate
from detok.engine.tasks import GeneratorRunConfig
from detok.tokenizers.latents import write_cache
from detok.tokenizers.load import load_tokenizer

PRESETS = {"shapes": "quickstart_shapes", "fashion-mnist": "quickstart_fashion"}


def add_parser(sub) -> None:
    p = sub.add_parser("quickstart", help="train a small l-DeTok and generators on its latents, in minutes (CPU)")
    p.add_argument("--data", default="shapes", choices=sorted(PRESETS), help="built-in dataset")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--steps", type=int, default=0, help="tokenizer steps (default: the preset's)")
    p.add_argument("--generator-steps", type=int, default=0, help="steps of each generator (default: the preset's)")
    p.add_argument(
        "--generators", default="sit,mar", help="comma-separated generators to train on the latents ('' = none)"
    )
    p.add_argument("--cache-images", type=int, default=5000,
                   help="training images encoded (with their flips) for the generators (0 = all)")
    p.add_argument("--eval-samples", type=int, default=500,
                   help="samples per generator for its FID in domain-classifier features (0 = no FID)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="tokenizer run overrides")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(args.out)
    overrides = [f"train.out_dir={out / 'tokenizer'}", *args.overrides]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    cfg = tokenizer_config(None, [PRESETS[args.data]], overrides)
    tok = train_tokenizer(cfg, recon_images=256)
    rec = tok["reconstruction"]
    generators = {}
    names = [g for g in args.generators.split(",") if g]
    if names:
        cache = out / "latents"
        tokenizer = load_tokenizer(tok["run_dir"])
        train = build_dataset(cfg.data, "train")
        if 0 < args.cache_images < len(train):
            train = Subset(train, range(args.cache_images))
        write_cache(tokenizer, train, cache, torch.device("cpu"),
                    source={"tokenizer": tok["run_dir"], "data": cfg.data.name, "split": "train"},
                    batch_size=256, collate=collate)
        for name in names:
            g_over = [f"tokenizer={tok['run_dir']}", f"cache={cache}", f"train.out_dir={out / name}"]
            if args.generator_steps:
                g_over.append(f"train.max_steps={args.generator_steps}")
            g_cfg = resolve(GeneratorRunConfig, [f"quickstart_{name}"], g_over)
            res = train_generator(g_cfg)
            generators[name] = {
                "model": g_cfg.model, "seconds": res["seconds"], "steps": res["steps"],
                "parameters_m": res["parameters_m"], "final_loss": res["final"].get("loss"),
                "samples": res["samples"]["grid"], "cfg": g_cfg.sample.cfg, "run_dir": res["run_dir"],
            }
            if args.eval_samples > 0:
                generators[name].update(_fid(res["run_dir"], tokenizer, cfg.data, g_cfg.sample.cfg, args.eval_samples))
    dist.shutdown()
    grid = cfg.tokenizer.image_size // cfg.tokenizer.patch_size
    summary = {
        "data": args.data,
        "tokenizer": {
            "model": cfg.model,
            "psnr": rec["psnr"],
            "ssim": rec["ssim"],
            "seconds": tok["seconds"],
            "steps": tok["steps"],
            "img_per_s": tok["img_per_s"],
            "latent_shape": [cfg.tokenizer.latent_dim, grid, grid],
            "gamma": cfg.tokenizer.gamma,
            "mask_ratio": cfg.tokenizer.mask_ratio,
            "reconstructions": rec["grid"],
            "run_dir": tok["run_dir"],
        },
        "generators": generators,
        "total_seconds": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    print_summary(f"detok quickstart ({args.data}) -> {out / 'summary.json'}", summary)
    return summary


def _fid(run_dir: str, tokenizer, data_cfg, scale: float, n: int) -> dict[str, Any]:
    """FID of n samples at the run's guidance scale, in the domain classifier's features (trained once, cached)."""
    from detok.eval.protocol import EvalConfig, evaluate_generator_run

    t0 = time.perf_counter()
    ecfg = EvalConfig(feature_net="domain", cfg_scales=[scale], n_search=n, n_final=n, final_cfg1=False,
                      batch_size=250)
    res = evaluate_generator_run(run_dir, ecfg, tokenizer=tokenizer, data_cfg=data_cfg)
    best = res["best"]
    out = {"fid": best["fid"], "fid_samples": best["n"], "fid_features": res["recipe"]["feature_net"],
           "eval_seconds": time.perf_counter() - t0}
    for key in ("class_accuracy", "precision", "recall"):
        if key in best:
            out[key] = best[key]
    return out
