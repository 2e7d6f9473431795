"""The tokenizer x generator table: train each generator on a tokenizer's latents under one budget, score it.

This is the paper's main table as a product feature. A bench folder holds one sub-folder per tokenizer
(its latent cache) and per cell (a generator run), each finished cell leaving `cell.json`; finished cells
are skipped and unfinished ones resume from their last checkpoint, so a bench can be stopped and continued,
and several invocations (tokenizers) add rows to one table:

    OUT/<tokenizer>/latents/            latent cache (posterior moments, image + flip)
    OUT/<tokenizer>/<generator>/        generator run (checkpoints, samples.png, metrics.json, cell.json)
    OUT/table.{json,md,png}             every finished cell of OUT
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from detok.cli.common import write_json
from detok.config import resolve
from detok.data import build_dataset, collate
from detok.data.build import DataConfig
from detok.engine.tasks import GeneratorRunConfig
from detok.eval.protocol import EvalConfig, data_key, evaluate_generator_run
from detok.tokenizers.base import Tokenizer
from detok.tokenizers.latents import CacheMismatch, LatentCache, latent_stats, write_cache

log = logging.getLogger(__name__)

CELL_FILE = "cell.json"
GENERATOR_PRESET = "quickstart_{}"  # configs/quickstart_<generator>.yaml: the CPU-small recipe of each family
GENERATORS = ("dit", "sit", "lightningdit", "mar", "rasterar", "randomar")


@dataclass
class BenchConfig:
    """One budget for every cell of a table."""

    generators: list[str] = field(default_factory=lambda: ["sit", "mar"])
    steps: int = 0  # generator training steps (0 = the preset's)
    batch_size: int = 0  # global batch (0 = the preset's)
    seed: int = 0
    cache_images: int = 0  # encode the first N train images for the generators (0 = the whole split)
    overrides: list[str] = field(default_factory=list)  # key=value for every generator run
    eval: EvalConfig = field(default_factory=EvalConfig)


def tokenizer_has_stats(tok: Tokenizer) -> bool:
    return not (bool((tok.latent_mean == 0).all()) and bool((tok.latent_std == 1).all()))


def prepare_latents(
    tok: Tokenizer, tok_spec: str, data_cfg: DataConfig, out: Path, device: torch.device, progress: bool = True,
    max_images: int = 0,
) -> Path:
    """The tokenizer's latent cache of the train split (its first max_images, 0 = all) under OUT.

    Reused when it matches the tokenizer and the data. A tokenizer without latent statistics gets them first.
    """
    cache = out / "latents"
    key = data_key(data_cfg, "train", max_images)
    if (cache / "meta.json").is_file():
        found = LatentCache(cache)
        try:
            found.check(tok)
        except CacheMismatch as e:
            raise CacheMismatch(f"{cache} was written by another tokenizer or stats ({e}); remove it") from e
        if found.meta.get("source", {}).get("data_key") != key:
            raise CacheMismatch(f"{cache} holds latents of other data ({found.meta.get('source')}); remove it "
                                f"or choose another --out")
        return cache
    train = build_dataset(data_cfg, "train")
    if not tokenizer_has_stats(tok):
        mean, std = latent_stats(tok, train, device, collate=collate, progress=progress)
        tok.set_stats(mean.to(tok.latent_mean.device), std.to(tok.latent_std.device))
    if 0 < max_images < len(train):
        train = Subset(train, range(max_images))
    write_cache(tok, train, cache, device, source={"tokenizer": tok_spec, "data": data_cfg.name, "split": "train", "data_key": key},
                batch_size=256, collate=collate, progress=progress)
    return cache


def run_cell(
    tok: Tokenizer, tok_spec: str, cache: Path, generator: str, cell_dir: Path, bench: BenchConfig,
    data_cfg: DataConfig, row: str = "",
) -> dict[str, Any]:
    """Train (or resume) one generator on the cached latents, evaluate it, write cell.json; skip if done."""
    from detok.cli.train import train_generator

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
    cfg = resolve(GeneratorRunConfig, [GENERATOR_PRESET.format(generator)], overrides)
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
        **summarize(metrics),
    }
    write_json(done, cell)
    return cell


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a generation evaluation (best scale) with the recipe that produced them."""
    best = metrics["best"]
    out = {"fid": best["fid"], "cfg": best["cfg"], "n": best["n"], "feature_net": metrics["recipe"]["feature_net"]}
    for key in ("class_accuracy", "precision", "recall", "inception_score"):
        if key in best:
            out[key] = best[key]
    if "cfg1" in metrics:
        out["fid_cfg1"] = metrics["cfg1"]["fid"]
    out["search"] = [{"cfg": r["cfg"], "fid": r["fid"], "n": r["n"]} for r in metrics.get("search", [])]
    out["recipe"] = metrics["recipe"]
    return out


# ---------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------


def collect(out: Path) -> list[dict[str, Any]]:
    """Every finished cell under OUT, sorted by (tokenizer, generator)."""
    rows = [json.loads(p.read_text()) | {"cell": str(p.parent)} for p in sorted(out.glob(f"*/*/{CELL_FILE}"))]
    return sorted(rows, key=lambda r: (r["tokenizer_name"], GENERATORS.index(r["generator"])))


def write_table(out: Path) -> dict[str, Path]:
    """OUT/table.json (every cell), table.md (FID, tokenizer rows x generator columns) and table.png."""
    rows = collect(out)
    names = sorted({r["tokenizer_name"] for r in rows})
    gens = [g for g in GENERATORS if any(r["generator"] == g for r in rows)]
    cell = {(r["tokenizer_name"], r["generator"]): r for r in rows}
    write_json(out / "table.json", {"rows": rows})
    lines = ["| tokenizer | " + " | ".join(gens) + " |", "|---|" + "---|" * len(gens)]
    for name in names:
        vals = []
        for g in gens:
            r = cell.get((name, g))
            vals.append("" if r is None else f"{r['fid']:.2f} (cfg {r['cfg']:g})")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    nets = sorted({r["feature_net"] for r in rows})
    ns = sorted({r["n"] for r in rows})
    lines += ["", f"FID at the best guidance scale (in brackets); feature net: {', '.join(nets)}; "
              f"samples: {', '.join(map(str, ns))}. Recipes per cell in table.json."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    png = out / "table.png"
    _bar_plot(names, gens, cell, png)
    return {"json": out / "table.json", "md": out / "table.md", "png": png}


def _bar_plot(names: list[str], gens: list[str], cell: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(gens) * max(1, len(names)) ** 0.5 + 2), 3.2))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j, g in enumerate(gens) if (name, g) in cell]
        ys = [cell[(name, g)]["fid"] for g in gens if (name, g) in cell]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(gens))], gens)
    ax.set_ylabel("FID (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title("tokenizer x generator")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
