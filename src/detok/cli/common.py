"""Helpers shared by the `detok` verbs: config resolution, run folders, grids, summaries."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from detok.config import field_help, resolve
from detok.io import write_json  # noqa: F401  (re-exported for the verbs)


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """`--config PRESET_OR_YAML` (repeatable) and free `key=value` overrides, with every key in the help."""
    parser.add_argument(
        "--config", action="append", default=[], metavar="YAML", help="preset name or YAML file (repeatable)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=10")
    rows = "\n".join(f"  {k} = {v!r}" + (f"   # {h}" if h else "") for k, v, h in field_help(cls))
    parser.epilog = (parser.epilog or "") + "\nconfig keys (defaults = the paper's setting):\n" + rows
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def resolve_config(cls: type, presets: list[str], overrides: list[str]):
    """Dataclass `cls` from presets then overrides; bad keys raise ConfigError naming the key."""
    return resolve(cls, presets, overrides)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def save_pairs_grid(images: torch.Tensor, recon: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """PNG grid of originals over reconstructions, row by row ([-1, 1] inputs)."""
    n = min(images.shape[0], nrow * 4)
    rows = []
    for i in range(0, n, nrow):
        rows += [images[i : i + nrow], recon[i : i + nrow]]
    grid = make_grid(torch.cat(rows).float().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=1, pad_value=1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, str(path))
    return Path(path)


def print_summary(title: str, data: dict[str, Any]) -> None:
    """A readable block of key: value lines (nested dicts indented)."""

    def lines(d: dict[str, Any], indent: int) -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict):
                out.append(" " * indent + f"{k}:")
                out += lines(v, indent + 2)
            elif isinstance(v, float):
                out.append(" " * indent + f"{k}: {v:.4g}")
            elif isinstance(v, list) and len(v) > 6:
                out.append(" " * indent + f"{k}: [{len(v)} items] {v[:3]} ...")
            else:
                out.append(" " * indent + f"{k}: {v}")
        return out

    bar = "=" * max(20, len(title) + 4)
    print("\n".join([bar, f"  {title}", bar, *lines(data, 2), bar]), flush=True)
