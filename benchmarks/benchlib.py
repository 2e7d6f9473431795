"""Measurement helpers shared by the benchmark scripts: FLOP counting, the matmul peak, the machine record.

Method: docs/benchmarks.md. Imported by the scripts as `benchlib` (the scripts' folder is on sys.path).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
MATMUL_N = 2048  # side of the float32 matmul whose rate is the machine's reference peak


def _sdpa_forward_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """softmax(q k^T) v: two matmuls, 2 * 2 * B * H * Lq * Lk * d."""
    b, h, lq, d = q_shape
    return 2 * b * h * lq * k_shape[2] * (d + v_shape[3])


def _sdpa_backward_flops(g_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """dV, dP, dQ, dK: four matmuls = 2 x forward (model FLOPs: no recompute of q k^T)."""
    return 2 * _sdpa_forward_flops(q_shape, k_shape, v_shape)


def flop_mapping() -> dict:
    """FlopCounterMode has no formula for CPU flash attention (it would count 0); add one.

    The same convention as the math path (meta device: 2 bmm forward, 4 bmm backward), so counts on the
    meta device and on the CPU agree exactly.
    """
    aten = torch.ops.aten
    out = {}
    for name, fn in [
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_forward_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_flops),
    ]:
        if hasattr(aten, name):
            out[getattr(aten, name)] = fn
    return out


def counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=flop_mapping())


def matmul_peak(seconds: float, n: int = MATMUL_N) -> dict[str, float]:
    """float32 n x n matmul rate over a loop of about `seconds`: max (the peak) and median, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)  # warm-up (threads, allocator)
    rates: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"max_gflops": max(rates), "median_gflops": statistics.median(rates), "matmuls": len(rates)}


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and flags, cores, torch build and threads, date, git commit."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "threads": threads,
        "dtype": "float32",
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": commit,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_range(stats: dict[str, float], fmt: str) -> str:
    """The string 'median [min-max]', each value with format `fmt`."""
    return f"{stats['median']:{fmt}} [{stats['min']:{fmt}}-{stats['max']:{fmt}}]"
