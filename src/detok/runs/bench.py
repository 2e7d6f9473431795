"""Bench runs: the tokenizer x generator table (the paper's main table) under one budget.

For each tokenizer, its latent cache is written once; each generator family then trains its small recipe
(declared by the family in the registry) on those latents for the same number of steps, and is scored by
the evaluation protocol. A bench folder holds one sub-folder per tokenizer and per cell; finished cells are
skipped and unfinished ones resume from their last checkpoint, so a bench can be stopped and continued:

    OUT/<tokenizer>/latents/            latent cache (posterior moments, image + flip; a discrete tokenizer's
                                        token ids, image + flip)
    OUT/<tokenizer>/<generator>/        generator run (checkpoints, samples.png, metrics.json, cell.json)
    OUT/<tokenizer>/<generator>/na.json a pairing that cannot run (see below)
    OUT/table.{json,md,png}             every finished cell of OUT (detok.eval.table)

A discrete tokenizer (DDT: K ids per image) is a row like any other: its cache holds token ids (no latent
statistics), and the families that model ids (`ddt_ar`, registry extra tokens=discrete) train on it. A family
that models the other kind of tokens (a continuous generator on token ids, ddt_ar on continuous latents) cannot
be trained on that row: the bench loops over every pairing, so such a cell is skipped, not an error, with one
log line and an "n/a (discrete tokens)" / "n/a (continuous latents)" mark in the table.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from detok import dist, registry
from detok.config import from_dict, option, resolve
from detok.data import build_dataset, collate
from detok.data.build import DataConfig
from detok.eval.protocol import (
    SMALL_DATASETS,
    EvalConfig,
    data_key,
    evaluate_generator_run,
    tokenizer_data_config,
)
from detok.eval.table import (
    CELL_FILE,
    NA_FILE,
    TOKEN_KINDS,
    cell_text,
    latents_of,
    na_mark,
    summarize,
    write_table,
)
from detok.io import write_json
from detok.runs.config import generator_config, generator_families
from detok.runs.train import has_latent_stats, train_generator
from detok.tokenizers.base import Tokenizer
from detok.tokenizers.latents import CacheMismatch, LatentCache, latent_stats, write_cache
from detok.tokenizers.load import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """One budget for every cell of a table."""

    generators: list[str] = option(factory=lambda: ["sit", "mar"], help="generator families (registry names)")
    steps: int = option(0, "generator training steps (0 = the family recipe's)", min=0)
    batch_size: int = option(0, "global batch (0 = the recipe's)", min=0)
    seed: int = option(0, "generator training seed")
    cache_images: int = option(0, "encode the first N train images for the generators (0 = the whole split)", min=0)
    overrides: list[str] = option(factory=list, help="key=value for every generator run")
    eval: EvalConfig = option(factory=EvalConfig)


def row_name(spec: str) -> str:
    """A folder-safe row name: the run folder's name, or the external spec's kind."""
    p = Path(spec)
    name = spec.split(":", 1)[0] if ":" in spec and not p.exists() else (p.name or spec)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def token_kind(tok: Tokenizer) -> str:
    """"discrete" for a tokenizer of token ids, "continuous" for one of latents."""
    return "discrete" if getattr(tok, "discrete", False) else "continuous"


def family_tokens(generator: str) -> str:
    """What a generator family models: "discrete" token ids or "continuous" latents (registry extra "tokens")."""
    return str(registry.family("generator", generator).extra.get("tokens", "continuous"))


def applicable(generator: str, tok: Tokenizer) -> bool:
    """True if the generator family models the kind of tokens the tokenizer gives."""
    return family_tokens(generator) == token_kind(tok)


def prepare_latents(
    tok: Tokenizer, tok_spec: str, data_cfg: DataConfig, out: Path, device: torch.device, progress: bool = True,
    max_images: int = 0,
) -> Path:
    """The tokenizer's latent cache of the train split (its first max_images, 0 = all) under OUT.

    Reused when it matches the tokenizer and the data. A continuous tokenizer without latent statistics gets them
    first; a discrete one's cache holds its token ids (no statistics: ids are not normalised).
    """
    cache = out / "latents"
    discrete = token_kind(tok) == "discrete"
    key = data_key(data_cfg, "train", max_images)
    if (cache / "meta.json").is_file():
        found = LatentCache(cache)
        try:
            found.check(tok)
        except CacheMismatch as e:
            other = "another tokenizer (or K / codebook size)" if discrete else "another tokenizer or stats"
            raise CacheMismatch(f"{cache} was written by {other} ({e}); remove it") from e
        if found.meta.get("source", {}).get("data_key") != key:
            raise CacheMismatch(f"{cache} holds latents of other data ({found.meta.get('source')}); remove it "
                                f"or choose another --out")
        return cache
    train = build_dataset(data_cfg, "train")
    if not discrete and not has_latent_stats(tok):
        mean, std = latent_stats(tok, train, device, collate=collate, progress=progress)
        tok.set_stats(mean.to(tok.latent_mean.device), std.to(tok.latent_std.device))
    if 0 < max_images < len(train):
        train = Subset(train, range(max_images))
    write_cache(tok, train, cache, device,
                source={"tokenizer": tok_spec, "data": data_cfg.name, "split": "train", "data_key": key},
                batch_size=256, collate=collate, progress=progress)
    return cache


def skip_cell(tok: Tokenizer, tok_spec: str, generator: str, cell_dir: Path, row: str = "") -> dict[str, Any]:
    """The n/a mark of a pairing that cannot run (written to cell_dir/na.json, logged in one line)."""
    has = token_kind(tok)
    mark = {"tokenizer_name": row or cell_dir.parent.name, "tokenizer": tok_spec, "generator": generator,
            "status": "n/a", "reason": na_mark(has), "latents": latents_of(tok),
            "why": f"{generator} models {TOKEN_KINDS[family_tokens(generator)]}, the tokenizer gives "
                   f"{TOKEN_KINDS[has]}"}
    if dist.rank_world()[0] == 0:
        log.warning("[detok bench] %s x %s: %s, skipped: %s", mark["tokenizer_name"], generator, mark["reason"],
                    mark["why"])
        write_json(cell_dir / NA_FILE, mark)
    return mark


def run_cell(
    tok: Tokenizer, tok_spec: str, cache: Path | None, generator: str, cell_dir: Path, bench: BenchConfig,
    data_cfg: DataConfig, row: str = "",
) -> dict[str, Any]:
    """Train (or resume) one generator family on the cached latents, evaluate it, write cell.json; skip if done.

    A family that models the other kind of tokens (discrete ids vs continuous latents) is not trained: the cell is
    the n/a mark of `skip_cell` ({"status": "n/a", "reason", ...}; `cache` may then be None).
    """
    if not applicable(generator, tok):
        return skip_cell(tok, tok_spec, generator, cell_dir, row)
    if cache is None:
        raise ValueError(f"bench cell {cell_dir} needs the tokenizer's latent cache")
    done = cell_dir / CELL_FILE
    if done.is_file():
        log.info("[detok bench] %s: done, skipped", cell_dir)
        return json.loads(done.read_text())
    overrides = [f"tokenizer={tok_spec}", f"cache={cache}", f"train.out_dir={cell_dir}",
                 f"train.seed={bench.seed}", *bench.overrides]
    if bench.steps:
        overrides.append(f"train.max_steps={bench.steps}")
    if bench.batch_size:
        overrides.append(f"train.global_batch_size={bench.batch_size}")
    cfg = generator_config(overrides=overrides, family=generator)
    resume = (cell_dir / "checkpoints" / "latest").exists()
    t0 = time.perf_counter()
    train = train_generator(cfg, resume=resume, tokenizer=tok)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate_generator_run(cell_dir, bench.eval, tokenizer=tok, data_cfg=data_cfg)
    eval_s = time.perf_counter() - t0
    cell = {
        "tokenizer_name": row or cell_dir.parent.name,
        "tokenizer": tok_spec,
        "generator": generator,
        "model": cfg.model,
        "steps": train["steps"],
        "global_batch_size": cfg.train.global_batch_size,
        "seed": bench.seed,
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "parameters_m": train["parameters_m"],
        "final_loss": train["final"].get("loss"),
        "latents": latents_of(tok),
        **summarize(metrics),
    }
    write_json(done, cell)
    (cell_dir / NA_FILE).unlink(missing_ok=True)  # a stale mark of a former row of this name
    return cell


def bench_tokenizers(
    tokenizers: list[str], *, generators: str | list[str] = "sit,mar", budget: int = 250, batch_size: int = 0,
    names: list[str] | None = None, data: str = "", root: str = "", seed: int = 0, cache_images: int = 0,
    eval_presets: list[str] | None = None, eval_overrides: list[str] | None = None,
    generator_overrides: list[str] | None = None, out: str | Path = "runs/bench", device: str = "auto",
) -> dict[str, Any]:
    """`detok bench tokenizer`: every (tokenizer, generator family) cell under one budget, then the table.

    Returns {"cells": [cell dicts], "table": {"json", "md", "png": paths}, "seconds"}; a pairing that cannot run
    (discrete ids vs continuous latents) is a cell {"status": "n/a", "reason", ...} without scores.
    """
    gens = generator_families(generators) if isinstance(generators, str) else generator_families(",".join(generators))
    if names and len(names) != len(tokenizers):
        raise ValueError(f"{len(names)} --name for {len(tokenizers)} tokenizers")
    info = dist.init(device)
    out = Path(out)
    t0 = time.perf_counter()
    cells = []
    try:
        for i, spec in enumerate(tokenizers):
            name = names[i] if names else row_name(spec)
            fallback = None
            if data:
                fallback = from_dict(DataConfig, {"name": data, "root": root, "num_workers": 0}, prefix="data.")
            tok = load_tokenizer(spec).to(info.device)
            data_cfg = tokenizer_data_config(spec, fallback)
            if fallback is not None:  # an explicit --data wins, at the tokenizer's image size
                data_cfg = fallback
                data_cfg.image_size = int(getattr(getattr(tok, "cfg", None), "image_size", data_cfg.image_size))
            presets = eval_presets or (["eval_small"] if data_cfg.name in SMALL_DATASETS else [])
            ecfg = resolve(EvalConfig, presets, list(eval_overrides or []))
            bench = BenchConfig(generators=gens, steps=budget, batch_size=batch_size, seed=seed,
                                cache_images=cache_images, overrides=list(generator_overrides or []), eval=ecfg)
            cache = None  # no cache for a row none of whose generators can model its tokens
            if any(applicable(g, tok) for g in gens):
                cache = prepare_latents(tok, spec, data_cfg, out / name, info.device, progress=info.is_main,
                                        max_images=bench.cache_images)
            for g in gens:
                cell = run_cell(tok, spec, cache, g, out / name / g, bench, data_cfg, row=name)
                cells.append(cell)
                if info.is_main and cell.get("status") != "n/a":
                    print(f"[detok bench] {name} x {g}: FID {cell['fid']:.3f} at cfg {cell['cfg']:g} "
                          f"({cell['feature_net']}, {cell['n']} samples)", flush=True)
        files = write_table(out) if info.is_main else {}
    finally:
        dist.shutdown()
    summary = {"cells": cells, "table": {k: str(v) for k, v in files.items()}, "seconds": time.perf_counter() - t0}
    if info.is_main:
        write_json(out / "bench_last.json", {**summary, "cells": {
            f"{c['tokenizer_name']} x {c['generator']}": cell_text(c) for c in cells}})
    return summary
