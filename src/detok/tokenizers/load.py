"""Load a tokenizer from anything a user holds: a detok run / checkpoint, or a released upstream file."""

from __future__ import annotations

from pathlib import Path

from detok.config import from_dict
from detok.engine.checkpoint import Checkpoint
from detok.tokenizers.detok import DeTok, DetokConfig
from detok.tokenizers.upstream import load_upstream_tokenizer


def load_tokenizer(path: str | Path, use_ema: bool = True) -> DeTok:
    """A DeTok in eval mode with its latent statistics; EMA weights unless `use_ema=False`.

    `path` is a detok run folder (its latest checkpoint), a checkpoint folder, or an upstream
    l-DeTok `.pth` file (converted on the fly; run `detok convert` once to keep its statistics).
    """
    p = Path(path)
    if p.is_file():
        return load_upstream_tokenizer(p, use_ema=use_ema)
    ckpt = Checkpoint(p)
    if ckpt.kind != "tokenizer":
        raise ValueError(f"{ckpt.path} is a {ckpt.kind} checkpoint, not a tokenizer")
    cfg = from_dict(DetokConfig, ckpt.config.get("tokenizer", {}), prefix="tokenizer.")
    model = DeTok(cfg)
    model.load_state_dict(ckpt.module_state("model", use_ema=use_ema))
    model.checkpoint_path = str(ckpt.path)
    return model.eval()
