"""benchmarks/bench_ddt.py end to end in --quick mode: every row measured in its own process, each with its ratio
to the in-run matmul peak, its absolute throughput and its peak RSS, and the KV cache / no-cache ratio reported.

Correctness of the report only: no speed is asserted (docs: benchmarks never become timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_ddt.py"

ROWS = {  # case -> (kind, its absolute throughput key)
    "train_ddt_quickstart": ("train", "img_per_s"),
    "train_ddt_quickstart_compiled": ("train", "img_per_s"),
    "train_ddt_s_256": ("train", "img_per_s"),
    "decode_ddt_quickstart_25": ("decode", "img_per_s"),
    "decode_ddt_quickstart_50": ("decode", "img_per_s"),
    "ddt_ar_sample_kv": ("ar_sample", "tokens_per_s"),
    "ddt_ar_sample_nocache": ("ar_sample", "tokens_per_s"),
}


@pytest.mark.slow
def test_quick_run_reports_every_row_and_the_cache_ratio(tmp_path):
    out = tmp_path / "ddt.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--threads", "1"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "partial" not in result  # the run completed
    peak = result["matmul_peak"]["peak_gflops"]
    assert peak > 0 and result["machine"]["threads"] == 1 and result["settings"]["quick"]

    rows = {r["case"]: r for r in result["rows"]}
    assert set(rows) == set(ROWS) and len(result["rows"]) == len(ROWS)
    for case, (kind, absolute) in ROWS.items():
        r = rows[case]
        assert "error" not in r, (case, r.get("error"), r.get("stderr_tail"))
        assert r["kind"] == kind and r["quick"] is True and r["threads"] == 1
        assert r["peak_fraction"] > 0  # the ratio first ...
        assert r["peak_fraction"] == pytest.approx(r["gflops_achieved"]["median"] / peak)
        for key in (absolute, "gflops_achieved"):  # ... then the absolute numbers
            assert 0 < r[key]["min"] <= r[key]["median"] <= r[key]["max"], (case, key, r[key])
        assert r["peak_rss_mb"] >= r["rss_at_start_mb"] > 0
        assert r["case_matmul_gflops"] > 0 and all(t > 0 for t in r["step_seconds"])
    for case in ("train_ddt_quickstart", "train_ddt_quickstart_compiled", "train_ddt_s_256"):
        r = rows[case]
        assert r["flops_per_step"] > 0 and r["flops_constant"] and r["peak_target"] == 0.6
        assert isinstance(r["meets_peak_target"], bool)
    assert rows["train_ddt_s_256"]["label"] == "paper-shaped"
    # the compiled row compiles every encoder / decoder block after its eager FLOP count: the same math counted
    assert rows["train_ddt_quickstart_compiled"]["compiled_blocks"] > 0
    assert rows["train_ddt_quickstart"]["compiled_blocks"] == 0
    assert rows["train_ddt_quickstart_compiled"]["flops_per_step"] == rows["train_ddt_quickstart"]["flops_per_step"]
    assert {r["euler_steps"] for c, r in rows.items() if c.startswith("decode")} == {25, 50}
    assert rows["ddt_ar_sample_kv"]["kv_cache"] and not rows["ddt_ar_sample_nocache"]["kv_cache"]
    # the no-cache sampler recomputes every prefix: more counted FLOPs for the same ids
    assert rows["ddt_ar_sample_nocache"]["flops_per_sample"] > rows["ddt_ar_sample_kv"]["flops_per_sample"]

    kv = result["kv_comparison"]
    assert kv["speedup"] > 0 and kv["target"] == 5.0 and isinstance(kv["meets_target"], bool)
    assert kv["speedup"] == pytest.approx(
        rows["ddt_ar_sample_nocache"]["seconds_per_sample"]["median"]
        / rows["ddt_ar_sample_kv"]["seconds_per_sample"]["median"]
    )
    assert {p["case"] for p in result["peak_targets"]} == {n for n, (kind, _) in ROWS.items() if kind == "train"}

    # the printed table: the CPU-only line, every row, the cache / no-cache summary
    assert "CPU rows only" in proc.stdout
    for case in ROWS:
        assert case in proc.stdout
    assert "KV cache vs no cache (same run)" in proc.stdout
