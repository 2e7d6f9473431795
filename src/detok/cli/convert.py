"""`detok convert`: turn a released upstream l-DeTok checkpoint into a detok checkpoint."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detok.cli.common import print_summary
from detok.config import to_dict
from detok.engine.tasks import TokenizerRunConfig
from detok.io import save_checkpoint
from detok.tokenizers.upstream import load_upstream_tokenizer


class _NumpyOnly(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays only: a stats pickle may not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"stats file may only hold numpy arrays; refusing {module}.{name}")


def read_stats(path: str | Path, key: str = "", channels: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) from .npz / .json / .pt / upstream stats.pkl (first `channels` = posterior means)."""
    p = Path(path)
    if p.suffix == ".npz":
        raw: Any = dict(np.load(p))
    elif p.suffix == ".json":
        raw = json.loads(p.read_text())
    elif p.suffix in (".pt", ".pth"):
        raw = torch.load(p, map_location="cpu", weights_only=True)
    else:
        with open(p, "rb") as f:
            raw = _NumpyOnly(f).load()
    if key:
        if key not in raw:
            raise KeyError(f"{p} has no key {key!r}; it has {sorted(raw)}")
        raw = raw[key]
    names = {k.lower(): k for k in raw} if isinstance(raw, dict) else {}
    mean_k = next((names[k] for k in ("mean", "mu", "channel_mean", "latent_mean") if k in names), None)
    std_k = next((names[k] for k in ("std", "sigma", "channel_std", "latent_std") if k in names), None)
    if mean_k is None or std_k is None:
        raise KeyError(f"{p}{'[' + key + ']' if key else ''}: expected 'mean' and 'std' entries, found {sorted(names)}")
    mean = torch.as_tensor(np.asarray(raw[mean_k]), dtype=torch.float32).flatten()[:channels]
    std = torch.as_tensor(np.asarray(raw[std_k]), dtype=torch.float32).flatten()[:channels]
    return mean, std


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a released l-DeTok tokenizer or MAR checkpoint to detok's format")
    p.add_argument("source", help="upstream checkpoint (.pth with 'model' / 'model_ema'): tokenizer or MAR")
    p.add_argument("out", help="detok run folder to write")
    p.add_argument("--raw", action="store_true", help="convert 'model' instead of 'model_ema'")
    p.add_argument("--stats", default="", help="latent statistics (.npz/.json/.pt, or upstream stats.pkl)")
    p.add_argument("--stats-key", default="", help="entry in the stats file, e.g. detok-BB-gamm3.0-m0.7")
    p.add_argument("--tokenizer", default="", help="MAR only: the detok tokenizer run its latents come from")
    p.add_argument(
        "--rope-layout", default="upstream", choices=["upstream", "rotation"],
        help="released weights were trained with the upstream table layout; keep it to reproduce their outputs",
    )
    p.set_defaults(func=main)


def convert_mar(args: argparse.Namespace, ckpt: dict) -> dict[str, Any]:
    """An upstream MAR (l-DeTok release or LTH14/mar) -> a detok generator checkpoint."""
    from detok.generators.upstream_mar import load_upstream_mar

    model = load_upstream_mar(ckpt, use_ema=not args.raw)
    cfg = to_dict(model.cfg)
    latent_shape, num_classes = cfg.pop("latent_shape"), cfg.pop("num_classes")
    name = {768: "mar_b", 1024: "mar_l", 1280: "mar_h"}.get(model.cfg.width, "mar_tiny")
    config = {
        "model": name, "generator": cfg, "latent_shape": latent_shape, "num_classes": num_classes,
        "tokenizer": args.tokenizer, "converted_from": str(args.source), "sample": {"cfg": 1.0},
    }
    path = save_checkpoint(
        args.out, 0, kind="generator", weights={"model": model.state_dict()},
        ema={"model": {n: p for n, p in model.named_parameters()}}, config=config, keep=0,
    )
    summary = {
        "source": str(args.source), "checkpoint": str(path), "kind": "generator", "model": name,
        "weights": "raw" if args.raw else "ema", "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokenizer": args.tokenizer or "none: pass --tokenizer to `detok sample`",
    }
    print_summary("detok convert", summary)
    return summary


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.generators.upstream_mar import load_checkpoint

    ckpt = load_checkpoint(args.source)
    if any(k.startswith("diffloss.") for k in ckpt.get("model", {})):
        return convert_mar(args, ckpt)
    model = load_upstream_tokenizer(ckpt, use_ema=not args.raw)
    if args.rope_layout != "upstream":
        model.set_rope_layout(args.rope_layout)
    if args.stats:
        model.set_stats(*read_stats(args.stats, args.stats_key, model.latent_channels))
    cfg = TokenizerRunConfig(tokenizer=model.cfg)
    cfg.model = "converted"
    path = save_checkpoint(
        args.out, 0, kind="tokenizer",
        weights={"model": model.state_dict()},
        ema={"model": {n: p for n, p in model.named_parameters()}},
        config={**to_dict(cfg), "converted_from": str(args.source)},
        keep=0,
    )
    summary = {
        "source": str(args.source), "checkpoint": str(path), "weights": "raw" if args.raw else "ema",
        "rope_layout": args.rope_layout, "stats": args.stats or "none (run `detok encode` to compute them)",
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "encoder_size": model.cfg.encoder_size, "decoder_size": model.cfg.decoder_size,
    }
    print_summary("detok convert", summary)
    return summary
