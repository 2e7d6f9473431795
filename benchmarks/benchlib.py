"""Helpers shared by the benchmark scripts: FLOP counting, the matmul peak, the machine record, the driver.

Method: docs/benchmarks.md. Imported by the scripts as `benchlib` (the scripts' folder is on sys.path).

The driver (`run_jobs`) runs every row of a benchmark in a fresh process (so peak RSS does not mix between
rows): the script re-invokes itself with the row's arguments, and the child prints its row as one JSON line
marked `JSON_MARK` on stdout. After every row the result so far is written (atomically) with
`"partial": true`, so an interrupted run keeps the rows it measured, and `resume=True` continues it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
MATMUL_N = 2048  # side of the float32 matmul whose rate is the machine's reference peak
JSON_MARK = "BENCH_JSON "  # a child's stdout line "BENCH_JSON {row}" carries its row
STDERR_TAIL = 2000  # characters of a failed child's stderr kept in its error row


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


# -- the device: CPU float32, or CUDA with bf16 autocast ---------------------------------------------------
@dataclass(frozen=True)
class BenchDevice:
    """Where a benchmark's rows run and how they are timed there.

    device: "cpu" or "cuda"; amp: "bf16" (torch.autocast(device, bfloat16) around the forward and loss, as
    the engine's `train.precision=auto` does on CUDA) or "fp32". On CUDA every clock read is preceded by
    torch.cuda.synchronize (kernels run asynchronously) and peak memory is max_memory_allocated; on the
    CPU it is ru_maxrss. The matmul peak a row is compared with is measured on the same device in the
    same dtype (bf16 for autocast rows: the tensor-core rate).
    """

    type: str
    amp: str

    @property
    def device(self) -> torch.device:
        return torch.device(self.type)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the matmuls the rows run (the peak's dtype)."""
        return torch.bfloat16 if self.amp == "bf16" else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "bf16":
            return torch.autocast(self.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize()

    def now(self) -> float:
        """perf_counter after every queued kernel has finished (a plain perf_counter on the CPU)."""
        self.sync()
        return time.perf_counter()

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def reset_peak_memory(self) -> None:
        if self.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict[str, float]:
        """Peak memory so far: host RSS always, CUDA max_memory_allocated on a GPU (MiB)."""
        out = {"peak_rss_mb": rss_mb()}
        if self.type == "cuda":
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    def describe(self) -> str:
        if self.type == "cuda":
            return f"CUDA ({torch.cuda.get_device_name()}), {'bf16 autocast' if self.amp == 'bf16' else 'float32'}"
        return f"CPU, {'bf16 autocast' if self.amp == 'bf16' else 'float32'}"


NO_CUDA = "no CUDA: CPU rows only (float32); on a GPU machine the same rows run on CUDA with bf16 autocast"


def bench_device(device: str = "auto", amp: str = "auto") -> BenchDevice:
    """Resolve --device (auto / cpu / cuda) and --amp (auto / bf16 / fp32) into a BenchDevice.

    auto: CUDA when torch sees a GPU, else the CPU. amp auto: bf16 on CUDA, float32 on the CPU (CPU math
    stays float32; --amp bf16 on the CPU runs the autocast path there, which is how it is tested without a
    GPU). Raises BenchError for --device cuda on a machine without one, or an unknown value.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise BenchError(f"--device {device!r}: choose auto, cpu or cuda")
    if amp not in ("auto", "bf16", "fp32"):
        raise BenchError(f"--amp {amp!r}: choose auto, bf16 or fp32")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise BenchError(f"--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False; "
                         f"torch {torch.__version__}, {build})")  # fmt: skip
    kind = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    if amp == "auto":
        amp = "bf16" if kind == "cuda" else "fp32"
    return BenchDevice(kind, amp)


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    p.add_argument("--amp", default="auto",
                   help="auto (bf16 autocast on CUDA, float32 on the CPU), bf16 or fp32")  # fmt: skip


CPU = BenchDevice("cpu", "fp32")


def matmul_peak(seconds: float, n: int = MATMUL_N, dev: BenchDevice | None = None) -> dict[str, float]:
    """n x n matmul rate over a loop of about `seconds`: max (the peak) and median, GFLOP/s.

    On `dev` (default: the CPU, float32) in its dtype (bf16 for autocast rows). On CUDA each timed sample is
    a burst of matmuls between two synchronisations, so the launch and sync latency does not count.
    """
    dev = dev or CPU
    a = torch.randn(n, n, device=dev.device, dtype=dev.dtype)
    b = torch.randn(n, n, device=dev.device, dtype=dev.dtype)
    c = torch.empty(n, n, device=dev.device, dtype=dev.dtype)
    burst = 1 if dev.type == "cpu" else 20
    torch.mm(a, b, out=c)  # warm-up (threads, allocator, cuBLAS handles)
    rates: list[float] = []
    t_end = dev.now() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        t0 = dev.now()
        for _ in range(burst):
            torch.mm(a, b, out=c)
        rates.append(burst * 2 * n**3 / (dev.now() - t0) / 1e9)
    return {"max_gflops": max(rates), "median_gflops": statistics.median(rates), "matmuls": burst * len(rates),
            "device": dev.type, "dtype": str(dev.dtype).removeprefix("torch.")}  # fmt: skip


def machine_info(threads: int, dev: BenchDevice | None = None) -> dict[str, Any]:
    """CPU model and flags, cores, torch build and threads, the device the rows run on, date, git commit."""
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
        "device": (dev or CPU).type,
        "amp": (dev or CPU).amp,
        "device_name": (dev or CPU).describe(),
        "cuda_available": torch.cuda.is_available(),
        "dtype": str((dev or CPU).dtype).removeprefix("torch."),
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


# -- the driver ---------------------------------------------------------------------------------------
class BenchError(ValueError):
    """A benchmark that cannot start as asked (unknown case, renamed preset, a result it cannot resume).

    The scripts' main() turns it into one line on stderr and exit status 2, before any row runs.
    """


@dataclass(frozen=True)
class Job:
    """One row of a benchmark: the command of the fresh process that measures it, and the row's identity.

    `key` holds the fields that identify the row (e.g. case, flavour, variant): an error row is `key` plus
    "error", and `resume` keeps an earlier row whose fields equal `key`. The child prints its row as one
    stdout line `JSON_MARK + json.dumps(row)` (the last such line counts) and exits 0.
    """

    key: dict[str, Any]
    argv: list[str]
    label: str = ""
    env: dict[str, str] | None = field(default=None, compare=False)  # None: the parent's environment


def child_row(job: Job) -> dict[str, Any]:
    """Run `job.argv` in a fresh process; its JSON row, or `key` + "error" (+ its stderr's tail) if it failed.

    The child's stderr is passed through to ours as it comes (progress lines) and its tail kept for the
    error row; stdout is read for the JSON line.
    """
    proc = subprocess.Popen(job.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=job.env)
    tail = bytearray()

    def tee() -> None:
        assert proc.stderr is not None
        raw = getattr(sys.stderr, "buffer", None)
        while chunk := proc.stderr.read1(65536):
            if raw is not None:
                raw.write(chunk)
                raw.flush()
            else:  # a text-only stderr (e.g. replaced by a test harness)
                sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()
            tail.extend(chunk)
            del tail[: max(0, len(tail) - 4 * STDERR_TAIL)]  # keep a bounded tail (bytes ~ characters)

    thread = threading.Thread(target=tee, daemon=True)
    thread.start()
    try:
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode(errors="replace")
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (KeyboardInterrupt): do not leave the child running
            proc.kill()
            proc.wait()
    thread.join()
    lines = [ln for ln in stdout.splitlines() if ln.startswith(JSON_MARK)]
    if code == 0 and lines:
        return json.loads(lines[-1][len(JSON_MARK) :])
    reason = f"exit {code}" if code else "exit 0 without a JSON row"
    return {**job.key, "error": reason, "stderr_tail": tail.decode(errors="replace")[-STDERR_TAIL:]}


def write_json(path: str | Path, obj: dict[str, Any]) -> None:
    """Write `obj` as indented JSON atomically: a temporary file beside `path`, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _same_run(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that must agree for a resumed run to extend an earlier one (not the resume flag)."""
    return {k: v for k, v in settings.items() if k != "resume"}


def load_partial(path: str | Path, header: dict[str, Any]) -> dict[str, Any] | None:
    """The partial result at `path` that a run with `header` may resume; None if there is no file.

    Raises BenchError if the file is a complete result, or was made with other settings or on another CPU
    (its rows would not be comparable with the new ones).
    """
    path = Path(path)
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    if not old.get("partial"):
        raise BenchError(f"cannot resume {path}: it is a complete result, not a partial one")
    if _same_run(old.get("settings", {})) != _same_run(header.get("settings", {})):
        raise BenchError(f"cannot resume {path}: it was run with other settings ({old.get('settings')})")
    was, now = old.get("machine", {}), header.get("machine", {})
    if (was.get("cpu"), was.get("threads")) != (now.get("cpu"), now.get("threads")):
        raise BenchError(
            f"cannot resume {path}: it was run on {was.get('cpu')} with {was.get('threads')} threads"
        )
    return old


def _take_row(rows: list[dict[str, Any]], key: dict[str, Any]) -> dict[str, Any] | None:
    """Remove and return the first row without an error whose fields equal `key` (None if there is none)."""
    for i, row in enumerate(rows):
        if not row.get("error") and all(row.get(k) == v for k, v in key.items()):
            return rows.pop(i)
    return None


def run_jobs(
    jobs: list[Job],
    header: dict[str, Any],
    out: str | Path | None,
    *,
    peak_seconds: float,
    resume: bool = False,
    peak_n: int = MATMUL_N,
    dev: BenchDevice | None = None,
) -> dict[str, Any]:
    """Run every job in a fresh process and gather the rows into one result, saved after every row.

    result = header ("command", "machine", "settings", the script's own keys) + "rows" (in job order)
    + "matmul_peak" (float32 peak_n^2 matmul rate at the start and the end of the run, and their max)
    + "wall_seconds"; every row with "gflops_achieved" gets "peak_fraction" of that peak. While it runs,
    `out` holds the rows so far with "partial": true (and the start peak); the complete result (returned,
    not yet written: the caller adds its comparisons and writes it with `write_json`) has no "partial" key.

    resume: keep the rows of a partial result at `out` made with the same settings on the same CPU
    (re-running only the missing and failed ones); the peak is then the max over both runs and "resumed"
    records the earlier run's machine and start peak. dev: where the peak is measured (the rows' device and
    dtype; default the CPU in float32).
    """
    kept: list[dict[str, Any]] = []  # the earlier run's rows, taken as their jobs come up
    earlier: dict[str, Any] | None = None  # what `result["resumed"]` records of the earlier run
    if resume:
        if out is None:
            raise BenchError("resume needs an output file (--out) to resume from")
        old = load_partial(out, header)
        if old is None:
            print(f"[bench] {out} does not exist: nothing to resume, starting afresh", file=sys.stderr)
        else:
            kept = list(old.get("rows", []))
            earlier = {
                "machine": old.get("machine"),
                "matmul_peak_start": old.get("matmul_peak", {}).get("start"),
            }
    start = matmul_peak(peak_seconds, peak_n, dev)
    print(f"[bench] matmul peak at start: {start['max_gflops']:.1f} GFLOP/s", file=sys.stderr, flush=True)
    # the start peak a partial file records: the best of this run's and the earlier run's (chained resumes)
    best_start = start
    if earlier is not None and earlier["matmul_peak_start"]:
        best_start = max(start, earlier["matmul_peak_start"], key=lambda p: p["max_gflops"])
    result: dict[str, Any] = {**header, "rows": []}
    t_run = time.perf_counter()
    n_kept = 0
    for job in jobs:
        label = job.label or " / ".join(str(v) for v in job.key.values())
        row = _take_row(kept, job.key) if earlier is not None else None
        if row is not None:
            n_kept += 1
            print(f"[bench] {label}: kept from the partial result", file=sys.stderr, flush=True)
        else:
            t0 = time.perf_counter()
            print(f"[bench] {label} ...", file=sys.stderr, flush=True)
            row = child_row(job)
            print(f"[bench] {label} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        result["rows"].append(row)
        if earlier is not None:
            result["resumed"] = {**earlier, "rows_kept": n_kept}
        if out:  # the rows so far survive an interrupted run
            write_json(out, {**result, "partial": True, "matmul_peak": {"start": best_start, "n": peak_n}})
    end = matmul_peak(peak_seconds, peak_n, dev)
    peak = max(best_start["max_gflops"], end["max_gflops"])
    result["matmul_peak"] = {"start": start, "end": end, "peak_gflops": peak, "n": peak_n}
    result["wall_seconds"] = time.perf_counter() - t_run
    for row in result["rows"]:
        if not row.get("error") and "gflops_achieved" in row:
            row["peak_fraction"] = row["gflops_achieved"]["median"] / peak
    return result


class TimedTrainStep:
    """The engine's per-step work on a fixed batch, timed by phase (Trainer._train_step minus data and logging).

    A subclass sets `task`, `model`, `batch`, `optimizers` (name -> AdamW, in the task's update order),
    `grad_clip`, `ema`, `generator` and `step_index`; `step` then runs task.step (forward and loss), the
    finiteness check, per optimizer zero_grad / backward / clip_grad_norm_ / step, and the EMA update.
    `dev` (default the CPU, float32): task.step runs under its autocast, as the engine's does, and every
    clock read waits for the device (CUDA kernels are asynchronous).
    """

    dev: BenchDevice = CPU

    task: Any
    model: torch.nn.Module
    batch: dict[str, Any]
    optimizers: dict[str, torch.optim.Optimizer]
    grad_clip: float
    ema: Any
    generator: torch.Generator
    step_index: int

    def step(self, seed: int) -> dict[str, float]:
        """One full training step with the generator seeded by `seed`; returns phase times (s)."""
        dev = self.dev
        t0 = dev.now()
        self.generator.manual_seed(seed)
        with dev.autocast():
            losses, _ = self.task.step(self.batch, self.step_index, self.generator)
        if not all(bool(torch.isfinite(v.detach()).all()) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at seed {seed}")
        t1 = dev.now()
        t_bwd = t_opt = 0.0
        for name, loss in losses.items():
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            ta = dev.now()
            loss.backward()
            tb = dev.now()
            params = [p for g in opt.param_groups for p in g["params"]]
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            opt.step()
            t_bwd, t_opt = t_bwd + tb - ta, t_opt + dev.now() - tb
        te = dev.now()
        self.ema.update(self.model)
        t2 = dev.now()
        self.step_index += 1
        return {"total": t2 - t0, "forward": t1 - t0, "backward": t_bwd, "optimizer": t_opt, "ema": t2 - te}
