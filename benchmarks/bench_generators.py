"""Generator benchmark: sampling and training throughput, and RasterAR sampling with vs without the KV cache.

Method and results: docs/benchmarks.md ("Generators"). Every case runs in a fresh subprocess (this script
re-invoked with --case ... --json) so peak RSS does not mix between cases; the float32 2048 x 2048 matmul
peak is measured in the parent at the start and at the end of the run (and briefly inside each case). The
result file is rewritten after every case ("partial": true until the run ends); --resume continues an
interrupted run.

Throughput is in latents/s: generator sampling only, the tokenizer decode is NOT included.

    python benchmarks/bench_generators.py                       # all cases -> docs/benchmarks/generators.json
    python benchmarks/bench_generators.py --groups kv           # only the KV-cache cases
    python benchmarks/bench_generators.py --quick --out /tmp/gen.json   # smoke test (tiny, few steps)
    python benchmarks/bench_generators.py --resume              # continue an interrupted run (same settings)

Sections (``--groups``, comma list):
  sample  sampling throughput, tiny and B size, 16x16x16 latents, 1000 classes, paper step counts
  train   training throughput at B size, batch 4: forward + backward + AdamW step (+ EMA update)
  kv      RasterAR at upstream's "small" setting (512 wide, 8 layers, 8 heads, DiffLoss d3 w1024, ~59M
          parameters), batch 2, 256 tokens, 20 diffusion steps per token: (a) the transformer part alone
          with the cache vs recomputing the prefix, (b) whole-image sampling with vs without the cache
  kv_extra  (not default) kv_whole_cfg: the whole-image comparison with CFG 4.0

Rows that do not run the whole sampler say so ("extrapolated from k of N steps"): the sampler is
stopped after its k-th step (the model call / AR step that is counted raises), the time scaled by N / k.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
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
from detok.nn.optim import adamw

DEFAULT_OUT = REPO / "docs" / "benchmarks" / "generators.json"
LATENT = (16, 16, 16)
NUM_CLASSES = 1000
QUICKSTART_LATENT = (8, 8, 8)  # the quickstart tokenizer's latent (quickstart_shapes.yaml: 32 px, patch 4, dim 8)
QUICKSTART_CLASSES = 10

TARGET_BACKBONE_SPEEDUP = 5.0  # transformer part: cache vs recompute
TARGET_WHOLE_SPEEDUP = 3.0  # whole-image RasterAR sampling vs the no-cache algorithm, same run
WHOLE_RUN_LIMIT_S = 180.0  # longer whole-image runs are timed on the first k tokens and extrapolated
DEV: BenchDevice = CPU  # where this process's row runs (set by main from --device / --amp)
SMALL_AR = {
    "width": 512,
    "depth": 8,
    "heads": 8,
    "diffloss_d": 3,
    "diffloss_w": 1024,
    "num_sampling_steps": "20",
}


@dataclass(frozen=True)
class Case:
    """One benchmark configuration (one fresh process)."""

    kind: str  # "sample", "train", "kv_backbone", "kv_whole"
    group: str  # "sample", "train", "kv"
    model: str  # registry name
    batch: int
    warmup: int
    repeats: int
    cfg: float = 1.0
    steps: str | None = None  # sampler steps (None: the generator's paper default)
    stop_after: int = 0  # time the first k steps only and extrapolate (0: whole sampler)
    overrides: dict[str, Any] = field(default_factory=dict)
    help: str = ""
    recipe: str = ""  # a quickstart recipe: model, generator overrides and batch from it, QUICKSTART_LATENT


def _s(model: str, batch: int, warmup: int, repeats: int, stop: int = 0, **kw) -> Case:
    return Case("sample", "sample", model, batch, warmup, repeats, stop_after=stop, **kw)


def _t(model: str) -> Case:
    return Case("train", "train", model, 4, 1, 3, help="batch 4: forward + backward + AdamW (+ EMA)")


def _q(family: str) -> Case:
    """The training step of `detok quickstart`'s generator: its recipe's model and batch, on its latents."""
    return Case("train", "train", "", 0, 2, 5, recipe=f"quickstart_{family}",
                help=f"quickstart_{family}.yaml: its model, overrides and batch; latents {QUICKSTART_LATENT}")


CASES: dict[str, Case] = {
    # -- sampling, tiny (overhead-bound: per-call Python / kernel launch cost dominates) --------------------
    "sample_dit_tiny": _s("dit_tiny", 8, 1, 5, help="DDPM, 100 respaced steps (learned sigma)"),
    "sample_sit_tiny": _s("sit_tiny", 8, 1, 5, help="dopri5 (atol 1e-6, rtol 1e-3), 250 output points"),
    "sample_lightningdit_tiny": _s(
        "lightningdit_tiny", 16, 2, 5, help="Euler, 100 points (99 steps), shift 0.3"
    ),
    "sample_mar_tiny": _s("mar_tiny", 8, 1, 5, 16, help="64 AR iterations (paper eval 256), 100 head steps"),
    "sample_mar_tiny_256": _s("mar_tiny", 8, 1, 5, 32, steps="256", help="256 AR iterations (paper eval)"),
    "sample_rasterar_tiny": _s("rasterar_tiny", 8, 1, 5, 16, help="256 tokens, 100 head steps, KV cache"),
    "sample_randomar_tiny": _s("randomar_tiny", 8, 1, 5, 16, help="256 tokens, 100 head steps, KV cache"),
    # -- sampling, B size, batch 1 ------------------------------------------------------------------------------
    "sample_dit_b": _s("dit_b", 1, 1, 5, 2, help="DDPM, 100 respaced steps"),
    "sample_dit_b_cfg4": _s("dit_b", 1, 1, 5, 2, cfg=4.0, help="DDPM, 100 respaced steps, CFG 4.0"),
    "sample_sit_b": _s("sit_b", 1, 1, 5, 2, help="dopri5, 250 output points; NFE counted"),
    "sample_lightningdit_b": _s("lightningdit_b", 1, 1, 5, 2, help="Euler, 100 points (99 steps)"),
    "sample_mar_b": _s("mar_b", 1, 1, 3, 2, help="64 AR iterations (paper eval 256), 100 head steps"),
    "sample_rasterar_b": _s("rasterar_b", 1, 1, 5, 4, help="256 tokens, 100 head steps, KV cache"),
    "sample_randomar_b": _s("randomar_b", 1, 1, 5, 4, help="256 tokens, 100 head steps, KV cache"),
    # -- training, B size, batch 4 ------------------------------------------------------------------------------
    "train_dit_b": _t("dit_b"),
    "train_sit_b": _t("sit_b"),
    "train_lightningdit_b": _t("lightningdit_b"),
    "train_mar_b": _t("mar_b"),
    "train_rasterar_b": _t("rasterar_b"),
    "train_randomar_b": _t("randomar_b"),
    # -- training, the quickstart recipes (what `detok quickstart` trains) -----------------------------------
    "train_sit_quickstart": _q("sit"),
    "train_mar_quickstart": _q("mar"),
    "train_rasterar_quickstart": _q("rasterar"),
    # -- training, tiny: smoke test only (--quick), not in any default group --------------------------------
    "train_dit_tiny": Case("train", "smoke", "dit_tiny", 4, 1, 1, help="smoke"),
    "train_mar_tiny": Case("train", "smoke", "mar_tiny", 4, 1, 1, help="smoke"),
    "train_rasterar_tiny": Case("train", "smoke", "rasterar_tiny", 4, 1, 1, help="smoke"),
    # -- KV cache, upstream's small RasterAR, batch 2, 20 diffusion steps per token ---------------------------
    "kv_backbone": Case(
        "kv_backbone",
        "kv",
        "rasterar_b",
        2,
        1,
        5,
        overrides=SMALL_AR,
        help="transformer part only (the head returns zeros): cache vs recomputing the prefix",
    ),  # fmt: skip
    "kv_whole": Case(
        "kv_whole",
        "kv",
        "rasterar_b",
        2,
        1,
        3,
        overrides=SMALL_AR,
        help="whole-image sampling, 20 diffusion steps per token: cache vs no cache",
    ),  # fmt: skip
    "kv_whole_cfg": Case(
        "kv_whole",
        "kv_extra",
        "rasterar_b",
        2,
        1,
        3,
        cfg=4.0,
        overrides=SMALL_AR,
        help="as kv_whole with CFG 4.0 (doubled backbone batch and head batch); not run by default",
    ),  # fmt: skip
}
QUICK_CASES = ["sample_dit_tiny", "sample_sit_tiny", "sample_mar_tiny", "sample_rasterar_tiny", "train_dit_tiny",
               "train_mar_tiny", "train_rasterar_tiny", "kv_backbone", "kv_whole"]  # fmt: skip
ORDER = ["kv", "sample", "train"]  # the headline comparison first


# -- FLOP counting (as bench_tokenizer.py) ---------------------------------------------------------------
# -- the machine -------------------------------------------------------------------------------------------
# -- instrumentation -----------------------------------------------------------------------------------
class Stop(Exception):
    """Raised by a Probe after its k-th call: the sampler is cut there."""


class Probe:
    """Replaces `owner.<attr>` (an instance attribute shadowing the method; src/ is untouched).

    Counts calls, times each call, records when each call ended (relative to `reset`), optionally replaces
    the call by `fake`, and raises Stop after `stop_after` calls (0: never).
    """

    def __init__(self, owner: Any, attr: str, fake: Callable | None = None) -> None:
        self.owner, self.attr = owner, attr
        self.real = getattr(owner, attr)
        self.fake = fake
        self.stop_after = 0
        self.reset()
        setattr(owner, attr, self)

    def reset(self, stop_after: int | None = None) -> None:
        self.calls, self.inside, self.ends = 0, 0.0, []
        self.t0 = DEV.now()
        if stop_after is not None:
            self.stop_after = stop_after

    def __call__(self, *args, **kwargs):
        ta = DEV.now()
        out = (self.fake or self.real)(*args, **kwargs)
        tb = DEV.now()
        self.calls += 1
        self.inside += tb - ta
        self.ends.append(tb - self.t0)
        if self.stop_after and self.calls >= self.stop_after:
            raise Stop
        return out


def resolved(case: Case) -> Case:
    """A recipe case with its model, generator overrides and batch read from the recipe YAML."""
    if not case.recipe:
        return case
    from detok.runs.config import generator_config

    cfg = generator_config([case.recipe])
    return replace(case, model=cfg.model, overrides={**cfg.generator, **case.overrides},
                   batch=cfg.train.global_batch_size)  # fmt: skip


def shapes(case: Case) -> tuple[tuple[int, ...], int]:
    """(latent shape, classes) of a case."""
    return (QUICKSTART_LATENT, QUICKSTART_CLASSES) if case.recipe else (LATENT, NUM_CLASSES)


def build(case: Case, **extra: Any):
    from detok.generators.load import build_generator

    latent, classes = shapes(case)
    return build_generator(case.model, latent, classes, {**case.overrides, **extra}).to(DEV.device)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def labels_for(batch: int, seed: int) -> torch.Tensor:
    return torch.randint(0, NUM_CLASSES, (batch,), generator=torch.Generator().manual_seed(seed)).to(DEV.device)


def family(model: str) -> registry.Family:
    """The registered family of a generator preset (what its sampling steps mean: `.sampling`)."""
    return registry.family_of("generator", model)


def _dit_steps(gen, case: Case) -> tuple[int, str]:
    return len(gen.respaced(str(case.steps or gen.cfg.sample_steps)).timestep_map), "DDPM steps (NFE)"


def _lightningdit_steps(gen, case: Case) -> tuple[int, str]:
    return int(case.steps or gen.cfg.sample_steps) - 1, "Euler steps (NFE)"


def _sit_steps(gen, case: Case) -> tuple[int, str]:
    return -1, "dopri5 NFE (counted)"  # adaptive: run_sample_case counts the model calls


def _mar_steps(gen, case: Case) -> tuple[int, str]:
    return int(case.steps or gen.cfg.num_iter), "AR iterations"


def _token_steps(gen, case: Case) -> tuple[int, str]:
    return gen.seq_len, "tokens (AR steps)"


# family -> (N, unit) of its sampler's outer loop, as `Probe` counts it (the net's forward for the
# diffusion / flow families, the per-token head's sample for MAR / AR); a family missing here is an error
STEP_COUNTS: dict[str, Callable[[Any, Case], tuple[int, str]]] = {
    "dit": _dit_steps,
    "sit": _sit_steps,
    "lightningdit": _lightningdit_steps,
    "mar": _mar_steps,
    "rasterar": _token_steps,
    "randomar": _token_steps,
}


def total_steps(gen, case: Case) -> tuple[int, str]:
    """(N, unit) of the sampler run by `case`: model calls for the DiT family, AR steps for MAR / AR."""
    fam = family(case.model).name
    if fam not in STEP_COUNTS:
        raise BenchError(f"{case.model}: no step count for generator family {fam!r} in bench_generators.py "
                         f"(known: {', '.join(STEP_COUNTS)}); add one to STEP_COUNTS")  # fmt: skip
    return STEP_COUNTS[fam](gen, case)


def check_cases(cases: dict[str, Case]) -> None:
    """Every case names a registered generator, and every sampling case one whose steps it can count.

    Run at plan time, so a renamed preset or a new family fails loudly before any case runs.
    """
    known = registry.names("generator")
    for name, case in cases.items():
        case = resolved(case)
        if case.model not in known:
            raise BenchError(
                f"case {name}: generator {case.model!r} is not registered; known: {', '.join(known)}"
            )
        fam = family(case.model)
        if case.kind == "sample" and fam.name not in STEP_COUNTS:
            raise BenchError(f"case {name}: no step count for generator family {fam.name!r} "
                             f"(known: {', '.join(STEP_COUNTS)}); add one to STEP_COUNTS")  # fmt: skip
        if case.steps is not None and fam.sampling is not None and fam.sampling.fixed_steps:
            raise BenchError(f"case {name}: {fam.name} samples {fam.sampling.steps}; its steps cannot be set")


# -- sampling ------------------------------------------------------------------------------------------
def run_sample_case(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Whole sampler (or its first k steps, extrapolated), warm-up first (the first one FLOP-counted)."""
    torch.manual_seed(args.seed)
    gen = build(case).eval()
    fam = family(case.model)
    labels = labels_for(case.batch, args.seed)
    n_total, unit = total_steps(gen, case)
    # one sampler step: a call of the per-token head (MAR / AR families) or of the network (diffusion / flow)
    has_head = fam.sampling is not None and bool(fam.sampling.head_steps)
    stepper = Probe(gen.diffloss, "sample") if has_head else Probe(gen.net, "forward")
    head = stepper if has_head else None
    nfe_note = ""
    if fam.name == "sit":
        # dopri5 is adaptive: count its model calls. This untrained SiT outputs exactly v = 0 (zero-init output
        # layer), so a zero model gives the solver the identical trajectory: count on it (no compute).
        with torch.no_grad():
            x = torch.randn(1, *LATENT, device=DEV.device)
            zero_out = bool(stepper.real(x, torch.rand(1, device=DEV.device), labels[:1]).abs().max() == 0)
        stepper.fake = lambda x, t, y: torch.zeros_like(x)
        stepper.reset(0)
        gen.sample(case.batch, labels, cfg_scale=case.cfg, rng=DEV.generator(args.seed))
        n_total = stepper.calls
        stepper.fake = None
        nfe_note = (f"NFE counted on this untrained model (output exactly 0: {zero_out}); a trained SiT's "
                    "velocity field needs more dopri5 steps")  # fmt: skip
    k = case.stop_after if 0 < case.stop_after < n_total else 0
    if args.quick and not k:
        k = min(n_total, 4)  # smoke test: never run a whole sampler
        k = 0 if k >= n_total else k
    kwargs: dict[str, Any] = {}
    if case.steps is not None:
        kwargs["steps"] = case.steps

    def once(seed: int) -> tuple[float, float]:
        stepper.reset(k)
        g = DEV.generator(seed)
        t0 = DEV.now()
        try:
            with DEV.autocast():
                gen.sample(case.batch, labels, cfg_scale=case.cfg, rng=g, **kwargs)
        except Stop:
            pass
        return DEV.now() - t0, stepper.inside

    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    steps_run = k or n_total
    # FLOPs: FlopCounterMode's per-op Python cost would dominate an overhead-bound sampler, so count the first
    # c steps in a run of their own and scale to the timed steps (exact for a uniform per-step cost).
    c_steps = min(2, steps_run)
    k_timed = k
    k = c_steps if c_steps < n_total else 0
    with counter() as fc:
        once(args.seed)
    k = k_timed
    flops_run = int(fc.get_total_flops()) / c_steps * steps_run
    for i in range(warmup):
        once(args.seed + 1 + i)
    times, heads = [], []
    for i in range(repeats):
        t, h = once(args.seed + 100 + i)
        times.append(t)
        heads.append(h)
    scale = n_total / steps_run
    per_batch = [t * scale for t in times]
    row = {
        "case": name,
        "kind": "sample",
        "model": case.model,
        "config": case.help,
        "params": n_params(gen),
        "batch": case.batch,
        "cfg": case.cfg,
        "steps_arg": case.steps,
        "total_steps": n_total,
        "step_unit": unit,
        "steps_timed": steps_run,
        "extrapolated": bool(k),
        "label": f"extrapolated from {k} of {n_total} steps" if k else "whole sampler",
        "nfe_note": nfe_note,
        "warmup": warmup,
        "repeats": repeats,
        "seconds_timed": times,
        "seconds_per_batch": summary(per_batch),
        "seconds_per_step": summary([t / steps_run for t in times]),
        "latents_per_s": summary([case.batch / t for t in per_batch]),
        "flops_per_latent": flops_run * scale / case.batch,
        "flops_note": f"counted on the first {c_steps} steps, scaled to {n_total}",
        "gflops_achieved": summary([flops_run / t / 1e9 for t in times]),
    }
    if head is not None:
        row["head_fraction"] = summary([h / t for h, t in zip(heads, times)])
    return row


# -- training ------------------------------------------------------------------------------------------
def run_train_case(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """`gen.loss` forward, backward, AdamW (generator recipe: lr 2e-4, betas 0.9/0.95, no wd, no clip), EMA."""
    from detok.engine.ema import EMA
    from detok.engine.trainer import compile_blocks

    torch.manual_seed(args.seed)
    case = resolved(case)
    gen = build(case).train()
    opt = adamw([{"params": list(gen.parameters()), "weight_decay": 0.0}], 2e-4, (0.9, 0.95))  # the engine's
    ema = EMA(gen, 0.9999)
    g = torch.Generator().manual_seed(args.seed + 1)
    latent, classes = shapes(case)
    latents = torch.randn(case.batch, *latent, generator=g).to(DEV.device)
    labels = torch.randint(0, classes, (case.batch,), generator=torch.Generator().manual_seed(args.seed))
    labels = labels.to(DEV.device)
    rng = torch.Generator(device=DEV.device)  # the engine's: on the training device

    def step(seed: int) -> dict[str, float]:
        rng.manual_seed(seed)
        t0 = DEV.now()
        with DEV.autocast():  # forward and loss, as the engine's train.precision
            out = gen.loss(latents, labels, rng)
        t1 = DEV.now()
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        t2 = DEV.now()
        opt.step()
        t3 = DEV.now()
        ema.update(gen)
        t4 = DEV.now()
        if not torch.isfinite(out["loss"].detach()):
            raise FloatingPointError(f"non-finite loss in {name}")
        mr = float(out["mask_ratio"]) if "mask_ratio" in out else None
        return {"total": t4 - t0, "forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "ema": t4 - t3,
                "mask_ratio": mr}  # fmt: skip

    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    with counter() as fc:
        first = step(args.seed)  # warm-up 1, FLOP-counted (forward + backward; AdamW / EMA count 0)
    flops = int(fc.get_total_flops())
    # train.compile=blocks: compiled after the eager FLOP count; the warm-up steps include the compilation
    compiled = compile_blocks(gen) if args.variant == "compile_blocks" else 0
    for i in range(1, max(warmup, 2 if compiled else 1)):
        step(args.seed + i)
    phases = [step(args.seed + 100 + i) for i in range(repeats)]
    times = [p["total"] for p in phases]
    row = {
        "case": name,
        "kind": "train",
        "variant": args.variant,
        "compiled_blocks": compiled,
        "model": case.model,
        "config": case.help,
        "params": n_params(gen),
        "batch": case.batch,
        "warmup": warmup,
        "repeats": repeats,
        "step_seconds": times,
        "latents_per_s": summary([case.batch / t for t in times]),
        "flops_per_step_counted": flops,
        "flops_per_latent": flops / case.batch,
        "gflops_achieved": summary([flops / t / 1e9 for t in times]),
        "phase_seconds_median": {
            k: statistics.median(p[k] for p in phases) for k in ("forward", "backward", "optimizer", "ema")
        },  # fmt: skip
    }
    if first["mask_ratio"] is not None:
        row["mask_ratio_counted_step"] = first["mask_ratio"]
        row["mask_ratio_timed_steps"] = [p["mask_ratio"] for p in phases]
        row["flops_note"] = "MAR's FLOPs depend on the drawn mask ratio: counted on the warm-up step only"
    return row


# -- KV cache ------------------------------------------------------------------------------------------
def small_ar(case: Case, args: argparse.Namespace):
    torch.manual_seed(args.seed)
    gen = build(case).eval()
    info = {
        "params": n_params(gen),
        "params_head": n_params(gen.diffloss),
        "params_backbone": n_params(gen) - n_params(gen.diffloss),
        "arch": dict(SMALL_AR),
    }
    return gen, info


def run_kv_backbone(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """The transformer part of RasterAR sampling: cached loop vs recomputing the prefix every token.

    The head is replaced by zeros, so `sample` runs only the backbone, z_proj and the embeddings per token.
    With the cache: the whole 256-token loop, timed. Without: the per-token cost grows with the prefix, so
    (1) the real no-cache loop is timed on its first k tokens (directly), and (2) the whole 256-token cost is
    integrated from `transformer` timed at several prefix lengths n (what the no-cache loop calls at token n),
    linearly interpolated over n = 1..256; FLOPs of every prefix length from an exact quadratic fit of counted
    FLOPs. (1) checks (2) on the first k tokens.
    """
    gen, info = small_ar(case, args)
    c = gen.token_dim
    head = Probe(gen.diffloss, "sample", fake=lambda z, z_uncond=None, **kw: torch.zeros(z.shape[0], c, device=z.device))
    labels = labels_for(case.batch, args.seed)
    n_tok = gen.seq_len
    k_direct = 8 if args.quick else 48

    def loop(cache: bool, stop: int = 0) -> tuple[float, list[float]]:
        head.reset(stop)
        t0 = DEV.now()
        try:
            with DEV.autocast():
                gen.sample(case.batch, labels, cfg_scale=1.0, rng=DEV.generator(0), use_kv_cache=cache)
        except Stop:
            pass
        return DEV.now() - t0, list(head.ends)

    lengths = [1, 8, 32, 64, 128, 192, 256] if not args.quick else [1, 64, 256]
    d = gen.cfg.width

    def prefix(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(n)
        return torch.randn(case.batch, n, d, generator=g).to(DEV.device), gen.conditions(labels, n)

    def prefix_call(n: int, x: torch.Tensor, cond: torch.Tensor) -> float:
        t0 = DEV.now()
        with DEV.autocast():
            gen.transformer(x, cond)[:, -1]
        return DEV.now() - t0

    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    with torch.no_grad():
        # FLOPs: the cached loop (whole), the prefix calls (exact quadratic in n, checked on a 4th length)
        with counter() as fc:
            loop(True, 16 if args.quick else 0)
        flops_cached = int(fc.get_total_flops())
        pflops = {}
        for n in sorted({1, 64, 128, 256} | set(lengths)):
            x, cond = prefix(n)
            with counter() as fc:
                gen.transformer(x, cond)[:, -1]
            pflops[n] = int(fc.get_total_flops())
        fit_pts = [1, 128, 256]
        coef = np.polyfit(np.array(fit_pts, float), np.array([pflops[n] for n in fit_pts], float), 2)
        fit_err = abs(np.polyval(coef, 64) - pflops[64]) / pflops[64]
        flops_recompute = float(sum(np.polyval(coef, n) for n in range(1, n_tok + 1)))
        inputs = {n: prefix(n) for n in lengths}
        for _ in range(warmup):
            loop(True, 16 if args.quick else 0)
            loop(False, k_direct)
            for n in lengths:
                prefix_call(n, *inputs[n])
        cached, direct, direct_ends, sweeps = [], [], [], {n: [] for n in lengths}
        for _ in range(repeats):  # interleaved
            t, cached_ends = loop(True, 16 if args.quick else 0)
            cached.append(t)
            t, ends = loop(False, k_direct)
            direct.append(t)
            direct_ends.append(ends)
            for n in lengths:
                sweeps[n].append(prefix_call(n, *inputs[n]))
    med = {n: statistics.median(v) for n, v in sweeps.items()}
    xs = np.array(lengths, float)

    def integrate(times_by_n: dict[int, float], upto: int) -> float:
        ys = np.array([times_by_n[n] for n in lengths])
        return float(np.interp(np.arange(1, upto + 1, dtype=float), xs, ys).sum())

    if args.quick:  # smoke only: the cached loop ran 16 tokens
        cached = [t * n_tok / 16 for t in cached]
        flops_cached = flops_cached * n_tok // 16
    recompute_runs = [integrate({n: sweeps[n][i] for n in lengths}, n_tok) for i in range(repeats)]
    recompute_first_k_model = integrate(med, k_direct)
    speedups = [r / c for r, c in zip(recompute_runs, cached)]
    return {
        "case": name,
        "kind": "kv_backbone",
        "model": "rasterar (upstream 'small': width 512, 8 layers, 8 heads, DiffLoss d3 w1024)",
        "config": case.help,
        **info,
        "batch": case.batch,
        "tokens": n_tok,
        "warmup": warmup,
        "repeats": repeats,
        "cached_seconds": summary(cached),
        "cached_runs": cached,
        "recompute_seconds_integrated": summary(recompute_runs),
        "recompute_runs_integrated": recompute_runs,
        "recompute_label": f"integrated from transformer calls timed at prefix lengths {lengths}",
        "prefix_seconds_median": med,
        "prefix_flops": pflops,
        "prefix_flops_quadratic_fit_error_at_64": fit_err,
        "direct_first_k": k_direct,
        "recompute_first_k_direct_seconds": summary(direct),
        "recompute_first_k_from_model_seconds": recompute_first_k_model,
        "cached_token_seconds_first_last_32": [
            cached_ends[31] / 32 if len(cached_ends) >= 32 else None,
            (cached_ends[-1] - cached_ends[-33]) / 32 if len(cached_ends) >= 64 else None,
        ],
        "flops_cached": flops_cached,
        "flops_recompute": flops_recompute,
        "gflops_cached": flops_cached / statistics.median(cached) / 1e9,
        "gflops_recompute": flops_recompute / statistics.median(recompute_runs) / 1e9,
        "speedup": summary(speedups),
        "meets_target": statistics.median(speedups) >= TARGET_BACKBONE_SPEEDUP,
    }


def run_kv_whole(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Whole-image RasterAR sampling, 20 diffusion steps per token, cache vs no cache (real head).

    Warm-up: both variants on their first 8 tokens. Then, interleaved, `repeats` cached runs and
    `--kv-nocache-repeats` no-cache runs of the whole image (or, if the no-cache run is predicted to take more
    than WHOLE_RUN_LIMIT_S, both on their first k tokens, extrapolated: labelled). The head's share of each run
    is measured by timing `diffloss.sample` inside it.
    """
    gen, info = small_ar(case, args)
    fast_head = gen.diffloss.sample  # detok's head: adaLN outputs of all steps precomputed
    plain_head = gen.diffloss.sample_plain  # the whole head at every step (upstream's algorithm)
    head = Probe(gen.diffloss, "sample")
    labels = labels_for(case.batch, args.seed)
    n_tok = gen.seq_len
    steps = "2" if args.quick else None  # quick: 2 head steps per token (smoke only)

    def run(cache: bool, stop: int = 0, seed: int = 0) -> dict[str, Any]:
        """cache: detok's sampler (KV cache, precomputed head); else upstream's algorithm (neither)."""
        head.reset(stop)
        head.real = fast_head if cache else plain_head
        kw = {"head_steps": steps} if steps else {}
        t0 = DEV.now()
        try:
            with DEV.autocast():
                gen.sample(case.batch, labels, cfg_scale=case.cfg, rng=DEV.generator(seed),
                           use_kv_cache=cache, **kw)  # fmt: skip
        except Stop:
            pass
        return {"seconds": DEV.now() - t0, "head_seconds": head.inside, "tokens": head.calls}

    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    nc_repeats = args.kv_nocache_repeats
    with torch.no_grad():
        w_c = [run(True, 8) for _ in range(warmup)][-1]
        w_n = [run(False, 8) for _ in range(warmup)][-1]
        # predict the no-cache whole run: head per token (from the cached warm-up) + the prefix recompute,
        # sum over n of T(n) ~ 256 / 2 * T(256) (T linear in n), T(256) timed once
        x = torch.randn(case.batch, n_tok, gen.cfg.width, device=DEV.device)
        cond = gen.conditions(labels, n_tok)
        with DEV.autocast():
            gen.transformer(x, cond)
            t0 = DEV.now()
            gen.transformer(x, cond)
            t256 = DEV.now() - t0
        predicted = w_n["head_seconds"] / w_n["tokens"] * n_tok + (n_tok + 1) / 2 * t256
        k = 16 if args.quick else (0 if predicted <= WHOLE_RUN_LIMIT_S else 64)
        order = ["c", "n"] * min(repeats, nc_repeats) + ["c"] * max(0, repeats - nc_repeats)
        order += ["n"] * max(0, nc_repeats - repeats)
        runs = {"c": [], "n": []}
        for i, v in enumerate(order):
            runs[v].append(run(v == "c", k, seed=args.seed + 100 + i))
    scale = n_tok / k if k else 1.0

    def stats(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "seconds_per_batch": summary([r["seconds"] * scale for r in rs]),
            "seconds_timed": [r["seconds"] for r in rs],
            "head_seconds": [r["head_seconds"] for r in rs],
            "backbone_and_rest_seconds": summary([(r["seconds"] - r["head_seconds"]) * scale for r in rs]),
            "runs": len(rs),
        }

    c_med = statistics.median(r["seconds"] for r in runs["c"]) * scale
    n_med = statistics.median(r["seconds"] for r in runs["n"]) * scale if runs["n"] else None
    return {
        "case": name,
        "kind": "kv_whole",
        "model": "rasterar (upstream 'small': width 512, 8 layers, 8 heads, DiffLoss d3 w1024)",
        "config": case.help,
        **info,
        "batch": case.batch,
        "tokens": n_tok,
        "diffusion_steps_per_token": int(steps or gen.cfg.num_sampling_steps),
        "cfg": case.cfg,
        "warmup": f"{warmup} x first 8 tokens, each variant",
        "warmup_runs": {"cached": w_c, "no_cache": w_n},
        "predicted_no_cache_seconds": predicted,
        "label": f"extrapolated from the first {k} of {n_tok} tokens" if k else "whole image",
        "cached": stats(runs["c"]),
        "no_cache": stats(runs["n"]) if runs["n"] else None,
        "cache_speedup": (n_med / c_med) if n_med else None,
        "variants": {"cached": "KV cache + head with every step's adaLN outputs precomputed (DiffLoss.sample)",
                     "no_cache": "prefix recomputed every token + the whole head every step (DiffLoss.sample_plain):"
                                 " upstream's generate() algorithm"},  # fmt: skip
        "note_no_cache": "the first-k extrapolation underestimates the no-cache run (its per-token cost grows)"
        if k
        else "",
    }


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    case = CASES[args.case]
    rss_start = rss_mb()
    before = matmul_peak(args.case_peak_seconds, dev=DEV)
    DEV.reset_peak_memory()
    t0 = time.perf_counter()
    fn = {"sample": run_sample_case, "train": run_train_case, "kv_backbone": run_kv_backbone,
          "kv_whole": run_kv_whole}[case.kind]  # fmt: skip
    row = fn(args.case, case, args)
    row["wall_seconds"] = time.perf_counter() - t0
    row.update(DEV.memory())  # peak_rss_mb (+ peak_cuda_mb on a GPU)
    row["rss_at_start_mb"] = rss_start
    row["device"], row["amp"] = DEV.type, DEV.amp
    after = matmul_peak(args.case_peak_seconds, dev=DEV)
    row["case_matmul_gflops"] = max(before["max_gflops"], after["max_gflops"])
    row["threads"] = torch.get_num_threads()
    return row


# -- the driver (benchlib.run_jobs) -------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[Job]:
    """The cases to run (--cases, else --quick's, else --groups' in ORDER), each a fresh process."""
    check_cases(CASES)
    if args.cases:
        names = args.cases.split(",")
    elif args.quick:
        names = QUICK_CASES
    else:
        groups = args.groups.split(",")
        names = [n for g in ORDER if g in groups for n, c in CASES.items() if c.group == g]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise BenchError(f"unknown case(s) {', '.join(unknown)}; choose from: {', '.join(CASES)}")
    jobs = [case_job(name, args) for name in names]
    if args.variants:  # train.compile=blocks beside every training row
        jobs += [case_job(n, args, "compile_blocks") for n in names if CASES[n].kind == "train"]
    return jobs


def case_job(name: str, args: argparse.Namespace, variant: str = "eager") -> Job:
    """The case `name`, measured by this script re-invoked in --case mode."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--json", "--threads", str(args.threads),
           "--seed", str(args.seed), "--case-peak-seconds", str(args.case_peak_seconds),
           "--kv-nocache-repeats", str(args.kv_nocache_repeats), "--device", DEV.type, "--amp", DEV.amp]  # fmt: skip
    if args.warmup:
        cmd += ["--warmup", str(args.warmup)]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    if args.quick:
        cmd += ["--quick"]
    if variant != "eager":
        cmd += ["--variant", variant]
    return Job({"case": name, "kind": CASES[name].kind, "variant": variant}, cmd, label=f"{name} / {variant}")


def compare_kv(rows: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    """The two targets, each a ratio measured in one run: transformer part and whole image, cache vs none."""
    out: dict[str, Any] = {}
    for r in rows:
        if r.get("error"):
            continue
        if r["kind"] == "kv_backbone":
            out["backbone"] = {
                "speedup_median": r["speedup"]["median"],
                "target": TARGET_BACKBONE_SPEEDUP,
                "meets_target": r["meets_target"],
            }
        if r["kind"] == "kv_whole" and r["cfg"] == 1.0 and r["cache_speedup"]:
            item = {
                "cached_seconds": r["cached"]["seconds_per_batch"]["median"],
                "no_cache_seconds": r["no_cache"]["seconds_per_batch"]["median"],
                "speedup": r["cache_speedup"],
                "target": TARGET_WHOLE_SPEEDUP,
                "meets_target": r["cache_speedup"] >= TARGET_WHOLE_SPEEDUP,
                "label": r["label"],
            }
            out["whole"] = item
    return out


def print_table(result: dict[str, Any]) -> None:
    mp, machine = result["matmul_peak"], result["machine"]
    peak = mp["peak_gflops"]
    print(
        f"\n{machine.get('dtype', 'float32')} {MATMUL_N}^2 matmul peak on {machine.get('device', 'cpu')} "
        f"{peak:.1f} GFLOP/s (start {mp['start']['max_gflops']:.1f}, end "
        f"{mp['end']['max_gflops']:.1f}); {machine['threads']} threads, {machine['cpu']}, torch {machine['torch']}"
    )
    print("latents/s: generator sampling only, tokenizer decode NOT included; 16x16x16 latents, 1000 classes")
    rows = result["rows"]
    samp = [r for r in rows if r.get("kind") == "sample"]
    if samp:
        head = (
            f"{'case':<26}{'params':>8}{'b':>3}{'cfg':>4}  {'steps':<26}{'s/step med':>11}  "
            f"{'s/batch med [min-max]':<26}{'latents/s':>10}{'GFLOP/s':>8}{'%pk':>5}{'head':>5}  how"
        )
        print("\nSampling\n" + head + "\n" + "-" * len(head))
        for r in samp:
            if r.get("error"):
                print(f"{r['case']:<26} ERROR {r['error']}")
                continue
            hf = f"{100 * r['head_fraction']['median']:.0f}%" if "head_fraction" in r else "-"
            steps = f"{r['total_steps']} {r['step_unit']}"
            print(f"{r['case']:<26}{r['params'] / 1e6:>7.1f}M{r['batch']:>3}{r['cfg']:>4.1f}  {steps:<26}"
                  f"{r['seconds_per_step']['median']:>11.4f}  {fmt_range(r['seconds_per_batch'], '.2f'):<26}"
                  f"{r['latents_per_s']['median']:>10.3f}{r['gflops_achieved']['median']:>8.1f}"
                  f"{100 * r['gflops_achieved']['median'] / peak:>4.0f}%{hf:>5}  {r['label']}")  # fmt: skip
    train = [r for r in rows if r.get("kind") == "train"]
    if train:
        head = (
            f"{'case':<44}{'params':>8}{'b':>3}  {'s/step med [min-max]':<24}{'latents/s':>10}"
            f"{'GFLOP/latent':>13}{'GFLOP/s':>8}{'%pk':>5}{'RSS MB':>8}"
        ) + (f"{'CUDA MB':>9}" if machine.get("device") == "cuda" else "")
        print("\nTraining (forward + backward + AdamW + EMA)\n" + head + "\n" + "-" * len(head))
        for r in train:
            if r.get("error"):
                print(f"{r['case']:<44} ERROR {r['error']}")
                continue
            name = r["case"] + ("" if r.get("variant", "eager") == "eager" else " / compile_blocks")
            print(f"{name:<44}{r['params'] / 1e6:>7.1f}M{r['batch']:>3}  {fmt_range(summary(r['step_seconds']), '.2f'):<24}"
                  f"{r['latents_per_s']['median']:>10.3f}{r['flops_per_latent'] / 1e9:>13.1f}"
                  f"{r['gflops_achieved']['median']:>8.1f}{100 * r['gflops_achieved']['median'] / peak:>4.0f}%"
                  f"{r['peak_rss_mb']:>8.0f}" + (f"{r['peak_cuda_mb']:>9.0f}" if "peak_cuda_mb" in r else ""))  # fmt: skip
    for r in rows:
        if r.get("kind") == "kv_backbone" and not r.get("error"):
            print(f"\nKV cache, transformer part only ({r['params'] / 1e6:.1f}M params, batch {r['batch']}, "
                  f"{r['tokens']} tokens, head replaced by zeros)")  # fmt: skip
            print(
                f"  cached loop           {fmt_range(r['cached_seconds'], '.3f')} s  ({r['gflops_cached']:.1f} GFLOP/s)"
            )
            print(f"  recompute (integrated) {fmt_range(r['recompute_seconds_integrated'], '.2f')} s  "
                  f"({r['gflops_recompute']:.1f} GFLOP/s)")  # fmt: skip
            print(f"  recompute first {r['direct_first_k']} tokens: direct "
                  f"{fmt_range(r['recompute_first_k_direct_seconds'], '.3f')} s, model "
                  f"{r['recompute_first_k_from_model_seconds']:.3f} s")  # fmt: skip
            print(f"  speed-up {fmt_range(r['speedup'], '.1f')}x (target >= {TARGET_BACKBONE_SPEEDUP}x)")
        if r.get("kind") == "kv_whole" and not r.get("error"):
            print(f"\nKV cache, whole image ({r['diffusion_steps_per_token']} diffusion steps / token, batch "
                  f"{r['batch']}, cfg {r['cfg']}, {r['label']})")  # fmt: skip
            for v in ("cached", "no_cache"):
                if r[v]:
                    print(f"  {v:<9} {fmt_range(r[v]['seconds_per_batch'], '.2f')} s per batch over {r[v]['runs']} "
                          f"run(s); outside the head {r[v]['backbone_and_rest_seconds']['median']:.2f} s")  # fmt: skip
            if r["cache_speedup"]:
                print(f"  cache speed-up {r['cache_speedup']:.1f}x")
    kv = result.get("kv_comparison", {})
    if "whole" in kv:
        w = kv["whole"]
        mark = "meets" if w["meets_target"] else "below"
        print(f"\nwhole image, detok's sampler (KV cache + precomputed head) vs the no-cache algorithm (plain "
              f"head, upstream's generate()): {w['cached_seconds']:.1f} s vs {w['no_cache_seconds']:.1f} s -> "
              f"{w['speedup']:.2f}x (target >= {TARGET_WHOLE_SPEEDUP}x: {mark}; {w['label']})")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", default="kv,sample,train", help="comma list of kv, sample, train")
    p.add_argument("--cases", default="", help=f"comma list (overrides --groups): {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=0, help="warm-up runs (0: per-case default)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (0: per-case default)")
    p.add_argument("--kv-nocache-repeats", type=int, default=1, help="whole-image no-cache runs in kv_whole")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-seconds", type=float, default=3.0, help="matmul-peak loop, at start and at end")
    p.add_argument(
        "--case-peak-seconds", type=float, default=0.5, help="matmul loop inside each case's process"
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny cases, first steps only, 1 warm-up + 1 repeat, short peak loops")  # fmt: skip
    p.add_argument(
        "--out", default=None, help=f"JSON (default {DEFAULT_OUT.relative_to(REPO)}; none with --quick)"
    )
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of the partial result at --out (same settings) and run only the missing ones")  # fmt: skip
    add_device_args(p)
    p.add_argument("--variants", action="store_true",
                   help="extra training rows with every transformer block torch.compile'd (train.compile=blocks)")  # fmt: skip
    p.add_argument("--variant", default="eager", help=argparse.SUPPRESS)
    p.add_argument("--case", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats = args.warmup or 1, args.repeats or 1
        args.peak_seconds, args.case_peak_seconds = (
            min(args.peak_seconds, 0.5),
            min(args.case_peak_seconds, 0.2),
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    global DEV
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    try:
        DEV = bench_device(args.device, args.amp)
    except BenchError as err:
        print(f"bench_generators.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.case:
        row = run_one(args)
        print(JSON_MARK + json.dumps(row) if args.json else json.dumps(row, indent=2), flush=True)
        return row
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    out = args.out or (None if args.quick else str(DEFAULT_OUT))
    print(f"[bench] rows on {DEV.describe()}" if torch.cuda.is_available() else f"[bench] {NO_CUDA}",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        jobs = plan(args)
        header: dict[str, Any] = {
            "command": command,
            "machine": machine_info(args.threads, DEV),
            "settings": {k: v for k, v in vars(args).items() if k not in ("case", "json", "variant")}
            | {"device": DEV.type, "amp": DEV.amp},
            "cases": {k: asdict(v) for k, v in CASES.items()},
            "note": "latents/s: generator sampling only, the tokenizer decode is not included",
        }
        result = run_jobs(jobs, header, out, peak_seconds=args.peak_seconds, resume=args.resume, dev=DEV)
    except BenchError as err:  # before any row ran: one line, no traceback
        print(f"bench_generators.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    result["kv_comparison"] = compare_kv(result["rows"], result["matmul_peak"]["peak_gflops"])
    if out:
        write_json(out, result)
    print_table(result)
    if out:
        print(f"\n[bench] wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
