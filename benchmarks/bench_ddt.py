"""DDT benchmark: tokenizer training and decoding throughput, and DDT-AR sampling with vs without the KV cache.

Method: docs/benchmarks.md (the same rules as bench_tokenizer.py / bench_generators.py). Every row runs in a
fresh subprocess (this script re-invoked with --case ... --json) so peak RSS does not mix between rows; the
float32 2048 x 2048 matmul peak is measured in the parent at the start and at the end of the run (and briefly
inside each row's process). The result file is rewritten after every row ("partial": true until the run
ends); --resume continues an interrupted run. Random-init weights, fixed seeds, float32, CPU.

    python benchmarks/bench_ddt.py                        # every row -> docs/benchmarks/ddt.json
    python benchmarks/bench_ddt.py --cases ddt_ar_sample_kv,ddt_ar_sample_nocache
    python benchmarks/bench_ddt.py --quick --out /tmp/ddt.json    # smoke test (tiny sizes, 1 repeat), not a result
    python benchmarks/bench_ddt.py --resume               # continue an interrupted run (same settings)

Rows:
  train_ddt_quickstart   one DDT training step as the engine runs it (DDTTask.step, finiteness check, zero_grad,
                         backward, clip_grad_norm_, the engine's fused AdamW, EMA), quickstart_ddt.yaml's model,
                         optimiser and batch (ddt_mini, 32 px, batch 32): img/s, counted GFLOP/s, % of peak
  train_ddt_quickstart_compiled   the same step with train.compile=blocks (every transformer block compiled)
  train_ddt_s_256        the same step, ddt_s at 256 px (K 256, V 8192), the DDT recipe's defaults, batch 4:
                         the paper-shaped row
  decode_ddt_quickstart_25 / _50   eval-mode `DDT.detokenize` of 64 id sequences, 25 / 50 Euler steps: img/s
  ddt_ar_sample_kv / _nocache      `ddt_ar_mini` sampling K = 64 ids of a V = 1024 codebook, batch 32, CFG 2.0,
                         with / without the KV cache: tokens/s; the cache / no-cache ratio of the same run
                         is the summary's "kv_comparison"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benchlib import (
    JSON_MARK,
    MATMUL_N,
    REPO,
    BenchError,
    Job,
    TimedTrainStep,
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
from detok.engine.tasks import DDTTask
from detok.engine.trainer import compile_blocks
from detok.nn.optim import adamw, split_decay
from detok.runs.config import DDTRunConfig, tokenizer_config
from detok.tokenizers.ddt import DDT

DEFAULT_OUT = REPO / "docs" / "benchmarks" / "ddt.json"
TARGET_PEAK_FRACTION = 0.60  # training step: achieved FLOP/s over the in-run matmul peak
TARGET_KV_SPEEDUP = 5.0  # DDT-AR sampling, KV cache over recomputing the prefix, same run
AR_CLASSES = 10  # the quickstart's shapes set (quickstart_ddt_ar.yaml trains on its DDT token cache)


@dataclass(frozen=True)
class Case:
    """One row (one fresh process); `quick` replaces fields under --quick (tiny sizes for the smoke test)."""

    kind: str  # "train", "decode", "ar_sample"
    model: str | None  # tokenizer / generator preset (None: the recipe's)
    presets: tuple[str, ...]  # YAML presets of the tokenizer run config, as `detok train tokenizer --config`
    batch: int  # 0: the recipe's global batch
    warmup: int
    repeats: int
    steps: int = 0  # decode: Euler steps
    tokens: int = 0  # ar_sample: K ids per sample
    codebook: int = 0  # ar_sample: V
    cfg: float = 1.0  # ar_sample: guidance scale on the logits
    kv_cache: bool = True  # ar_sample
    compile: bool = False  # train: every transformer block torch.compile'd (train.compile=blocks)
    label: str = ""
    help: str = ""
    quick: dict[str, Any] = field(default_factory=dict)


def _decode(steps: int) -> Case:
    return Case("decode", None, ("quickstart_ddt",), 64, 2, 5, steps=steps, quick={"batch": 4},
                help=f"eval DDT.detokenize of 64 id sequences, {steps} Euler steps, quickstart_ddt.yaml tokenizer "
                     "(ddt_mini), its cfg_scale")  # fmt: skip


def _ar(cache: bool) -> Case:
    return Case("ar_sample", "ddt_ar_mini", (), 32, 2, 10, tokens=64, codebook=1024, cfg=2.0, kv_cache=cache,
                quick={"model": "ddt_ar_tiny", "batch": 4, "tokens": 16},
                help=f"ddt_ar_mini sampling, K 64, V 1024, {AR_CLASSES} classes, batch 32, cfg 2.0, "
                     f"{'with' if cache else 'without'} the KV cache")  # fmt: skip


CASES: dict[str, Case] = {
    "train_ddt_quickstart": Case(
        "train", None, ("quickstart_ddt",), 0, 3, 20, quick={"batch": 4},
        help="quickstart_ddt.yaml: ddt_mini (4+4 blocks of width 128), 32 px, patch 4, K 32, V 1024; its optim "
             "(lr 1e-3, betas 0.9/0.99, clip 1.0, no wd, fused AdamW), EMA 0.99 and batch 32",
    ),  # fmt: skip
    "train_ddt_quickstart_compiled": Case(
        "train", None, ("quickstart_ddt",), 0, 3, 20, compile=True, label="compile_blocks", quick={"batch": 4},
        help="train_ddt_quickstart with train.compile=blocks (every encoder and decoder block "
             "torch.compile(dynamic=True)'d; the compilation runs in the warm-up steps)",
    ),  # fmt: skip
    "train_ddt_s_256": Case(
        "train", "ddt_s", (), 4, 2, 5, label="paper-shaped", quick={"model": "ddt_tiny", "batch": 2},
        help="ddt_s (8+8 blocks of width 512), 256 px, patch 16, K 256, V 8192; the DDT recipe's defaults "
             "(lr 5e-4, betas 0.9/0.99, clip 1.0, fused AdamW, EMA 0.999), batch 4",
    ),  # fmt: skip
    "decode_ddt_quickstart_25": _decode(25),
    "decode_ddt_quickstart_50": _decode(50),
    "ddt_ar_sample_kv": _ar(True),
    "ddt_ar_sample_nocache": _ar(False),
}
KV_PAIR = ("ddt_ar_sample_kv", "ddt_ar_sample_nocache")


def case_of(name: str, quick: bool) -> Case:
    case = CASES[name]
    return replace(case, **case.quick) if quick else case


def run_config(case: Case) -> DDTRunConfig:
    """The exact `detok train tokenizer` config of a tokenizer case (a DDT run)."""
    cfg = tokenizer_config(case.model, list(case.presets), [])
    if not isinstance(cfg, DDTRunConfig):
        raise BenchError(f"{case.model or case.presets}: not a DDT tokenizer run ({type(cfg).__name__})")
    return cfg


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tokenizer_info(cfg: DDTRunConfig, model: DDT) -> dict[str, Any]:
    tok = cfg.tokenizer
    return {"model": cfg.model, "image_size": tok.image_size, "patch_size": tok.patch_size,
            "num_tokens": tok.num_tokens, "codebook_size": model.codebook_size, "encoder_size": tok.encoder_size,
            "decoder_size": tok.decoder_size, "schedule": tok.schedule, "params": n_params(model)}  # fmt: skip


# -- training ------------------------------------------------------------------------------------------
class DDTTrainBench(TimedTrainStep):
    """The engine's per-step work (Trainer._train_step minus data loading and logging) on a fixed random batch.

    step = DDTTask.step (h-flip, encoder, quantizer, noised decoder forward, loss), the finiteness check, then
    zero_grad, backward, clip_grad_norm_ (and its float, as the engine logs it), the engine's AdamW step
    (its kernel and weight-decay groups), the EMA update. The lr is the recipe's peak lr throughout.
    """

    def __init__(self, cfg: DDTRunConfig, batch: int, seed: int) -> None:
        torch.manual_seed(seed)  # init, and the quantizer library's global-RNG draws (k-means, restarts)
        self.cfg = cfg
        self.model = DDT(cfg.tokenizer).train()
        self.task = DDTTask(self.model, hflip=cfg.data.hflip, usage_every=cfg.usage_every)
        size = cfg.tokenizer.image_size
        g = torch.Generator().manual_seed(seed + 2)
        self.batch = {"image": torch.rand(batch, 3, size, size, generator=g) * 2 - 1}
        o = cfg.optim
        self.lr = o.lr or o.base_lr * cfg.train.global_batch_size / 256
        self.optimizers = {
            name: adamw(split_decay(named, o.weight_decay, o.no_decay), self.lr, o.betas, o.adamw)
            for name, named in self.task.optimizer_params().items()
        }
        self.grad_clip = o.grad_clip
        self.ema = EMA(self.model, cfg.train.ema_decay)
        self.generator = torch.Generator()
        self.step_index = 0


def run_train_case(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up 1 (the quantizer's k-means init), FLOP-counted steps, more warm-up, then the timed steps.

    The counted steps are whole steps under FlopCounterMode (forward + backward; AdamW and EMA count 0). They
    come after the first step so that the one-off k-means init of the codebook is not counted; the step's
    shapes do not depend on the draws (t, noise, token drop only change values and the attention mask), which
    the counts of two seeds check (`flops_constant`).
    """
    cfg = run_config(case)
    batch = case.batch or cfg.train.global_batch_size
    bench = DDTTrainBench(cfg, batch, args.seed)
    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    base = args.seed * 100_003
    n_count = 1 if args.quick else 2
    bench.step(base)  # warm-up 1: k-means init of the codebook on this batch
    counted = []
    for i in range(n_count):
        with counter() as fc:
            bench.step(base + 500 + i)
        counted.append(int(fc.get_total_flops()))
    # train.compile=blocks: compiled after the eager FLOP count (the same math); warm-up includes the compilation
    compiled = compile_blocks(bench.model) if case.compile else 0
    for i in range(1, max(warmup, 3 if compiled else 1)):
        bench.step(base + i)
    seeds = [base + 1000 + i for i in range(repeats)]
    phases = [bench.step(s) for s in seeds]
    times = [p["total"] for p in phases]
    flops = statistics.mean(counted)
    o = cfg.optim
    return {
        "case": name,
        "kind": "train",
        "label": case.label,
        "config": case.help,
        **tokenizer_info(cfg, bench.model),
        "batch": batch,
        "optim": {"lr": bench.lr, "betas": list(o.betas), "weight_decay": o.weight_decay, "grad_clip": o.grad_clip,
                  "adamw": o.adamw, "ema_decay": cfg.train.ema_decay},  # fmt: skip
        "warmup": f"{warmup} + {n_count} FLOP-counted",
        "compiled_blocks": compiled,
        "repeats": repeats,
        "seeds": seeds,
        "step_seconds": times,
        "img_per_s": summary([batch / t for t in times]),
        "flops_per_step_counted": counted,
        "flops_constant": len(set(counted)) == 1,
        "flops_per_step": flops,
        "flops_per_img": flops / batch,
        "gflops_achieved": summary([flops / t / 1e9 for t in times]),
        "peak_target": TARGET_PEAK_FRACTION,
        "phase_seconds_median": {k: statistics.median(p[k] for p in phases) for k in phases[0] if k != "total"},
    }


# -- decoding ------------------------------------------------------------------------------------------
def run_decode_case(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Eval-mode `DDT.detokenize` of a fixed batch of random ids (AR order), `case.steps` Euler steps."""
    cfg = run_config(case)
    torch.manual_seed(args.seed)
    model = DDT(cfg.tokenizer).eval()
    k, v = model.num_tokens, model.codebook_size
    ids = torch.randint(0, v, (case.batch, k), generator=torch.Generator().manual_seed(args.seed))
    scale = cfg.tokenizer.cfg_scale

    def once(seed: int) -> float:
        t0 = time.perf_counter()
        out = model.detokenize(ids, rng=torch.Generator().manual_seed(seed), steps=case.steps, cfg_scale=scale)
        dt = time.perf_counter() - t0
        if out.shape != (case.batch, *model.input_shape) or not bool(torch.isfinite(out).all()):
            raise RuntimeError(f"{name}: bad decode {tuple(out.shape)}")
        return dt

    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    with counter() as fc:  # no randomness in the shapes: one count is exact
        once(args.seed)
    flops = int(fc.get_total_flops())
    for i in range(warmup):
        once(args.seed + 1 + i)
    times = [once(args.seed + 100 + i) for i in range(repeats)]
    return {
        "case": name,
        "kind": "decode",
        "label": "",
        "config": case.help,
        **tokenizer_info(cfg, model),
        "batch": case.batch,
        "euler_steps": case.steps,
        "decoder_calls_per_step": 1 if scale == 1.0 else 2,
        "cfg_scale": scale,
        "known": "all K",
        "warmup": f"{warmup} + 1 FLOP-counted",
        "repeats": repeats,
        "step_seconds": times,
        "img_per_s": summary([case.batch / t for t in times]),
        "flops_per_decode": flops,
        "flops_per_img": flops / case.batch,
        "gflops_achieved": summary([flops / t / 1e9 for t in times]),
    }


# -- DDT-AR sampling -----------------------------------------------------------------------------------
def run_ar_case(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """`gen.sample` of `batch` ids sequences (K ids each) with or without the KV cache; the whole sampler."""
    from detok.generators.load import build_generator

    torch.manual_seed(args.seed)
    gen = build_generator(case.model, (case.tokens,), AR_CLASSES, {"codebook_size": case.codebook}).eval()
    labels = torch.randint(0, AR_CLASSES, (case.batch,), generator=torch.Generator().manual_seed(args.seed))

    def once(seed: int) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        ids = gen.sample(case.batch, labels, cfg_scale=case.cfg, rng=torch.Generator().manual_seed(seed),
                         use_kv_cache=case.kv_cache)  # fmt: skip
        dt = time.perf_counter() - t0
        if ids.shape != (case.batch, case.tokens):
            raise RuntimeError(f"{name}: sampled ids of shape {tuple(ids.shape)}")
        return dt, ids

    warmup, repeats = args.warmup or case.warmup, args.repeats or case.repeats
    with counter() as fc:
        once(args.seed)
    flops = int(fc.get_total_flops())
    for i in range(warmup):
        once(args.seed + 1 + i)
    times, first_ids = [], None
    for i in range(repeats):
        t, ids = once(args.seed + 100 + i)
        times.append(t)
        first_ids = ids if first_ids is None else first_ids
    n_tok = case.batch * case.tokens
    assert first_ids is not None
    return {
        "case": name,
        "kind": "ar_sample",
        "label": "",
        "config": case.help,
        "model": case.model,
        "params": n_params(gen),
        "kv_cache": case.kv_cache,
        "batch": case.batch,
        "model_batch": case.batch * (2 if case.cfg != 1.0 else 1),
        "tokens": case.tokens,
        "codebook_size": case.codebook,
        "num_classes": AR_CLASSES,
        "cfg": case.cfg,
        "temperature": gen.cfg.temperature,
        "warmup": f"{warmup} + 1 FLOP-counted",
        "repeats": repeats,
        "seconds_per_sample": summary(times),
        "step_seconds": times,
        "tokens_per_s": summary([n_tok / t for t in times]),
        "flops_per_sample": flops,
        "gflops_achieved": summary([flops / t / 1e9 for t in times]),
        # the same seed's ids of the other variant should match (a float-rounding difference can flip a draw)
        "ids_sha1_first_repeat": hashlib.sha1(first_ids.numpy().tobytes()).hexdigest(),
    }


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """The --case mode: one row, measured in this (fresh) process."""
    case = case_of(args.case, args.quick)
    rss_start = rss_mb()
    before = matmul_peak(args.case_peak_seconds)
    t0 = time.perf_counter()
    fn = {"train": run_train_case, "decode": run_decode_case, "ar_sample": run_ar_case}[case.kind]
    row = fn(args.case, case, args)
    row["quick"] = bool(args.quick)
    row["wall_seconds"] = time.perf_counter() - t0
    row["peak_rss_mb"] = rss_mb()
    row["rss_at_start_mb"] = rss_start  # after imports; the peak includes it
    after = matmul_peak(args.case_peak_seconds)
    row["case_matmul_gflops"] = max(before["max_gflops"], after["max_gflops"])
    row["threads"] = torch.get_num_threads()
    return row


# -- the driver (benchlib.run_jobs) -------------------------------------------------------------------
def check_cases(quick: bool) -> None:
    """Every case names a registered preset: a renamed preset fails here, at plan time."""
    for name in CASES:
        case = case_of(name, quick)
        kind = "generator" if case.kind == "ar_sample" else "tokenizer"
        model = case.model if case.model is not None else run_config(case).model
        if model not in registry.names(kind):
            raise BenchError(f"case {name}: {kind} {model!r} is not registered; known: {', '.join(registry.names(kind))}")


def plan(args: argparse.Namespace) -> list[Job]:
    """The rows to run (--cases, else every case), each a fresh process."""
    check_cases(args.quick)
    names = args.cases.split(",") if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise BenchError(f"unknown case(s) {', '.join(unknown)}; choose from: {', '.join(CASES)}")
    return [case_job(name, args) for name in names]


def case_job(name: str, args: argparse.Namespace) -> Job:
    """The row `name`, measured by this script re-invoked in --case mode."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--json", "--threads", str(args.threads),
           "--seed", str(args.seed), "--case-peak-seconds", str(args.case_peak_seconds)]  # fmt: skip
    if args.warmup:
        cmd += ["--warmup", str(args.warmup)]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    if args.quick:
        cmd += ["--quick"]
    return Job({"case": name, "kind": CASES[name].kind}, cmd, label=name)


def compare(result: dict[str, Any]) -> None:
    """Targets, each a ratio of the same run: % of peak per training row, KV cache over no cache."""
    rows = {r["case"]: r for r in result["rows"] if not r.get("error")}
    peak_rows = []
    for r in rows.values():
        if r["kind"] == "train":
            r["meets_peak_target"] = r["peak_fraction"] >= TARGET_PEAK_FRACTION
            peak_rows.append({"case": r["case"], "label": r["label"], "peak_fraction": r["peak_fraction"],
                              "target": TARGET_PEAK_FRACTION, "meets_target": r["meets_peak_target"]})  # fmt: skip
    result["peak_targets"] = peak_rows
    kv, nc = (rows.get(n) for n in KV_PAIR)
    if kv is None or nc is None:
        result["kv_comparison"] = {"note": f"needs both rows {' and '.join(KV_PAIR)}"}
        return
    speedup = nc["seconds_per_sample"]["median"] / kv["seconds_per_sample"]["median"]
    result["kv_comparison"] = {
        "cached_tokens_per_s": kv["tokens_per_s"]["median"],
        "no_cache_tokens_per_s": nc["tokens_per_s"]["median"],
        "cached_seconds_per_sample": kv["seconds_per_sample"]["median"],
        "no_cache_seconds_per_sample": nc["seconds_per_sample"]["median"],
        "speedup": speedup,
        "speedup_range": [nc["seconds_per_sample"]["min"] / kv["seconds_per_sample"]["max"],
                          nc["seconds_per_sample"]["max"] / kv["seconds_per_sample"]["min"]],  # fmt: skip
        "flops_ratio_no_cache_over_cached": nc["flops_per_sample"] / kv["flops_per_sample"],
        "target": TARGET_KV_SPEEDUP,
        "meets_target": speedup >= TARGET_KV_SPEEDUP,
        "same_ids_first_repeat": kv["ids_sha1_first_repeat"] == nc["ids_sha1_first_repeat"],
        "how": "median whole-sampler times of the two rows, consecutive fresh processes of this run, same seeds",
    }


def print_table(result: dict[str, Any]) -> None:
    """Ratios first (to the in-run peak, cache over no cache), then the absolute numbers."""
    mp, machine = result["matmul_peak"], result["machine"]
    peak = mp["peak_gflops"]
    quick = " (--quick: tiny sizes, not a result)" if result["settings"].get("quick") else ""
    print(f"\nfloat32 {MATMUL_N}^2 matmul peak {peak:.1f} GFLOP/s (start {mp['start']['max_gflops']:.1f}, end "
          f"{mp['end']['max_gflops']:.1f}); {machine['threads']} threads, {machine['cpu']}, torch "
          f"{machine['torch']}, float32, CPU{quick}")  # fmt: skip
    rows = result["rows"]
    img = [r for r in rows if r.get("kind") in ("train", "decode")]
    if img:
        head = (f"{'case':<31}{'label':<14}{'batch':>6}{'%peak':>7}{'GFLOP/s med':>12}  {'img/s med [min-max]':<26}"
                f"{'GFLOP/img':>10}{'RSS MB':>8}")  # fmt: skip
        print("\nDDT tokenizer: training step (fwd + bwd + fused AdamW + EMA) and decoding (detokenize)\n" + head)
        print("-" * len(head))
        for r in img:
            if r.get("error"):
                print(f"{r['case']:<31} ERROR {r['error']}")
                continue
            label = r["label"] or (f"{r['euler_steps']} Euler" if r["kind"] == "decode" else "")
            print(f"{r['case']:<31}{label:<14}{r['batch']:>6}{100 * r['peak_fraction']:>6.1f}%"
                  f"{r['gflops_achieved']['median']:>12.1f}  {fmt_range(r['img_per_s'], '.2f'):<26}"
                  f"{r['flops_per_img'] / 1e9:>10.3f}{r['peak_rss_mb']:>8.0f}")  # fmt: skip
    ar = [r for r in rows if r.get("kind") == "ar_sample"]
    if ar:
        head = (f"{'case':<26}{'cache':>6}{'batch':>6}{'K':>5}{'cfg':>5}{'%peak':>7}  {'tokens/s med [min-max]':<28}"
                f"{'s/sample med':>13}{'RSS MB':>8}")  # fmt: skip
        print("\nDDT-AR sampling (whole sampler: K ids per sequence)\n" + head + "\n" + "-" * len(head))
        for r in ar:
            if r.get("error"):
                print(f"{r['case']:<26} ERROR {r['error']}")
                continue
            print(f"{r['case']:<26}{'yes' if r['kv_cache'] else 'no':>6}{r['batch']:>6}{r['tokens']:>5}"
                  f"{r['cfg']:>5.1f}{100 * r['peak_fraction']:>6.1f}%  {fmt_range(r['tokens_per_s'], '.0f'):<28}"
                  f"{r['seconds_per_sample']['median']:>13.3f}{r['peak_rss_mb']:>8.0f}")  # fmt: skip
    if result["peak_targets"]:
        print(f"\nTarget >= {100 * TARGET_PEAK_FRACTION:.0f}% of the in-run peak (training step):")
        for c in result["peak_targets"]:
            mark = "meets" if c["meets_target"] else "below"
            print(f"  {c['case']:<30} {100 * c['peak_fraction']:5.1f}%  {mark}{'  (' + c['label'] + ')' if c['label'] else ''}")
    kv = result["kv_comparison"]
    if "speedup" in kv:
        lo, hi = kv["speedup_range"]
        mark = "meets" if kv["meets_target"] else "below"
        print(f"\nDDT-AR, KV cache vs no cache (same run): {kv['cached_tokens_per_s']:.0f} vs "
              f"{kv['no_cache_tokens_per_s']:.0f} tokens/s -> {kv['speedup']:.2f}x [{lo:.2f}-{hi:.2f}] "
              f"(target >= {TARGET_KV_SPEEDUP}x: {mark}); no-cache FLOPs "
              f"{kv['flops_ratio_no_cache_over_cached']:.1f}x the cached; same ids: {kv['same_ids_first_repeat']}")  # fmt: skip
    else:
        print(f"\nDDT-AR, KV cache vs no cache: {kv['note']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="", help=f"comma list (default all): {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps / runs (0: per-case default)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (0: per-case default, >= 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-seconds", type=float, default=3.0, help="matmul-peak loop, at start and at end")
    p.add_argument("--case-peak-seconds", type=float, default=1.0, help="matmul loop inside each row's process")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny sizes, 1 warm-up + 1 repeat, short peak loops")  # fmt: skip
    p.add_argument("--out", default=None, help=f"JSON (default {DEFAULT_OUT.relative_to(REPO)}; none with --quick)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of the partial result at --out (same settings) and run only the missing ones")  # fmt: skip
    p.add_argument("--case", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats = args.warmup or 1, args.repeats or 1
        args.peak_seconds, args.case_peak_seconds = min(args.peak_seconds, 0.5), min(args.case_peak_seconds, 0.2)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    if args.case:
        row = run_one(args)
        print(JSON_MARK + json.dumps(row) if args.json else json.dumps(row, indent=2), flush=True)
        return row
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    out = args.out or (None if args.quick else str(DEFAULT_OUT))
    cuda = torch.cuda.is_available()
    print("CUDA available, but this benchmark measures CPU rows only" if cuda else "no CUDA: CPU rows only",
          flush=True)  # fmt: skip
    try:
        jobs = plan(args)
        header: dict[str, Any] = {
            "command": command,
            "machine": {**machine_info(args.threads), "cuda": cuda, "device": "cpu"},
            "settings": {k: v for k, v in vars(args).items() if k not in ("case", "json")},
            "cases": {k: asdict(case_of(k, args.quick)) for k in CASES},
            "targets": {"train_peak_fraction": TARGET_PEAK_FRACTION, "kv_cache_speedup": TARGET_KV_SPEEDUP},
            "note": "random-init weights, fixed seeds; img/s of the tokenizer, tokens/s of DDT-AR (ids only, no decode)",
        }
        result = run_jobs(jobs, header, out, peak_seconds=args.peak_seconds, resume=args.resume)
    except BenchError as err:  # before any row ran: one line, no traceback
        print(f"bench_ddt.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    compare(result)
    if out:
        write_json(out, result)
    print_table(result)
    if out:
        print(f"\n[bench] wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
