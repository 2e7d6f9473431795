"""Evaluation benchmark: feature-extraction throughput (Inception, domain net) and the Frechet distance cost.

Method and results: docs/benchmarks.md ("Evaluation"). Each case runs in a fresh subprocess (this script
re-invoked with --case NAME --json) so peak memory does not mix; the float32 matmul peak is recorded at the
start and the end, as in the other benchmarks. The result file is rewritten after every case ("partial": true
until the run ends); --resume continues an interrupted run.

    python benchmarks/bench_eval.py                   # all cases -> docs/benchmarks/eval.json
    python benchmarks/bench_eval.py --quick --out /tmp/eval.json

Cases:
  inception_32   Inception-v3 (TF weights) features of 32 px uint8 images (resized to 299 in the net), batch 50
  inception_256  the same from 256 px images (ImageNet-size samples)
  domain_32      the domain classifier (shapes recipe, random weights: same cost) on 32 px images, batch 256
  frechet_2048   one Frechet distance between two 2048-d Gaussians (eigh and scipy sqrtm)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

import numpy as np
import torch

from benchlib import (
    JSON_MARK,
    MATMUL_N,
    REPO,
    BenchError,
    Job,
    fmt_range,
    machine_info,
    matmul_peak,
    rss_mb,
    run_jobs,
    summary,
    write_json,
)

DEFAULT_OUT = REPO / "docs" / "benchmarks" / "eval.json"
CASES = {
    "inception_32": {"net": "inception", "size": 32, "batch": 50, "warmup": 1, "repeats": 5},
    "inception_256": {"net": "inception", "size": 256, "batch": 50, "warmup": 1, "repeats": 5},
    "domain_32": {"net": "domain", "size": 32, "batch": 256, "warmup": 2, "repeats": 20},
    "frechet_2048": {"net": "frechet", "dim": 2048, "warmup": 0, "repeats": 3},
}


def build_net(kind: str):
    if kind == "inception":
        from detok.eval.inception import load_inception

        return load_inception()
    from detok.eval.domain import DomainConfig, DomainFeatures, DomainNet

    cfg = DomainConfig()
    net = DomainNet(10, cfg.image_size, cfg.width, cfg.stages, cfg.dim)
    net.init_weights(torch.Generator().manual_seed(0))
    return DomainFeatures(net.eval(), "domain-cnn/bench@32")


def run_features(case: dict[str, Any], quick: bool) -> dict[str, Any]:
    net = build_net(case["net"])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (case["batch"], 3, case["size"], case["size"]), generator=g, dtype=torch.uint8)
    times = []
    for i in range(case["warmup"] + (1 if quick else case["repeats"])):
        t0 = time.perf_counter()
        with torch.no_grad():
            net(images)
        if i >= case["warmup"]:
            times.append(time.perf_counter() - t0)
    rates = [case["batch"] / t for t in times]
    return {"img_per_s": summary(rates), "seconds_per_batch": summary(times), "batch": case["batch"],
            "input_px": case["size"], "feature_net": net.name, "resize": net.resize}


def run_frechet(case: dict[str, Any], quick: bool) -> dict[str, Any]:
    from detok.eval.frechet import frechet_distance

    rng = np.random.default_rng(0)
    d = case["dim"]
    out: dict[str, Any] = {"dim": d}
    a, b = rng.standard_normal((4 * d, d)), rng.standard_normal((4 * d, d)) * 1.1 + 0.1
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    for method in ("eigh", "sqrtm"):
        times, value = [], None
        for _ in range(1 if quick else case["repeats"]):
            t0 = time.perf_counter()
            value = frechet_distance(mu1, s1, mu2, s2, method=method)
            times.append(time.perf_counter() - t0)
        out[method] = {"seconds": summary(times), "value": value}
    return out


def run_case(name: str, quick: bool, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    case = CASES[name]
    before = matmul_peak(1.0)
    res = run_frechet(case, quick) if case["net"] == "frechet" else run_features(case, quick)
    after = matmul_peak(1.0)
    res.update(case=name, peak_rss_mb=rss_mb(),
               case_matmul_gflops={"before": before["max_gflops"], "after": after["max_gflops"]})
    return res


def case_job(name: str, args: argparse.Namespace) -> Job:
    """The case `name`, measured by this script re-invoked in --case mode (see benchlib.run_jobs)."""
    if name not in CASES:
        raise BenchError(f"unknown case {name!r}; choose from: {', '.join(CASES)}")
    cmd = [sys.executable, __file__, "--case", name, "--json", "--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    return Job({"case": name}, cmd)


def print_table(result: dict[str, Any]) -> None:
    print(f"\nfloat32 {MATMUL_N}^2 matmul peak {result['matmul_peak']['peak_gflops']:.1f} GFLOP/s; "
          f"threads {result['machine']['threads']}\n")
    print("| case | feature net | input | batch | img/s median [min-max] | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        if "error" in r:
            detail = (r.get("stderr_tail") or "").strip().splitlines() or [r["error"]]
            print(f"| {r['case']} | error: {detail[-1]} | | | | |")
        elif "img_per_s" in r:
            print(f"| {r['case']} | {r['feature_net']} | {r['input_px']} px | {r['batch']} | "
                  f"{fmt_range(r['img_per_s'], '.1f')} | {r['peak_rss_mb']:.0f} |")
        else:
            print(f"| {r['case']} | Frechet distance, {r['dim']}-d | | | eigh {fmt_range(r['eigh']['seconds'], '.2f')} s, "
                  f"sqrtm {fmt_range(r['sqrtm']['seconds'], '.2f')} s | {r['peak_rss_mb']:.0f} |")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=None, help=f"run one case in this process: {', '.join(CASES)}")
    p.add_argument("--cases", default=",".join(CASES), help="comma list of cases")
    p.add_argument("--json", action="store_true", help="(child mode) print the result as one JSON line")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one repeat per case (smoke test)")
    p.add_argument("--out", default=None, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)}; none with --quick)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of the partial result at --out (same settings) and run only the missing ones")
    args = p.parse_args(argv)
    if args.case:
        res = run_case(args.case, args.quick, args.threads)
        print(JSON_MARK + json.dumps(res) if args.json else json.dumps(res, indent=2))
        return res
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    torch.set_num_threads(args.threads)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    try:
        jobs = [case_job(name, args) for name in args.cases.split(",") if name]
        header = {"command": command, "machine": machine_info(args.threads),
                  "settings": {k: v for k, v in vars(args).items() if k not in ("case", "json")}}
        result = run_jobs(jobs, header, out, peak_seconds=3.0, resume=args.resume)
    except BenchError as err:  # before any row ran: one line, no traceback
        print(f"bench_eval.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if out:
        write_json(out, result)
    print_table(result)
    if out:
        print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
