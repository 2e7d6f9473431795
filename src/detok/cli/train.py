"""`detok train tokenizer`: train l-DeTok on the one engine (single process or torchrun + DDP)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from detok import dist
from detok.cli.common import add_config_args, print_summary, write_json
from detok.cli.reconstruct import reconstruct
from detok.config import deep_update, from_dict, load_yaml, merge, parse_override, resolve, save_yaml, to_dict
from detok.data import build_dataset, collate
from detok.engine.tasks import GeneratorRunConfig, GeneratorTask, TokenizerRunConfig, TokenizerTask
from detok.engine.trainer import Trainer
from detok.eval.probe import GenerationProbe
from detok.generators.load import build_generator
from detok.generators.sampling import grid_labels, sample_images
from detok.losses.tokenizer_loss import TokenizerLoss
from detok.tokenizers.base import Tokenizer
from detok.tokenizers.detok import PRESETS, DeTok
from detok.tokenizers.latents import LatentCache, latent_stats
from detok.tokenizers.load import load_tokenizer


def tokenizer_config(model: str | None, presets: list[str], overrides: list[str]) -> TokenizerRunConfig:
    """Defaults, then the tokenizer preset `model`, then YAML presets, then `key=value` overrides."""
    from_yaml: dict[str, Any] = {}
    for preset in presets:
        deep_update(from_yaml, load_yaml(preset))
    name = model or from_yaml.get("model") or TokenizerRunConfig.model
    if name not in PRESETS:
        raise KeyError(f"unknown tokenizer {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    data: dict[str, Any] = to_dict(TokenizerRunConfig())
    deep_update(data["tokenizer"], dict(PRESETS[name]))
    deep_update(data, from_yaml)
    data["model"] = name
    for text in overrides:
        path, value = parse_override(text)
        merge(data, path, value)
    return from_dict(TokenizerRunConfig, data)


def train_tokenizer(cfg: TokenizerRunConfig, resume: bool = False, recon_images: int = 256) -> dict[str, Any]:
    """Train, compute latent statistics (EMA weights), save, reconstruct held-out images; returns the summary."""
    torch.manual_seed(cfg.train.seed)  # initial weights (incl. random-init perceptual nets) follow the seed
    model = DeTok(cfg.tokenizer)
    if cfg.init_from:
        src = load_tokenizer(cfg.init_from)
        model.load_state_dict(src.state_dict())
    if cfg.decoder_only:
        model.freeze_encoder()
    loss = TokenizerLoss(cfg.loss, rng=torch.Generator().manual_seed(cfg.train.seed + 1))
    data_cfg = cfg.data
    data_cfg.image_size = cfg.tokenizer.image_size
    train_set = build_dataset(data_cfg, "train")
    spe = max(1, len(train_set) // cfg.train.global_batch_size)
    task = TokenizerTask(model, loss, disc_start_step=round(cfg.disc_start_epoch * spe), hflip=data_cfg.hflip)
    run_dir = Path(cfg.train.out_dir)
    hooks = []
    if cfg.probe.every_epochs > 0:
        hooks.append(GenerationProbe(cfg.probe, data_cfg, train_set, run_dir, max(1, round(cfg.probe.every_epochs * spe)),
                                     stats_of=cfg.stats_of))
    trainer = Trainer(
        task, cfg.train, cfg.optim, kind="tokenizer", config=to_dict(cfg), collate=collate,
        num_workers=data_cfg.num_workers, hooks=hooks,
    )
    if trainer.info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")

    def on_train_end(tr: Trainer) -> None:
        ema_model = tr.ema_copy()
        mean, std = latent_stats(
            ema_model, train_set, tr.device, max_images=cfg.stats_images, collate=collate, of=cfg.stats_of,
            progress=cfg.train.progress and tr.info.is_main,
        )
        model.set_stats(mean, std)

    task.on_train_end = on_train_end
    summary = trainer.fit(train_set, resume=resume)
    summary["run_dir"] = str(run_dir)
    if trainer.info.is_main and recon_images:
        tok = load_tokenizer(run_dir)
        val = build_dataset(data_cfg, "val")
        summary["reconstruction"] = reconstruct(
            tok, val, run_dir, trainer.device, recon_images, progress=cfg.train.progress
        )
        summary["reconstruction"]["weights"] = "ema"
        write_json(run_dir / "summary.json", summary)
    return summary


def train_generator(
    cfg: GeneratorRunConfig, resume: bool = False, tokenizer: Tokenizer | None = None
) -> dict[str, Any]:
    """Train a generator on a frozen tokenizer's latents (cached or online); sample a grid at the end.

    `tokenizer` replaces loading `cfg.tokenizer` (which is still recorded in the run's config): used by
    in-training probes whose tokenizer lives in memory.
    """
    if not cfg.tokenizer:
        raise ValueError("train generator needs tokenizer=RUN_OR_CHECKPOINT (the tokenizer whose latents it models)")
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    if bool((tok.latent_std == 1).all()) and bool((tok.latent_mean == 0).all()):
        raise ValueError(
            f"tokenizer {cfg.tokenizer} has no latent statistics; compute them with "
            f"`detok encode {cfg.tokenizer} --out CACHE --recompute-stats` and train on that cache"
        )
    if cfg.cache:
        dataset = LatentCache(cfg.cache)
        dataset.check(tok)  # refuses a cache made by another tokenizer / other statistics
        num_classes, collate_fn, workers = dataset.num_classes, None, 0
    else:
        cfg.data.image_size = tok.cfg.image_size
        dataset = build_dataset(cfg.data, "train")
        num_classes, collate_fn, workers = dataset.num_classes, collate, cfg.data.num_workers
    torch.manual_seed(cfg.train.seed)
    gen = build_generator(cfg.model, tok.latent_shape, num_classes, cfg.generator)
    task = GeneratorTask(gen, tok, use_cache=bool(cfg.cache), hflip=cfg.data.hflip)
    config = {**to_dict(cfg), "latent_shape": list(tok.latent_shape), "num_classes": num_classes}
    trainer = Trainer(task, cfg.train, cfg.optim, kind="generator", config=config, collate=collate_fn,
                      num_workers=workers)
    run_dir = Path(cfg.train.out_dir)
    if trainer.info.is_main:
        save_yaml(config, run_dir / "config.yaml")
    summary = trainer.fit(dataset, resume=resume)
    summary.update(run_dir=str(run_dir), model=cfg.model,
                   parameters_m=sum(p.numel() for p in gen.parameters()) / 1e6)
    if trainer.info.is_main and cfg.sample.per_class > 0:
        ema_gen = trainer.ema_copy()
        labels = grid_labels(num_classes, cfg.sample.per_class)
        images = sample_images(ema_gen, tok.to(trainer.device), labels, cfg=cfg.sample.cfg,
                               steps=cfg.sample.steps or None, seed=cfg.sample.seed)
        grid = run_dir / "samples.png"
        save_image(make_grid(images * 0.5 + 0.5, nrow=cfg.sample.per_class, padding=1, pad_value=1.0), str(grid))
        summary["samples"] = {"grid": str(grid), "cfg": cfg.sample.cfg, "steps": cfg.sample.steps or "default",
                              "weights": "ema", "rows": "one class per row"}
        write_json(run_dir / "summary.json", summary)
    return summary


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a tokenizer or a generator")
    what = p.add_subparsers(dest="what", required=True)
    t = what.add_parser("tokenizer", help="train l-DeTok (paper defaults: detok_bb, gamma 3, M 0.7, 200 epochs)")
    t.add_argument("--model", default=None, help=f"tokenizer preset: {', '.join(sorted(PRESETS))}")
    t.add_argument("--out", default=None, help="run folder (= train.out_dir)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the run folder's latest checkpoint")
    add_config_args(t, TokenizerRunConfig)
    t.set_defaults(func=main)
    g = what.add_parser("generator", help="train a generator on a tokenizer's latents (cached or online)")
    g.add_argument("--model", default=None, help="generator name (detok's registry), e.g. sit_b, mar_b, dit_tiny")
    g.add_argument("--tokenizer", default=None, help="tokenizer run / checkpoint folder")
    g.add_argument("--cache", default=None, help="latent cache from `detok encode` (default: encode on the fly)")
    g.add_argument("--out", default=None, help="run folder (= train.out_dir)")
    g.add_argument("--resume", action="store_true", help="continue exactly from the run folder's latest checkpoint")
    add_config_args(g, GeneratorRunConfig)
    g.set_defaults(func=main_generator)


def main_generator(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("tokenizer", args.tokenizer), ("cache", args.cache),
                       ("train.out_dir", args.out)):
        if value:
            overrides.append(f"{key}={value}")
    cfg = resolve(GeneratorRunConfig, args.config, overrides)
    try:
        summary = train_generator(cfg, resume=args.resume)
    finally:
        dist.shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary("detok train generator", summary)
    return summary


def main(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    cfg = tokenizer_config(args.model, args.config, overrides)
    try:
        summary = train_tokenizer(cfg, resume=args.resume)
    finally:
        dist.shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary("detok train tokenizer", summary)
    return summary
