"""l-DeTok tokenizer benchmark: training / encode throughput, counted FLOPs, achieved FLOP/s, peak memory.

Method and results: docs/benchmarks.md. Every (case, flavour, variant) row runs in a fresh subprocess
(this script re-invoked with --case ... --json) so peak RSS does not mix between rows; the float32
2048 x 2048 matmul peak is measured in the parent at the start and at the end of the run. The result file
is rewritten after every row ("partial": true until the run ends); --resume continues an interrupted run.

    python benchmarks/bench_tokenizer.py                    # all cases -> docs/benchmarks/tokenizer.json
    python benchmarks/bench_tokenizer.py --variants         # + implementation-option rows
    python benchmarks/bench_tokenizer.py --upstream PATH    # + A/B rounds against upstream l-DeTok's own step
                                                            #   (PATH: a Jiawei-Yang/DeTok clone outside this repo)
    python benchmarks/bench_tokenizer.py --quick --out /tmp/tok.json      # smoke test
    python benchmarks/bench_tokenizer.py --resume           # continue an interrupted run (same settings)
    python benchmarks/bench_tokenizer.py --profile detok_ss_32            # top ops of 3 training steps
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from benchlib import (
    CPU,
    JSON_MARK,
    MATMUL_N,
    NO_CUDA,
    REPO,
    BenchDevice,
    BenchError,
    Job,
    TimedTrainStep,
    add_device_args,
    bench_device,
    counter,
    fmt_range,
    machine_info,
    matmul_peak,
    rss_mb,
    run_jobs,
    summary,
    write_json,
)
from detok import registry
from detok.engine.ema import EMA
from detok.engine.tasks import TokenizerTask
from detok.engine.trainer import compile_blocks
from detok.losses.tokenizer_loss import TokenizerLoss
from detok.nn.optim import adamw, split_decay
from detok.runs.config import TokenizerRunConfig, tokenizer_config
from detok.tokenizers.detok import DeTok

DEFAULT_OUT = REPO / "docs" / "benchmarks" / "tokenizer.json"
NO_GAN = 2**62  # disc_start_step that is never reached

# cases with an A/B against upstream's own training step (--upstream PATH): its code builds only these sizes
UPSTREAM_CASES = ("detok_ss_32", "detok_bb_256")
FULL_WARMUP, FULL_REPEATS = 2, 5  # the "full" flavour's step is ~30 s on 2 cores even at 32 px
TARGET_PEAK_FRACTION = 0.70
TARGET_SPEEDUP = 1.3


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: a tokenizer run config plus batch and default repeat counts."""

    kind: str  # "train" or "encode"
    model: str | None  # tokenizer preset (None: the YAML's)
    presets: tuple[str, ...]  # YAML presets, as `detok train tokenizer --config`
    overrides: tuple[str, ...]  # key=value overrides
    batch: int
    warmup: int
    repeats: int
    small: bool  # cheap enough for the "full" flavour and the variants by default
    help: str = ""


CASES: dict[str, Case] = {
    "quickstart": Case(
        "train",
        None,
        ("quickstart_shapes",),
        (),
        32,
        3,
        20,
        True,
        "quickstart_shapes.yaml tokenizer: detok_mini, 32 px, patch 4, latent 8",
    ),
    "detok_ss_32": Case(
        "train",
        "detok_ss",
        (),
        ("tokenizer.image_size=32", "tokenizer.patch_size=4"),
        16,
        2,
        10,
        True,
        "detok_ss, 32 px, patch 4, latent 16",
    ),
    "detok_bb_256": Case(
        "train", "detok_bb", (), (), 4, 2, 5, False, "detok_bb, 256 px, patch 16, latent 16"
    ),
    "encode_quickstart": Case(
        "encode",
        None,
        ("quickstart_shapes",),
        (),
        64,
        3,
        20,
        True,
        "eval encode_moments, quickstart tokenizer",
    ),
    "encode_bb_256": Case(
        "encode", "detok_bb", (), (), 8, 2, 5, False, "eval encode_moments, detok_bb 256 px"
    ),
}
VARIANTS: dict[str, str] = {
    "eager": "reference: eager model, the engine's AdamW (fused) and EMA: what `detok train tokenizer` runs",
    "adamw_foreach": "AdamW(foreach=True) instead of fused (the engine's kernel before 2026-12-02)",
    "compile_blocks": "every transformer Block torch.compile'd (dynamic=True), the engine's AdamW",
    "upstream": "upstream l-DeTok's own model, AdamW and EMA, imported from --upstream PATH (A/B rows only)",
}


# -- FLOP counting -------------------------------------------------------------------------------------
# -- the machine ---------------------------------------------------------------------------------------
# -- configs and the training step --------------------------------------------------------------------
def run_config(case: Case, flavour: str) -> TokenizerRunConfig:
    """The exact `detok train tokenizer` config of a case; "full" switches the paper's loss on."""
    overrides = list(case.overrides)
    if flavour == "full":
        overrides += ["loss.perceptual_weight=1.0", "loss.perceptual_pretrained=false"]
    cfg = tokenizer_config(case.model, list(case.presets), overrides)
    tok = cfg.tokenizer
    if tok.gamma != 3.0 or tok.mask_ratio != 0.7 or tok.mask_per_sample:
        raise ValueError(f"expected the paper's corruption (gamma 3, M 0.7, per-batch m), got {tok}")
    return cfg


def build_task(cfg: TokenizerRunConfig, flavour: str, seed: int, dev: BenchDevice = CPU) -> TokenizerTask:
    """DeTok in train mode + TokenizerLoss on `dev`; "model": pixel MSE + KL only, "full": + LPIPS, ConvNeXt, GAN.

    Initialised on the CPU (the same weights on every device for a seed), then moved, as the engine does.
    """
    torch.manual_seed(seed)
    model = DeTok(cfg.tokenizer)
    loss_cfg = copy.deepcopy(cfg.loss)
    if flavour == "model":
        loss_cfg.perceptual_weight = 0.0
    loss = TokenizerLoss(loss_cfg, rng=torch.Generator().manual_seed(seed + 1))  # init draws only
    if dev.type != "cpu":  # (the FLOP counter builds the task on the meta device: left there)
        model, loss = model.to(dev.device), loss.to(dev.device)
    task = TokenizerTask(
        model, loss, disc_start_step=0 if flavour == "full" else NO_GAN, hflip=cfg.data.hflip
    )
    model.train()
    loss.train()
    return task


class KeepRecorder:
    """Wraps model.draw_mask to record the number of encoder tokens L of each draw (N when unmasked)."""

    def __init__(self, model: DeTok) -> None:
        self.n_tok = model.latent_grid**2
        self.last = self.n_tok
        self._draw = model.draw_mask
        model.draw_mask = self  # instance attribute shadows the method; the model code is untouched

    def __call__(self, *args, **kwargs):
        out = self._draw(*args, **kwargs)
        self.last = self.n_tok if out[0] is None else int(out[0].shape[1])
        return out


class TrainBench(TimedTrainStep):
    """The engine's per-step work (Trainer.fit minus data loading) on a fixed random batch.

    step = task.step (hflip, masked + noised forward, loss [, D forward]), finiteness check, then per
    optimizer: zero_grad, backward, clip_grad_norm_(3.0), AdamW step; then the EMA update.
    """

    def __init__(
        self, cfg: TokenizerRunConfig, flavour: str, batch: int, variant: str, seed: int = 0,
        dev: BenchDevice = CPU,
    ) -> None:
        self.cfg, self.flavour, self.variant, self.dev = cfg, flavour, variant, dev
        self.task = build_task(cfg, flavour, seed, dev)
        self.model: DeTok = self.task.model
        self.keep = KeepRecorder(self.model)
        size = cfg.tokenizer.image_size
        g = torch.Generator().manual_seed(seed + 2)
        self.batch = {"image": (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(dev.device)}
        o = cfg.optim
        lr = o.lr or o.base_lr * cfg.train.global_batch_size / 256
        kernel = "foreach" if variant == "adamw_foreach" else o.adamw  # eager: what the engine builds
        self.optimizers = {
            name: adamw(split_decay(named, o.weight_decay, o.no_decay), lr, o.betas, kernel)
            for name, named in self.task.optimizer_params().items()
        }
        if tuple(o.betas) != (0.9, 0.95):
            raise ValueError(f"expected AdamW betas (0.9, 0.95), got {o.betas}")
        self.grad_clip = o.grad_clip
        self.ema = EMA(self.model, cfg.train.ema_decay)
        self.generator = torch.Generator(device=dev.device)  # the engine's: on the training device
        self.step_index = 0

    def compile_blocks(self) -> None:
        """What `train.compile=blocks` does: every transformer Block torch.compile'd in place (dynamic shapes)."""
        compile_blocks(self.model)

    def forward_backward(self, seed: int) -> dict[str, Any]:
        """task.step + every loss's backward (no update): what the FLOP-counting pass runs."""
        self.generator.manual_seed(seed)
        with self.dev.autocast():
            losses, logs = self.task.step(self.batch, self.step_index, self.generator)
        for name, loss in losses.items():
            self.optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        return logs


    def count(self, seed: int) -> tuple[int, int]:
        """(FLOPs, L) of forward + backward with this seed's draws (everything: model, loss nets, D)."""
        with counter() as fc:
            self.forward_backward(seed)
        return int(fc.get_total_flops()), self.keep.last


# -- expected FLOPs over the paper's mask distribution (meta device: no compute) ------------------------
def keep_distribution(cfg: TokenizerRunConfig, grid: int = 2**20) -> dict[int, float]:
    """P(L) of the encoder token count under m = max(0, U(mask_low, M)), exactly as DeTok.draw_mask draws it.

    Uniform midpoint grid over u instead of random draws (error ~ 1 / grid).
    """
    tok = cfg.tokenizer
    n_tok = (tok.image_size // tok.patch_size) ** 2
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    ratio = (tok.mask_low + (tok.mask_ratio - tok.mask_low) * u).clamp_min(0.0)
    keep = torch.ceil(n_tok * (1.0 - ratio)).long().clamp(1, n_tok)
    values, counts = keep.unique(return_counts=True)
    return {int(v): float(c) / grid for v, c in zip(values, counts)}


@contextlib.contextmanager
def _meta_autocast() -> Iterator[None]:
    """torch.autocast rejects device_type="meta"; the loss code only uses it with enabled=False (a no-op)."""
    real = torch.autocast

    def shim(device_type: str, *args, **kwargs):
        if device_type == "meta":
            if kwargs.get("enabled", True):
                raise RuntimeError("autocast enabled on the meta device")
            return contextlib.nullcontext()
        return real(device_type, *args, **kwargs)

    torch.autocast = shim  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.autocast = real  # type: ignore[misc]


def meta_flops_by_keep(cfg: TokenizerRunConfig, flavour: str, batch: int, keeps: list[int]) -> dict[int, int]:
    """Counted forward + backward FLOPs of the task step for each encoder token count L (meta device)."""
    with torch.device("meta"):
        task = build_task(cfg, flavour, seed=0)
    model = task.model
    n_tok = model.latent_grid**2
    size = cfg.tokenizer.image_size
    images = torch.empty(batch, 3, size, size, device="meta")
    out: dict[int, int] = {}
    for keep in keeps:

        def fixed(b: int, device: torch.device, generator: torch.Generator | None = None, strength: float = 1.0,
                  *, keep: int = keep):  # DeTok.draw_mask's signature, L fixed
            ratio = torch.full((b,), 1.0 - keep / n_tok, device=device)
            if keep == n_tok:
                return None, None, None, ratio
            keep_idx = torch.arange(keep, device=device).expand(b, keep)
            mask = torch.ones(b, n_tok, dtype=torch.bool, device=device).scatter(1, keep_idx, False)
            return keep_idx, mask, None, ratio

        model.draw_mask = fixed
        with counter() as fc, _meta_autocast():
            losses, _ = task.step({"image": images}, 0, None)
            for loss in losses.values():
                loss.backward()
        model.zero_grad(set_to_none=True)
        task.loss.discriminator.zero_grad(set_to_none=True)
        out[keep] = int(fc.get_total_flops())
    return out


class ModelFlops:
    """Model-step FLOPs (pixel MSE + KL flavour, forward + backward) as an exact function of L.

    For L < N the counted FLOPs are a quadratic in L (linear layers ~ L, attention ~ L^2, the decoder
    fixed), so three meta-device counts fix it exactly (rational interpolation) and a fourth checks it;
    L = N (no masking) takes another code path and is counted on its own.
    """

    def __init__(self, cfg: TokenizerRunConfig, batch: int) -> None:
        self.dist = keep_distribution(cfg)
        self.batch = batch
        self.n_tok = (cfg.tokenizer.image_size // cfg.tokenizer.patch_size) ** 2
        masked = sorted(k for k in self.dist if k < self.n_tok)
        self.nodes = sorted({masked[0], masked[len(masked) // 2], masked[-1]}) if masked else []
        check = [masked[len(masked) // 4]] if len(masked) > 3 else []
        counts = meta_flops_by_keep(cfg, "model", batch, [*self.nodes, *check, self.n_tok])
        self.unmasked = counts[self.n_tok]
        self.node_counts = [counts[k] for k in self.nodes]
        self.checked = all(self(k) == counts[k] for k in check)
        if not self.checked:
            raise RuntimeError(f"model FLOPs are not quadratic in L: {counts}")

    def __call__(self, keep: int) -> int:
        """FLOPs of one model step with L encoder tokens."""
        if keep == self.n_tok:
            return self.unmasked
        total = Fraction(0)
        for i, (xi, yi) in enumerate(zip(self.nodes, self.node_counts)):
            term = Fraction(yi)
            for j, xj in enumerate(self.nodes):
                if j != i:
                    term *= Fraction(keep - xj, xi - xj)
            total += term
        if total.denominator != 1:
            raise RuntimeError(f"non-integer FLOPs {total} at L={keep}")
        return int(total)

    def summary(self) -> dict[str, Any]:
        """E[FLOPs per image] over the mask distribution, plus the unmasked and the most-masked step."""
        low = min(self.dist)
        return {
            "expected_flops_per_img": sum(p * self(k) for k, p in self.dist.items()) / self.batch,
            "unmasked_flops_per_img": self.unmasked / self.batch,
            "min_keep": low,
            "min_keep_flops_per_img": self(low) / self.batch,
            "p_unmasked": self.dist.get(self.n_tok, 0.0),
            "expected_visible_frac": sum(p * k for k, p in self.dist.items()) / self.n_tok,
        }


# -- one row (runs in its own process) ----------------------------------------------------------------
def run_train_case(
    name: str, case: Case, flavour: str, variant: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Count FLOPs for each timed repeat's seed, warm up, then time the repeats (same seeds)."""
    cfg = run_config(case, flavour)
    bench = TrainBench(cfg, flavour, case.batch, variant, seed=args.seed, dev=args.dev)
    batch = case.batch
    warmup, repeats = (FULL_WARMUP, FULL_REPEATS) if flavour == "full" else (case.warmup, case.repeats)
    warmup, repeats = args.warmup or warmup, args.repeats or repeats
    warm_seeds, timed_seeds = step_seeds(args.seed, warmup, repeats)
    # eager model, the exact draws of the timed repeats; A/B rows count the first on CPU and the rest on the
    # meta device (ModelFlops, exact for the model flavour and checked against the CPU count below)
    n_cpu = 1 if args.ab_round >= 0 and flavour == "model" else repeats
    counted = [bench.count(s) for s in timed_seeds[:n_cpu]]
    if variant == "compile_blocks":
        bench.compile_blocks()
    graphs = [_unique_graphs()]
    for s in warm_seeds:
        bench.step(s)
    graphs.append(_unique_graphs())
    phases, keeps = [], []
    for s in timed_seeds:
        phases.append(bench.step(s))
        keeps.append(bench.keep.last)
    graphs.append(_unique_graphs())
    if keeps[:n_cpu] != [c[1] for c in counted]:
        raise RuntimeError(f"mask draws differ between counting and timed passes: {keeps} vs {counted}")
    times = [p["total"] for p in phases]
    model_flops = ModelFlops(cfg, batch)
    model_part = [model_flops(k) for k in keeps]
    flops = [c[0] for c in counted] + model_part[n_cpu:]
    loss_part = [f - m for f, m in zip(flops, model_part)]
    if flavour == "model" and any(loss_part):
        raise RuntimeError(f"meta-device model FLOPs {model_part} differ from the CPU counts {flops}")
    expected = model_flops.summary()
    if flavour == "full":  # the loss nets and D do not depend on L
        expected["expected_flops_per_img"] += statistics.mean(loss_part) / batch
        expected["unmasked_flops_per_img"] += statistics.mean(loss_part) / batch
        expected["min_keep_flops_per_img"] += statistics.mean(loss_part) / batch
    n_tok = bench.keep.n_tok
    row: dict[str, Any] = {
        "case": name,
        "kind": "train",
        "flavour": flavour,
        "variant": variant,
        "config": case.help,
        "batch": batch,
        "image_size": cfg.tokenizer.image_size,
        "patch_size": cfg.tokenizer.patch_size,
        "latent_dim": cfg.tokenizer.latent_dim,
        "encoder_size": cfg.tokenizer.encoder_size,
        "decoder_size": cfg.tokenizer.decoder_size,
        "gamma": cfg.tokenizer.gamma,
        "mask_ratio_M": cfg.tokenizer.mask_ratio,
        "params": sum(p.numel() for p in bench.model.parameters()),
        "warmup": warmup,
        "repeats": repeats,
        "seeds": timed_seeds,
        "visible_tokens": keeps,
        "tokens": n_tok,
        "visible_frac_mean": statistics.mean(keeps) / n_tok,
        "step_seconds": times,
        "flops_per_step": flops,
        "model_flops_per_step": model_part,
        "loss_flops_per_step": loss_part,
        "img_per_s": summary([batch / t for t in times]),
        "img_per_s_mean": batch * repeats / sum(times),
        "flops_per_img_mean": statistics.mean(flops) / batch,
        "gflops_achieved": summary([f / t / 1e9 for f, t in zip(flops, times)]),
        "phase_seconds_median": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
        **expected,
        "flops_meta_matches_cpu": flavour != "model" or not any(loss_part),
    }
    if variant == "compile_blocks":
        row["compiled_graphs"] = {"warmup": graphs[1] - graphs[0], "during_timing": graphs[2] - graphs[1]}
    if args.ab_round >= 0:
        row.update(ab_round=args.ab_round, cpu_counted_repeats=n_cpu)
    return row


def step_seeds(seed: int, warmup: int, repeats: int) -> tuple[list[int], list[int]]:
    """The generator seeds of the warm-up and the timed steps (the same on both sides of an A/B)."""
    base = seed * 100_003
    return [base + i for i in range(warmup)], [base + 1000 + i for i in range(repeats)]


def draws_of(cfg: TokenizerRunConfig, batch: int, seed: int) -> tuple[torch.Tensor, int]:
    """(h-flip (B,), visible tokens L) that detok's task step draws from a generator seeded with `seed`.

    Same calls in the same order as TokenizerTask.step and DeTok.draw_mask, on a meta-device model (only
    its config is read), so an upstream row can run exactly the masks of the detok row it is compared with.
    """
    with torch.device("meta"):
        model = DeTok(cfg.tokenizer)
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(batch, generator=g) < 0.5
    if not cfg.data.hflip:
        raise ValueError("the upstream A/B assumes the h-flip of the tokenizer recipes")
    keep_idx = model.draw_mask(batch, torch.device("cpu"), g)[0]
    return flip, model.latent_grid**2 if keep_idx is None else int(keep_idx.shape[1])


def run_upstream_case(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Upstream's training step (model flavour) with the draws of detok's row for the same seeds."""
    from upstream_detok import UpstreamTrainBench

    cfg = run_config(case, "model")
    batch = case.batch
    bench = UpstreamTrainBench(args.upstream, cfg, batch, seed=args.seed)
    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    warm_seeds, timed_seeds = step_seeds(args.seed, warmup, repeats)
    draws = {s: draws_of(cfg, batch, s) for s in warm_seeds + timed_seeds}
    model_flops = ModelFlops(cfg, batch)
    first = timed_seeds[0]
    with counter() as fc:  # one CPU count of upstream's forward + backward, checked against detok's
        bench.forward_backward(first, draws[first][1], draws[first][0])
    bench.model.zero_grad(set_to_none=True)
    upstream_flops = int(fc.get_total_flops())
    for s in warm_seeds:
        bench.step(s, draws[s][1], draws[s][0])
    phases = [bench.step(s, draws[s][1], draws[s][0]) for s in timed_seeds]
    keeps = [draws[s][1] for s in timed_seeds]
    flops = [model_flops(k) for k in keeps]
    times = [p["total"] for p in phases]
    ours_params = sum(p.numel() for p in DeTok(cfg.tokenizer).parameters())
    params = sum(p.numel() for p in bench.model.parameters())
    if params != ours_params:
        raise RuntimeError(f"upstream model has {params} parameters, detok's {ours_params}")
    return {
        "case": name,
        "kind": "train",
        "flavour": "model",
        "variant": "upstream",
        "ab_round": args.ab_round,
        "config": case.help,
        "batch": batch,
        "image_size": cfg.tokenizer.image_size,
        "patch_size": cfg.tokenizer.patch_size,
        "latent_dim": cfg.tokenizer.latent_dim,
        "params": params,
        "warmup": warmup,
        "repeats": repeats,
        "seeds": timed_seeds,
        "visible_tokens": keeps,
        "tokens": model_flops.n_tok,
        "visible_frac_mean": statistics.mean(keeps) / model_flops.n_tok,
        "step_seconds": times,
        "flops_per_step": flops,
        "upstream_counted_flops_first_step": upstream_flops,
        "flops_match_detok": upstream_flops == flops[0],
        "img_per_s": summary([batch / t for t in times]),
        "img_per_s_mean": batch * repeats / sum(times),
        "flops_per_img_mean": statistics.mean(flops) / batch,
        "gflops_achieved": summary([f / t / 1e9 for f, t in zip(flops, times)]),
        "phase_seconds_median": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
        "upstream_path": str(args.upstream),
    }


def run_encode_case(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Eval-mode encode_moments under no_grad (and the device's autocast): img/s, counted FLOPs, FLOP/s."""
    cfg = run_config(case, "model")
    dev: BenchDevice = args.dev
    torch.manual_seed(args.seed)
    model = DeTok(cfg.tokenizer).eval().to(dev.device)
    size = cfg.tokenizer.image_size
    images = torch.rand(case.batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
    images = images.to(dev.device)
    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    with torch.no_grad(), dev.autocast():
        with counter() as fc:
            model.encode_moments(images)
        flops = int(fc.get_total_flops())
        for _ in range(warmup):
            model.encode_moments(images)
        times = []
        for _ in range(repeats):
            t0 = dev.now()
            model.encode_moments(images)
            times.append(dev.now() - t0)
    return {
        "case": name,
        "kind": "encode",
        "flavour": "encode",
        "variant": "eager",
        "config": case.help,
        "batch": case.batch,
        "image_size": size,
        "patch_size": cfg.tokenizer.patch_size,
        "latent_dim": cfg.tokenizer.latent_dim,
        "encoder_size": cfg.tokenizer.encoder_size,
        "params": sum(p.numel() for p in model.encoder.parameters()),
        "warmup": warmup,
        "repeats": repeats,
        "step_seconds": times,
        "img_per_s": summary([case.batch / t for t in times]),
        "img_per_s_mean": case.batch * repeats / sum(times),
        "flops_per_img_mean": flops / case.batch,
        "gflops_achieved": summary([flops / t / 1e9 for t in times]),
    }


def _unique_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # pragma: no cover - dynamo internals move
        return -1


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """The --case mode: one row, measured in this (fresh) process."""
    case = CASES[args.case]
    rss_start = rss_mb()
    dev: BenchDevice = args.dev
    ref_before = matmul_peak(args.case_peak_seconds, dev=dev)
    dev.reset_peak_memory()
    t0 = time.perf_counter()
    if case.kind == "encode":
        row = run_encode_case(args.case, case, args)
    elif args.variant == "upstream":
        row = run_upstream_case(args.case, case, args)
    else:
        row = run_train_case(args.case, case, args.flavour, args.variant, args)
    row["wall_seconds"] = time.perf_counter() - t0
    row.update(dev.memory())  # peak_rss_mb (+ peak_cuda_mb on a GPU)
    row["rss_at_start_mb"] = rss_start  # after imports; the peak includes it
    row["device"], row["amp"] = dev.type, dev.amp
    ref_after = matmul_peak(args.case_peak_seconds, dev=dev)
    row["case_matmul_gflops"] = max(ref_before["max_gflops"], ref_after["max_gflops"])
    row["threads"] = torch.get_num_threads()
    return row


# -- the driver (benchlib.run_jobs) -------------------------------------------------------------------
def check_cases() -> None:
    """Every case's tokenizer preset is a registered tokenizer: a renamed preset fails here, at plan time."""
    known = registry.names("tokenizer")
    for name, case in CASES.items():
        if case.model is not None and case.model not in known:
            raise BenchError(
                f"case {name}: tokenizer {case.model!r} is not registered; known: {', '.join(known)}"
            )


def plan(args: argparse.Namespace) -> list[Job]:
    """Rows to run: every case; "full" for small cases (or all with --full-all); variants on request."""
    check_cases()
    names = args.cases.split(",") if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise BenchError(f"unknown case(s) {', '.join(unknown)}; choose from: {', '.join(CASES)}")
    bad = [v for v in args.ab_variants.split(",") if v not in VARIANTS or v == "upstream"]
    if bad:
        raise BenchError(f"--ab-variants: unknown {', '.join(bad)}; choose from "
                         f"{', '.join(v for v in VARIANTS if v != 'upstream')}")
    if args.upstream and args.dev != CPU:
        raise BenchError(f"--upstream: the A/B against upstream's step runs on the CPU in float32 only "
                         f"(asked: {args.dev.describe()}); pass --device cpu")
    if args.upstream and not (Path(args.upstream) / "models" / "detok.py").is_file():
        raise BenchError(f"--upstream {args.upstream}: no models/detok.py there (the root of a DeTok clone)")
    rows: list[tuple[str, str, str]] = []  # (case, flavour, variant)
    for name in names:
        case = CASES[name]
        if case.kind == "encode":
            rows.append((name, "encode", "eager"))
            continue
        for flavour in args.flavours.split(","):
            if flavour == "full" and not (case.small or args.full_all):
                continue
            rows.append((name, flavour, "eager"))
        if args.variants and (case.small or args.variants_all):
            rows += [(name, "model", v) for v in VARIANTS if v not in ("eager", "upstream")]
    jobs = [row_job(*row, args) for row in rows]
    if args.upstream:  # A/B rounds, interleaved A B, B A, A B, ... each side in a fresh process
        for name in (n for n in names if n in UPSTREAM_CASES):
            sides = [*args.ab_variants.split(","), "upstream"]
            for r in range(args.ab_rounds):  # rotated: A B, B A (two sides); A B C, B C A, C A B (three) ...
                k = r % len(sides) if len(sides) > 2 else 0
                order = sides[k:] + sides[:k] if len(sides) > 2 else (sides if r % 2 == 0 else sides[::-1])
                jobs += [row_job(name, "model", v, args, ab_round=r) for v in order]
    return jobs


def row_job(case: str, flavour: str, variant: str, args: argparse.Namespace, ab_round: int = -1) -> Job:
    """The row (case, flavour, variant), measured by this script re-invoked in --case mode."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        case,
        "--flavour",
        flavour,
        "--variant",
        variant,
        "--json",
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--case-peak-seconds",
        str(args.case_peak_seconds),
        "--device",
        args.dev.type,
        "--amp",
        args.dev.amp,
    ]
    if args.warmup:
        cmd += ["--warmup", str(args.warmup)]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    key: dict[str, Any] = {"case": case, "flavour": flavour, "variant": variant}
    if ab_round >= 0:
        cmd += ["--ab-round", str(ab_round)]
        key["ab_round"] = ab_round
        if variant == "upstream":
            cmd += ["--upstream", str(args.upstream)]
    return Job(key, cmd)


def compare(rows: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    """The share-of-peak target per model row, and detok / upstream per A/B round (same seeds, same FLOPs)."""
    peak_rows = []
    for row in rows:
        if row.get("error") or row["kind"] != "train" or row["flavour"] != "model" or "ab_round" in row:
            continue
        frac = row["gflops_achieved"]["median"] / peak
        peak_rows.append(
            {"case": row["case"], "variant": row["variant"], "peak_fraction": frac,
             "meets_peak_target": frac >= TARGET_PEAK_FRACTION}
        )
    ab: dict[str, Any] = {}
    for case in UPSTREAM_CASES:
        pairs: dict[int, dict[str, dict[str, Any]]] = {}
        for row in rows:
            if row.get("case") == case and "ab_round" in row and not row.get("error"):
                pairs.setdefault(row["ab_round"], {})[row["variant"]] = row
        variants = sorted({v for pair in pairs.values() for v in pair if v != "upstream"}, key=list(VARIANTS).index)
        for variant in variants:
            rounds = []
            for r, pair in sorted(pairs.items()):
                if variant not in pair or "upstream" not in pair:
                    continue
                ours, up = pair[variant], pair["upstream"]
                if ours["visible_tokens"] != up["visible_tokens"]:
                    raise RuntimeError(f"{case} round {r}: the two sides ran different masks")
                rounds.append(
                    {"round": r, "speedup": sum(up["step_seconds"]) / sum(ours["step_seconds"]),
                     "detok_img_per_s": ours["img_per_s_mean"], "upstream_img_per_s": up["img_per_s_mean"],
                     "detok_peak_fraction": ours["gflops_achieved"]["median"] / peak,
                     "upstream_peak_fraction": up["gflops_achieved"]["median"] / peak,
                     "flops_match": bool(up["flops_match_detok"]),
                     "detok_phases": ours["phase_seconds_median"], "upstream_phases": up["phase_seconds_median"]}
                )
            if rounds:
                speed = summary([x["speedup"] for x in rounds])
                key = case if variant == "eager" else f"{case} / {variant}"
                ab[key] = {"case": case, "variant": variant, "rounds": rounds, "speedup": speed,
                           "meets_speedup_target": speed["median"] >= TARGET_SPEEDUP}
    return {"peak": peak_rows, "upstream_ab": ab}


def print_table(result: dict[str, Any]) -> None:
    """Readable summary: one line per row, then the peak-fraction targets and the upstream A/B."""
    mp, machine = result["matmul_peak"], result["machine"]
    peak = mp["peak_gflops"]
    print(
        f"\n{machine.get('dtype', 'float32')} {MATMUL_N}^2 matmul peak on {machine.get('device', 'cpu')} "
        f"{peak:.1f} GFLOP/s (start {mp['start']['max_gflops']:.1f}, "
        f"end {mp['end']['max_gflops']:.1f}); {machine['threads']} threads, {machine['cpu']}, "
        f"torch {machine['torch']}"
    )
    head = (
        f"{'case':<18}{'flavour':<8}{'variant':<15}{'AB':>3}{'batch':>6}  {'img/s med [min-max]':<24}"
        f"{'GFLOP/img':>10}  {'GFLOP/s med [min-max]':<24}{'%peak':>6}{'vis':>6}{'RSS MB':>8}"
    ) + (f"{'CUDA MB':>9}" if machine.get("device") == "cuda" else "")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        ab = str(r["ab_round"]) if "ab_round" in r else "-"
        if r.get("error"):
            print(f"{r['case']:<18}{r['flavour']:<8}{r['variant']:<15}{ab:>3} ERROR {r['error']}")
            continue
        vis = f"{r['visible_frac_mean']:.2f}" if "visible_frac_mean" in r else "-"
        print(
            f"{r['case']:<18}{r['flavour']:<8}{r['variant']:<15}{ab:>3}{r['batch']:>6}  "
            f"{fmt_range(r['img_per_s'], '.2f'):<24}{r['flops_per_img_mean'] / 1e9:>10.3f}  "
            f"{fmt_range(r['gflops_achieved'], '.1f'):<24}{100 * r['gflops_achieved']['median'] / peak:>5.1f}%"
            f"{vis:>6}{r['peak_rss_mb']:>8.0f}" + (f"{r['peak_cuda_mb']:>9.0f}" if "peak_cuda_mb" in r else "")
        )
    comp = result["comparison"]
    if comp["peak"]:
        print(f"\nTarget >= {100 * TARGET_PEAK_FRACTION:.0f}% of the in-run peak (training step, model flavour):")
        for c in comp["peak"]:
            mark = "meets" if c["meets_peak_target"] else "below"
            print(f"  {c['case']:<14} {c['variant']:<15} {100 * c['peak_fraction']:5.1f}%  {mark}")
    if not result["settings"].get("upstream"):
        print("\nupstream A/B: skipped (pass --upstream PATH, the root of a Jiawei-Yang/DeTok clone)")
        return
    print(f"\nTarget >= {TARGET_SPEEDUP}x upstream's own training step (same run, same masks and FLOPs):")
    for case, c in comp["upstream_ab"].items():
        per = ", ".join(f"{x['speedup']:.3f}" for x in c["rounds"])
        sp = c["speedup"]
        print(f"  {case:<14} {sp['median']:.3f}x median [{sp['min']:.3f}-{sp['max']:.3f}] over rounds ({per}); "
              f"{'meets' if c['meets_speedup_target'] else 'below'} target")


def profile_one(args: argparse.Namespace) -> None:
    """Print the top operators (self CPU time) of a few training steps of one case."""
    from torch.profiler import ProfilerActivity, profile

    case = CASES[args.profile]
    cfg = run_config(case, args.flavours.split(",")[0])
    bench = TrainBench(cfg, args.flavours.split(",")[0], case.batch, "eager", seed=args.seed, dev=args.dev)
    for i in range(2):
        bench.step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.dev.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for i in range(3):
            bench.step(1000 + i)
    sort = "self_cuda_time_total" if args.dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="", help=f"comma list (default all): {', '.join(CASES)}")
    p.add_argument(
        "--flavours",
        default=None,
        help="'model' (MSE + KL) and/or 'full' (paper loss); default model,full (model only with --quick)",
    )
    p.add_argument("--full-all", action="store_true", help="the 'full' flavour also for the large cases")
    p.add_argument(
        "--variants",
        action="store_true",
        help=f"extra rows: {', '.join(v for v in VARIANTS if v != 'eager')}",
    )
    p.add_argument("--variants-all", action="store_true", help="variants also for the large cases")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps (0: per-case default, >= 2)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (0: per-case default, >= 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-seconds", type=float, default=3.0, help="matmul-peak loop, at start and at end")
    p.add_argument(
        "--case-peak-seconds", type=float, default=1.0, help="matmul loop inside each row's process"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 warm-up, 2 repeats, short peak loops, model flavour only",
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)}; none with --quick)",
    )
    p.add_argument(
        "--profile", default="", metavar="CASE", help="print a torch.profiler table of one case and exit"
    )
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of the partial result at --out (same settings) and run only the missing ones",
    )
    p.add_argument(
        "--upstream",
        default="",
        metavar="PATH",
        help="root of a Jiawei-Yang/DeTok clone (kept outside this repository): adds A/B rows of its own "
        f"training step against detok's for {', '.join(UPSTREAM_CASES)}",
    )
    p.add_argument("--ab-rounds", type=int, default=3, help="A/B rounds per case with --upstream")
    p.add_argument("--ab-variants", default="eager", help="detok's side(s) of the A/B rounds, comma list of "
                   "variants (e.g. eager,compile_blocks): each round runs each of them and upstream, order rotated")
    # internal: one row in this process
    add_device_args(p)
    p.add_argument("--ab-round", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--case", default="", help=argparse.SUPPRESS)
    p.add_argument("--flavour", default="model", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="eager", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.dev = bench_device(args.device, args.amp)
    except BenchError as err:  # one line, exit 2
        print(f"bench_tokenizer.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.flavours is None:
        args.flavours = "model" if args.quick else "model,full"
    if args.quick:
        args.warmup, args.repeats = args.warmup or 1, args.repeats or 2
        args.peak_seconds, args.case_peak_seconds = (
            min(args.peak_seconds, 1.0),
            min(args.case_peak_seconds, 0.3),
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    if args.case:
        row = run_one(args)
        print(JSON_MARK + json.dumps(row) if args.json else json.dumps(row, indent=2), flush=True)
        return row
    if args.profile:
        profile_one(args)
        return None
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    out = args.out or (None if args.quick else str(DEFAULT_OUT))
    print(f"[bench] rows on {args.dev.describe()}" if torch.cuda.is_available() else f"[bench] {NO_CUDA}",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        jobs = plan(args)
        header = {
            "command": command,
            "machine": machine_info(args.threads, args.dev),
            "settings": {
                k: v for k, v in vars(args).items() if k not in ("case", "flavour", "variant", "json", "dev")
            } | {"device": args.dev.type, "amp": args.dev.amp},
            "variants": VARIANTS,
            "cases": {k: asdict(v) for k, v in CASES.items()},
            "upstream_cases": list(UPSTREAM_CASES),
        }
        result = run_jobs(jobs, header, out, peak_seconds=args.peak_seconds, resume=args.resume, dev=args.dev)
    except BenchError as err:  # before any row ran: one line, no traceback
        print(f"bench_tokenizer.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    result["comparison"] = compare(result["rows"], result["matmul_peak"]["peak_gflops"])
    if out:
        write_json(out, result)
    print_table(result)
    if out:
        print(f"\n[bench] wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
