"""Build generators by registry name and load trained ones from their checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detok.config import ConfigError
from detok.generators.base import Generator
from detok.io import Checkpoint
from detok.registry import get


def build_generator(
    name: str, latent_shape: tuple[int, int, int], num_classes: int, overrides: dict[str, Any] | None = None
) -> Generator:
    """Registry generator `name` for latents of `latent_shape` and `num_classes` classes, with config overrides."""
    builder = get("generator", name)
    try:
        return builder(latent_shape=tuple(latent_shape), num_classes=num_classes, **(overrides or {}))
    except TypeError as e:  # an unknown field of the generator's config dataclass
        raise ConfigError(f"generator {name}: {e}") from e


def load_generator(path: str | Path, use_ema: bool = True) -> tuple[Generator, dict[str, Any]]:
    """(generator in eval mode with EMA weights unless `use_ema=False`, its run config) from a run / checkpoint."""
    ckpt = Checkpoint(path)
    if ckpt.kind != "generator":
        raise ValueError(f"{ckpt.path} is a {ckpt.kind} checkpoint, not a generator")
    cfg = ckpt.config
    gen = build_generator(cfg["model"], cfg["latent_shape"], cfg["num_classes"], cfg.get("generator", {}))
    gen.load_state_dict(ckpt.module_state("model", use_ema=use_ema))
    gen.checkpoint_path = str(ckpt.path)
    return gen.eval(), cfg
