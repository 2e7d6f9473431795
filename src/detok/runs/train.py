"""Training runs: `train_tokenizer` and `train_generator`, the bodies of `detok train tokenizer|generator`.

Each takes a typed run config (see `detok.runs.config`), trains on the one engine (single process or
torchrun + DDP), writes the run folder (config.yaml, checkpoints, metrics.jsonl, summary.json, a PNG) and
returns the summary dict the CLI prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from detok.config import save_yaml, to_dict
from detok.data import build_dataset, collate
from detok.engine.tasks import DDTTask, GeneratorTask, TokenizerTask
from detok.engine.trainer import Hook, Trainer
from detok.generators.load import build_generator
from detok.generators.sampling import grid_labels, sample_images
from detok.io import Checkpoint, find_checkpoint, write_json
from detok.losses.tokenizer_loss import TokenizerLoss
from detok.runs.config import (
    DDTRunConfig,
    GeneratorRunConfig,
    SpatialVQRunConfig,
    TokenizerRunConfig,
    check_generator_name,
)
from detok.tokenizers.base import Tokenizer
from detok.tokenizers.ddt import DDT
from detok.tokenizers.detok import DeTok
from detok.tokenizers.latents import LatentCache, latent_stats
from detok.tokenizers.load import load_tokenizer
from detok.tokenizers.spatial_vq import SpatialVQ


class LatentStatsHook(Hook):
    """At the end of tokenizer training: latent statistics of the EMA weights, set on the model before saving."""

    def __init__(self, model: DeTok, dataset, images: int, of: str, progress: bool) -> None:
        self.model, self.dataset, self.images, self.of, self.progress = model, dataset, images, of, progress

    def on_train_end(self, trainer: Trainer) -> None:
        mean, std = latent_stats(trainer.ema_copy(), self.dataset, trainer.device, max_images=self.images,
                                 collate=collate, of=self.of, progress=self.progress and trainer.info.is_main)
        self.model.set_stats(mean, std)


def check_resume(run_dir: Path, kind: str, model: str, section: str = "", wanted: dict | None = None) -> None:
    """Refuse a --resume the run folder cannot honour, before anything is written into it.

    The latest checkpoint must be of this kind and model, its model section (`section`: the architecture
    fields) must equal `wanted`, and its training state must read as plain tensors.
    """
    try:
        ckpt = Checkpoint(find_checkpoint(run_dir))
    except FileNotFoundError:
        return  # nothing to resume: the trainer says so and starts from scratch
    found_model = ckpt.config.get("model", "?")
    if ckpt.kind != kind or found_model != model:
        raise ValueError(f"cannot resume {run_dir}: it is a {ckpt.kind} run of {found_model}; "
                         f"the command asks for a {kind} run of {model}")
    if section and wanted is not None:
        saved = ckpt.config.get(section, {}) or {}
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if differ:
            shown = ", ".join(f"{section}.{k}: run {saved.get(k)!r}, asked {wanted.get(k)!r}" for k in differ[:4])
            raise ValueError(f"cannot resume {run_dir}: its {section} config differs ({shown}"
                             f"{', ...' if len(differ) > 4 else ''})")
    ckpt.training_state()  # a CheckpointError naming state.pt if it is not plain tensors


def train_tokenizer(cfg: TokenizerRunConfig | DDTRunConfig | SpatialVQRunConfig, resume: bool = False,
                    recon_images: int = 256) -> dict[str, Any]:
    """Train l-DeTok, compute latent statistics (EMA weights), save, reconstruct held-out images.

    Returns the summary (also RUN/summary.json): steps, seconds, throughput, final losses, and the
    reconstruction PSNR / SSIM of `recon_images` validation images with the EMA weights. A `DDTRunConfig`
    trains a DDT tokenizer instead, a `SpatialVQRunConfig` the spatial VQ baseline (`train_ddt`).
    """
    if isinstance(cfg, (DDTRunConfig, SpatialVQRunConfig)):
        return train_ddt(cfg, resume=resume, recon_images=recon_images)
    from detok.runs.probe import GenerationProbe
    from detok.runs.reconstruct import reconstruct

    run_dir = Path(cfg.train.out_dir)
    if resume:
        check_resume(run_dir, "tokenizer", cfg.model, "tokenizer", to_dict(cfg)["tokenizer"])
    torch.manual_seed(cfg.train.seed)  # initial weights (incl. random-init perceptual nets) follow the seed
    model = DeTok(cfg.tokenizer)
    if cfg.init_from:
        model.load_state_dict(load_tokenizer(cfg.init_from).state_dict())
    if cfg.decoder_only:
        model.freeze_encoder()
    loss = TokenizerLoss(cfg.loss, rng=torch.Generator().manual_seed(cfg.train.seed + 1),
                         latent_numel=math.prod(model.latent_shape))
    data_cfg = cfg.data
    data_cfg.image_size = cfg.tokenizer.image_size
    train_set = build_dataset(data_cfg, "train")
    spe = max(1, len(train_set) // cfg.train.global_batch_size)
    task = TokenizerTask(model, loss, disc_start_step=round(cfg.disc_start_epoch * spe), hflip=data_cfg.hflip)
    hooks: list[Hook] = []
    if cfg.probe.every_epochs > 0:
        hooks.append(GenerationProbe(cfg.probe, data_cfg, train_set, run_dir,
                                     max(1, round(cfg.probe.every_epochs * spe)), stats_of=cfg.stats_of))
    hooks.append(LatentStatsHook(model, train_set, cfg.stats_images, cfg.stats_of, cfg.train.progress))
    trainer = Trainer(task, cfg.train, cfg.optim, kind="tokenizer", config=to_dict(cfg), collate=collate,
                      num_workers=data_cfg.num_workers, hooks=hooks)
    if cfg.corruption_anneal > 0:  # the last fraction of the engine's planned steps fades the corruption out
        total = trainer.plan(len(train_set)).total
        task.anneal_steps = (total - max(1, round(cfg.corruption_anneal * total)), total - 1)
    if trainer.info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
    summary = trainer.fit(train_set, resume=resume)
    summary["run_dir"] = str(run_dir)
    summary["kl_weight_effective"] = loss.kl_weight
    if trainer.info.is_main and recon_images:
        tok = load_tokenizer(run_dir)
        val = build_dataset(data_cfg, "val")
        summary["reconstruction"] = reconstruct(tok, val, run_dir, trainer.device, recon_images,
                                                progress=cfg.train.progress)
        summary["reconstruction"]["weights"] = "ema"
        write_json(run_dir / "summary.json", summary)
    return summary


def train_ddt(cfg: DDTRunConfig | SpatialVQRunConfig, resume: bool = False,
              recon_images: int = 256) -> dict[str, Any]:
    """Train a discrete tokenizer (DDT, or the spatial VQ baseline) on the one engine; reconstruct held-out
    images.

    For DDT the summary's "reconstruction" holds PSNR / SSIM from the full K tokens and `psnr_by_tokens` for the
    first j AR-order tokens, j in {0, K/8, K/4, K/2, K} (EMA weights), with the prefix grid and plot; the
    baseline's raster ids have no prefix order, so it reports the full reconstruction only.
    """
    from detok.runs.reconstruct import reconstruct

    run_dir = Path(cfg.train.out_dir)
    if resume:
        check_resume(run_dir, "tokenizer", cfg.model, "tokenizer", to_dict(cfg)["tokenizer"])
    torch.manual_seed(cfg.train.seed)
    model = SpatialVQ(cfg.tokenizer) if isinstance(cfg, SpatialVQRunConfig) else DDT(cfg.tokenizer)
    data_cfg = cfg.data
    data_cfg.image_size = cfg.tokenizer.image_size
    train_set = build_dataset(data_cfg, "train")
    task = DDTTask(model, hflip=data_cfg.hflip, usage_every=cfg.usage_every)
    trainer = Trainer(task, cfg.train, cfg.optim, kind="tokenizer", config=to_dict(cfg), collate=collate,
                      num_workers=data_cfg.num_workers)
    if trainer.info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
    summary = trainer.fit(train_set, resume=resume)
    summary["run_dir"] = str(run_dir)
    if trainer.info.is_main and recon_images:
        tok = load_tokenizer(run_dir)
        val = build_dataset(data_cfg, "val")
        rec = reconstruct(tok, val, run_dir, trainer.device, recon_images, progress=cfg.train.progress)
        summary["reconstruction"] = {**rec, "weights": "ema"}
        summary["codebook"] = tok.usage(tok.tokenize(torch.stack([val[i]["image"] for i in range(
            min(len(val), recon_images))]).to(trainer.device)))
        write_json(run_dir / "summary.json", summary)
    return summary


def has_latent_stats(tok: Tokenizer) -> bool:
    """False for a tokenizer still at the identity normalisation (mean 0, std 1); discrete ids need none."""
    if getattr(tok, "discrete", False):
        return True
    return not (bool((tok.latent_std == 1).all()) and bool((tok.latent_mean == 0).all()))


def train_generator(cfg: GeneratorRunConfig, resume: bool = False, tokenizer: Tokenizer | None = None,
                    images: int = 0) -> dict[str, Any]:
    """Train a generator on a frozen tokenizer's latents (cached or online); sample a grid at the end.

    `tokenizer` replaces loading `cfg.tokenizer` (still recorded in the run's config): for in-training probes
    whose tokenizer lives in memory. `images` > 0 trains on the first `images` of the data (online encoding).
    """
    check_generator_name(cfg.model)
    if not cfg.tokenizer:
        raise ValueError("train generator needs tokenizer=RUN_OR_CHECKPOINT (the tokenizer whose latents it models)")
    run_dir = Path(cfg.train.out_dir)
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    check_token_kind(cfg.model, tok)
    overrides = dict(cfg.generator)
    if getattr(tok, "discrete", False):  # the vocabulary comes from the tokenizer (and is saved with the run)
        overrides["codebook_size"] = tok.codebook_size
    if resume:
        check_resume(run_dir, "generator", cfg.model, "generator", overrides)
    if not has_latent_stats(tok):
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
        if 0 < images < len(dataset):
            dataset = Subset(dataset, range(images))
    torch.manual_seed(cfg.train.seed)
    gen = build_generator(cfg.model, tok.latent_shape, num_classes, overrides)
    task = GeneratorTask(gen, tok, use_cache=bool(cfg.cache), hflip=cfg.data.hflip, posterior=cfg.posterior)
    config = {**to_dict(cfg), "latent_shape": list(tok.latent_shape), "num_classes": num_classes}
    config["generator"] = overrides
    trainer = Trainer(task, cfg.train, cfg.optim, kind="generator", config=config, collate=collate_fn,
                      num_workers=workers)
    if trainer.info.is_main:
        save_yaml(config, run_dir / "config.yaml")
    summary = trainer.fit(dataset, resume=resume)
    summary.update(run_dir=str(run_dir), model=cfg.model,
                   parameters_m=sum(p.numel() for p in gen.parameters()) / 1e6)
    if trainer.info.is_main and cfg.sample.per_class > 0:
        from detok.runs.sample import save_class_grid

        ema_gen = trainer.ema_copy()
        labels = grid_labels(num_classes, cfg.sample.per_class)
        images_out = sample_images(ema_gen, tok.to(trainer.device), labels, cfg_scale=cfg.sample.cfg_scale,
                                   steps=cfg.sample.steps or None, head_steps=cfg.sample.head_steps or None,
                                   seed=cfg.sample.seed)
        data_name = dataset.meta.get("source", {}).get("data", "") if cfg.cache else cfg.data.name
        grid = save_class_grid(images_out, labels, run_dir / "samples.png", class_names(data_name))
        summary["samples"] = {"grid": str(grid), "cfg_scale": cfg.sample.cfg_scale,
                              "steps": cfg.sample.steps or "default", "weights": "ema", "rows": "one class per row"}
        write_json(run_dir / "summary.json", summary)
    return summary


def check_token_kind(model: str, tok) -> None:
    """A ValueError unless the generator family and the tokenizer agree on discrete ids vs continuous latents."""
    from detok import registry

    wants = registry.family_of("generator", model).extra.get("tokens", "continuous")
    has = "discrete" if getattr(tok, "discrete", False) else "continuous"
    if wants != has:
        raise ValueError(f"generator {model} models {wants} tokens but the tokenizer gives {has} ones "
                         f"({'ddt_ar needs a DDT tokenizer' if wants == 'discrete' else 'pick a ddt_ar generator'})")


def class_names(data_name: str) -> list[str] | None:
    """Class names of a built-in dataset (shapes, fashion-mnist); None where detok does not know them."""
    if data_name == "shapes":
        from detok.data.shapes import ShapesDataset

        return list(ShapesDataset.class_names)
    if data_name == "fashion-mnist":
        from detok.data.fashion_mnist import CLASS_NAMES

        return list(CLASS_NAMES)
    return None
