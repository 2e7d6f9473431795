"""Encoding runs: latent statistics and a sharded cache of posterior moments (+ flips) for generator training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detok import dist
from detok.data import build_dataset, collate
from detok.runs.reconstruct import data_config_for
from detok.runs.train import has_latent_stats
from detok.tokenizers.latents import latent_stats, write_cache
from detok.tokenizers.load import load_tokenizer, run_config


def encode(
    tokenizer: str | Path, out: str | Path, *, data: str = "", root: str = "", file_list: str = "",
    split: str = "train", bad_images: str = "", batch_size: int = 64, num_workers: int = 2, shard_size: int = 4096,
    recompute_stats: bool = False, device: str = "auto", progress: bool = True,
) -> dict[str, Any]:
    """Write the latent cache of `tokenizer` over a data split to `out`; returns its summary.

    Latent statistics come from the tokenizer, or are computed over this data when it has none (or when
    `recompute_stats`). Unreadable images are skipped (`bad_images="skip"`, the data config's default: the
    cache holds each real image once and its meta names the skipped files) or stop the run ("fail"). The cache records the tokenizer's fingerprint and statistics, so a generator run
    against another tokenizer's cache stops with an error.
    """
    if batch_size < 1 or shard_size < 1 or num_workers < 0:
        raise ValueError(f"encode needs batch_size >= 1, shard_size >= 1, num_workers >= 0 "
                         f"(got {batch_size}, {shard_size}, {num_workers})")
    info = dist.init(device)
    try:
        tok = load_tokenizer(tokenizer).to(info.device)
        data_cfg = data_config_for(tok, run_config(tokenizer), data, root, file_list, bad_images)
        dataset = build_dataset(data_cfg, split)
        discrete = bool(getattr(tok, "discrete", False))  # token ids: no statistics to compute
        recompute = not discrete and (recompute_stats or not has_latent_stats(tok))
        if recompute:
            mean, std = latent_stats(tok, dataset, info.device, batch_size, num_workers, collate=collate,
                                     progress=progress and info.is_main)
            tok.set_stats(mean.to(info.device), std.to(info.device))
        meta = write_cache(
            tok, dataset, out, info.device,
            source={"tokenizer": str(tokenizer), "data": data_cfg.name, "split": split},
            batch_size=batch_size, shard_size=shard_size, num_workers=num_workers, collate=collate,
            progress=progress and info.is_main,
        )
    finally:
        dist.shutdown()
    summary = {k: meta[k] for k in ("count", "latent_shape", "tokenizer_fingerprint", "num_tokens", "codebook_size")
               if k in meta}
    summary.update(out=str(out), shards=len(meta.get("shards", [])),
                   stats="none (token ids)" if discrete else "recomputed" if recompute else "from tokenizer")
    if meta.get("skipped_count"):
        summary["skipped_count"] = meta["skipped_count"]
        shown = meta["skipped"][:5]
        summary["skipped"] = shown + ([f"... full list in {Path(out) / 'meta.json'}"] if len(meta["skipped"]) > 5 else [])
    return summary
