"""`detok train tokenizer`: train l-DeTok on the one engine (single process or torchrun + DDP)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from detok.cli.common import add_config_args, print_summary, write_json
from detok.cli.reconstruct import reconstruct
from detok.config import deep_update, from_dict, load_yaml, merge, parse_override, save_yaml, to_dict
from detok.data import build_dataset, collate
from detok.data.latents import latent_stats
from detok.engine import dist
from detok.engine.tasks import TokenizerRunConfig, TokenizerTask
from detok.engine.trainer import Trainer
from detok.losses.tokenizer_loss import TokenizerLoss
from detok.tokenizers.detok import PRESETS, DeTok
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
    loss = TokenizerLoss(cfg.loss, generator=torch.Generator().manual_seed(cfg.train.seed + 1))
    data_cfg = cfg.data
    data_cfg.image_size = cfg.tokenizer.image_size
    train_set = build_dataset(data_cfg, "train")
    spe = max(1, len(train_set) // cfg.train.global_batch_size)
    task = TokenizerTask(model, loss, disc_start_step=round(cfg.disc_start_epoch * spe), hflip=data_cfg.hflip)
    trainer = Trainer(
        task, cfg.train, cfg.optim, kind="tokenizer", config=to_dict(cfg), collate=collate,
        num_workers=data_cfg.num_workers,
    )
    run_dir = Path(cfg.train.out_dir)
    if trainer.info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")

    def on_train_end(tr: Trainer) -> None:
        ema_model = tr.ema_copy()
        mean, std = latent_stats(
            ema_model, train_set, tr.device, max_images=cfg.stats_images, collate=collate,
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


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a tokenizer (or, later, a generator)")
    what = p.add_subparsers(dest="what", required=True)
    t = what.add_parser("tokenizer", help="train l-DeTok (paper defaults: detok_bb, gamma 3, M 0.7, 200 epochs)")
    t.add_argument("--model", default=None, help=f"tokenizer preset: {', '.join(sorted(PRESETS))}")
    t.add_argument("--out", default=None, help="run folder (= train.out_dir)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the run folder's latest checkpoint")
    add_config_args(t, TokenizerRunConfig)
    t.set_defaults(func=main)


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
