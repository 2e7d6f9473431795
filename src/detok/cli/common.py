"""Helpers shared by the `detok` verbs: config options in --help, the registry's families, summaries."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import textwrap
import warnings
from collections.abc import Callable
from typing import Any

from detok.config import field_help


def add_config_args(parser: argparse.ArgumentParser, defaults: Any, example: str = "train.epochs=10") -> None:
    """`--config PRESET_OR_YAML` (repeatable) and free `key=value` overrides, with every key in the help.

    `defaults` is the run config class or an instance holding the real defaults shown; `example` is an
    override that this verb really takes.
    """
    parser.add_argument(
        "--config", action="append", default=[], metavar="YAML", help="preset name or YAML file (repeatable)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {example}")
    rows = "\n".join(f"  {k} = {v!r}" + (f"   # {h}" if h else "") for k, v, h in field_help(defaults))
    parser.epilog = (parser.epilog or "") + "\nconfig keys (defaults = the paper's setting):\n" + rows
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def family_help(kind: str) -> str:
    """The registry's families of `kind`: members, what sampling steps count, and each config field's default."""
    from detok import registry

    lines = [f"{kind} families (registry):"]
    for fam in registry.families(kind):
        lines.append(f"  {fam.name}: {fam.summary}")
        lines.append(f"    members: {', '.join(registry.members(kind, fam.name))}")
        if fam.sampling is not None:
            s = fam.sampling
            lines.append(f"    sample steps: {s.steps} (default {s.default_steps})")
            if s.head_steps:
                lines.append(f"    head steps: {s.head_steps} (default {s.default_head_steps})")
        if fam.config is not None:
            fields = [f"{f.name}={_default(f)!r}" for f in dataclasses.fields(fam.config) if f.init]
            wrapped = textwrap.wrap(", ".join(fields), width=104)
            lines.append(f"    {kind} fields ({fam.config.__name__}, base-size defaults; presets set the size):")
            lines += [f"      {w}" for w in wrapped]
    return "\n".join(lines)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "required"


def setup_logging() -> None:
    """INFO messages as plain lines, and Python warnings as one line each (no file path, no source line): what a
    command prints is read by people. Library use keeps Python's defaults."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.formatwarning = one_line_warning


def one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    return f"[detok] {category.__name__}: {message}\n"


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


def flag_overrides(args: argparse.Namespace, flags: dict[str, str | None]) -> list[str]:
    """The positional key=value overrides, then `key=value` for every flag given (config key -> flag value)."""
    return [*args.overrides, *(f"{key}={value}" for key, value in flags.items() if value)]


def run_training(title: str, train: Callable[..., dict[str, Any]], cfg: Any, resume: bool) -> dict[str, Any]:
    """train(cfg, resume=resume), then the process group shut down, then the summary printed on rank 0."""
    from detok import dist

    try:
        summary = train(cfg, resume=resume)
    finally:
        dist.shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(title, summary)
    return summary
