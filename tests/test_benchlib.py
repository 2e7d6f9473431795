"""The shared benchmark driver (benchmarks/benchlib.py) and the generator benchmark's registry checks.

The driver is exercised with trivial children (`python -c` printing a JSON row): an interrupted run keeps
the rows it measured in a file marked partial, a resumed run keeps them and runs the rest, a failed child
becomes an error row. No benchmark is run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # as the scripts do: `benchlib` is imported from their folder

import bench_generators  # noqa: E402
import benchlib  # noqa: E402
from detok import registry  # noqa: E402

HEADER = {"command": "test", "machine": {"cpu": "test cpu", "threads": 1}, "settings": {"cases": "a,b,c"}}


def row_child(row: dict) -> list[str]:
    """A child that measures nothing: it prints `row` the way a benchmark's --case mode does."""
    return [sys.executable, "-c", f"import json; print({benchlib.JSON_MARK!r} + json.dumps({row!r}))"]


def kill_parent_child() -> list[str]:
    """A child that kills the driver (SIGKILL: no clean-up, as a crash or an OOM kill)."""
    return [sys.executable, "-c", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"]


def run_driver_process(jobs: list[benchlib.Job], out: Path) -> int:
    """run_jobs in a process of its own (so a child can kill it); its exit code."""
    driver = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "import benchlib\n"
        "jobs = [benchlib.Job(key, argv) for key, argv in json.loads(sys.argv[1])]\n"
        "benchlib.run_jobs(jobs, json.loads(sys.argv[2]), sys.argv[3], peak_seconds=0.0, peak_n=32)\n"
    )
    spec = json.dumps([[j.key, j.argv] for j in jobs])
    proc = subprocess.run([sys.executable, "-c", driver, spec, json.dumps(HEADER), str(out)], check=False)
    return proc.returncode


def test_interrupted_run_keeps_rows_marked_partial_and_resume_completes_it(tmp_path, capfd):
    out = tmp_path / "result.json"
    first = {"case": "a", "value": 1, "run": 1}
    jobs = [
        benchlib.Job({"case": "a"}, row_child(first)),
        benchlib.Job({"case": "b"}, kill_parent_child()),
        benchlib.Job({"case": "c"}, row_child({"case": "c", "value": 3})),
    ]
    assert run_driver_process(jobs, out) == -9  # the driver died in the second row
    saved = json.loads(out.read_text())
    assert saved["partial"] is True
    assert saved["rows"] == [first]
    assert saved["settings"] == HEADER["settings"]
    assert saved["matmul_peak"]["start"]["max_gflops"] > 0

    # resume: row a is kept (its new child would report run 2), b and c run; the result is complete
    rerun = [
        benchlib.Job({"case": "a"}, row_child({**first, "run": 2})),
        benchlib.Job({"case": "b"}, row_child({"case": "b", "value": 2})),
        benchlib.Job({"case": "c"}, row_child({"case": "c", "value": 3})),
    ]
    result = benchlib.run_jobs(rerun, HEADER, out, peak_seconds=0.0, peak_n=32, resume=True)
    assert result["rows"] == [first, {"case": "b", "value": 2}, {"case": "c", "value": 3}]
    assert "partial" not in result
    assert result["resumed"]["rows_kept"] == 1
    assert result["resumed"]["matmul_peak_start"] == saved["matmul_peak"]["start"]
    peak = result["matmul_peak"]
    assert peak["peak_gflops"] == max(
        peak["start"]["max_gflops"], peak["end"]["max_gflops"], saved["matmul_peak"]["start"]["max_gflops"]
    )
    # the last write of run_jobs is still the partial one (the caller adds its comparisons, then writes)
    on_disk = json.loads(out.read_text())
    assert on_disk["partial"] is True and on_disk["rows"] == result["rows"]
    benchlib.write_json(out, result)
    assert "partial" not in json.loads(out.read_text())
    assert "kept from the partial result" in capfd.readouterr().err


def test_failed_child_is_an_error_row_and_the_run_goes_on(tmp_path):
    out = tmp_path / "result.json"
    # the second child reads the result file: after the first row it must hold that row, marked partial
    peek = (
        "import json, sys; d = json.load(open(sys.argv[1]));"
        f"print({benchlib.JSON_MARK!r} + json.dumps({{'case': 'b', 'seen_partial': d['partial'],"
        " 'seen_rows': [r['case'] for r in d['rows']]}))"
    )
    fail = "import sys; sys.stderr.write('boom: no such preset\\n'); sys.exit(3)"
    jobs = [
        benchlib.Job({"case": "a"}, row_child({"case": "a", "gflops_achieved": {"median": 1.0}})),
        benchlib.Job({"case": "b"}, [sys.executable, "-c", peek, str(out)]),
        benchlib.Job({"case": "c", "kind": "sample"}, [sys.executable, "-c", fail]),
        benchlib.Job({"case": "d"}, [sys.executable, "-c", "print('no row')"]),
    ]
    result = benchlib.run_jobs(jobs, HEADER, out, peak_seconds=0.0, peak_n=32)
    a, b, c, d = result["rows"]
    assert a["peak_fraction"] == pytest.approx(1.0 / result["matmul_peak"]["peak_gflops"])
    assert b == {"case": "b", "seen_partial": True, "seen_rows": ["a"]}
    assert c == {"case": "c", "kind": "sample", "error": "exit 3", "stderr_tail": "boom: no such preset\n"}
    assert d["case"] == "d" and d["error"] == "exit 0 without a JSON row"
    assert [r["case"] for r in json.loads(out.read_text())["rows"]] == ["a", "b", "c", "d"]


def test_resume_refuses_a_complete_or_different_result(tmp_path):
    out = tmp_path / "result.json"
    jobs = [benchlib.Job({"case": "a"}, row_child({"case": "a"}))]
    benchlib.write_json(out, {**HEADER, "rows": []})
    with pytest.raises(ValueError, match="complete result"):
        benchlib.run_jobs(jobs, HEADER, out, peak_seconds=0.0, peak_n=32, resume=True)
    benchlib.write_json(out, {**HEADER, "settings": {"cases": "a"}, "rows": [], "partial": True})
    with pytest.raises(ValueError, match="other settings"):
        benchlib.run_jobs(jobs, HEADER, out, peak_seconds=0.0, peak_n=32, resume=True)
    other_cpu = {**HEADER, "machine": {"cpu": "another cpu", "threads": 1}, "rows": [], "partial": True}
    benchlib.write_json(out, other_cpu)
    with pytest.raises(ValueError, match="another cpu"):
        benchlib.run_jobs(jobs, HEADER, out, peak_seconds=0.0, peak_n=32, resume=True)
    # a resume flag that differs is not a different configuration; a missing file starts afresh
    benchlib.write_json(
        out, {**HEADER, "settings": {"cases": "a,b,c", "resume": False}, "rows": [], "partial": True}
    )
    assert benchlib.run_jobs(jobs, HEADER, out, peak_seconds=0.0, peak_n=32, resume=True)["rows"] == [
        {"case": "a"}
    ]
    missing = tmp_path / "none.json"
    assert benchlib.run_jobs(jobs, HEADER, missing, peak_seconds=0.0, peak_n=32, resume=True)["rows"] == [
        {"case": "a"}
    ]


# -- bench_generators: the family and the preset names come from the registry ---------------------------
@pytest.fixture
def toy_family():
    """A registered generator family the benchmark has no step count for (removed afterwards)."""
    sampling = registry.Sampling(steps="toy steps", default_steps="7")
    registry.register_family(
        registry.Family("generator", "toyfam", "a family for this test", sampling=sampling)
    )
    registry.register("generator", "toyfam_tiny", family="toyfam")(lambda **kw: None)
    yield "toyfam_tiny"
    registry.unregister("generator", "toyfam")


def test_total_steps_by_registered_family_and_an_unknown_family_is_an_error(toy_family):
    expected = {
        "sample_dit_tiny": (100, "DDPM steps (NFE)"),
        "sample_lightningdit_tiny": (99, "Euler steps (NFE)"),
        "sample_mar_tiny_256": (256, "AR iterations"),
        "sample_rasterar_tiny": (256, "tokens (AR steps)"),
    }
    for name, steps in expected.items():
        known = bench_generators.CASES[name]
        assert bench_generators.total_steps(bench_generators.build(known), known) == steps, name
    case = bench_generators.Case("sample", "sample", toy_family, 1, 0, 1)
    gen = types.SimpleNamespace(seq_len=256)  # what the old prefix fallback silently counted as AR tokens
    with pytest.raises(ValueError, match="no step count for generator family 'toyfam'"):
        bench_generators.total_steps(gen, case)
    with pytest.raises(ValueError, match="case toy: no step count for generator family 'toyfam'"):
        bench_generators.check_cases({"toy": case})


def test_case_names_are_checked_against_the_registry_at_plan_time():
    bench_generators.check_cases(bench_generators.CASES)  # every shipped case names a registered preset
    renamed = bench_generators.Case("sample", "sample", "dit_tinyy", 1, 0, 1)
    with pytest.raises(ValueError, match="generator 'dit_tinyy' is not registered"):
        bench_generators.check_cases({"renamed": renamed})
    fixed = bench_generators.Case("sample", "sample", "rasterar_tiny", 1, 0, 1, steps="64")
    with pytest.raises(ValueError, match="steps cannot be set"):
        bench_generators.check_cases({"fixed": fixed})
    with pytest.raises(ValueError, match="unknown case"):
        bench_generators.plan(bench_generators.parse_args(["--cases", "sample_nope"]))
    jobs = bench_generators.plan(bench_generators.parse_args(["--quick"]))
    assert [j.key["case"] for j in jobs] == bench_generators.QUICK_CASES


def test_sampling_calls_use_the_current_keywords():
    """The sampling rows call sample(cfg_scale=, head_steps=): no deprecated spelling, and RasterAR's head
    steps are not passed as `steps` (which RasterAR rejects: its steps are its tokens)."""
    args = bench_generators.parse_args(["--quick"])
    tiny_kv = bench_generators.Case("kv_whole", "kv", "rasterar_tiny", 2, 1, 1, cfg=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        row = bench_generators.run_kv_whole("kv_whole_tiny", tiny_kv, args)
        sample = bench_generators.run_sample_case(
            "sample_dit_tiny", bench_generators.CASES["sample_dit_tiny"], args
        )
    assert row["diffusion_steps_per_token"] == 2
    assert row["cached"]["runs"] == 1 and row["no_cache"]["runs"] == 1
    assert sample["total_steps"] == 100 and sample["steps_timed"] == 4 and sample["extrapolated"]


# -- the device path: CUDA + bf16 autocast on a GPU, dispatch tested here on the CPU -----------------------
def test_device_resolution_and_the_no_cuda_error():
    auto = benchlib.bench_device("auto", "auto")
    assert (auto.type, auto.amp) == (("cuda", "bf16") if torch.cuda.is_available() else ("cpu", "fp32"))
    cpu_bf16 = benchlib.bench_device("cpu", "bf16")
    assert cpu_bf16.dtype is torch.bfloat16 and benchlib.bench_device("cpu").dtype is torch.float32
    with cpu_bf16.autocast():  # the autocast the rows run under follows the device
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype is torch.bfloat16
    with benchlib.CPU.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype is torch.float32
    for device, amp, match in (("tpu", "auto", "--device 'tpu'"), ("cpu", "fp16", "--amp 'fp16'")):
        with pytest.raises(benchlib.BenchError, match=match):
            benchlib.bench_device(device, amp)
    if not torch.cuda.is_available():
        with pytest.raises(benchlib.BenchError, match="--device cuda: torch sees no CUDA device"):
            benchlib.bench_device("cuda")
    peak = benchlib.matmul_peak(0.0, 64, cpu_bf16)
    assert peak["dtype"] == "bfloat16" and peak["device"] == "cpu" and peak["max_gflops"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")
@pytest.mark.parametrize("script", ["bench_tokenizer.py", "bench_generators.py"])
def test_asking_for_cuda_without_one_is_one_line_and_exit_2(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{script}: --device cuda: torch sees no CUDA device")


def test_tokenizer_step_runs_the_forward_under_the_devices_autocast():
    """TrainBench on BenchDevice("cpu", "bf16"): task.step's matmuls run in bf16 (as they would on CUDA), the
    loss side stays float32 (TokenizerTask disables autocast there), the update is applied in float32."""
    import bench_tokenizer

    cfg = bench_tokenizer.run_config(bench_tokenizer.CASES["quickstart"], "model")
    seen: list[torch.dtype] = []
    for amp in ("bf16", "fp32"):
        bench = bench_tokenizer.TrainBench(cfg, "model", 2, "eager", dev=benchlib.BenchDevice("cpu", amp))
        linear = next(m for m in bench.model.modules() if isinstance(m, torch.nn.Linear))
        hook = linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        before = [p.detach().clone() for p in bench.model.parameters()]
        phases = bench.step(0)
        hook.remove()
        assert phases["total"] > 0 and all(p.dtype is torch.float32 for p in bench.model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, bench.model.parameters()))
    assert seen[0] is torch.bfloat16 and seen[-1] is torch.float32
    with pytest.raises(benchlib.BenchError, match="runs on the CPU in float32 only"):  # the A/B's math is fp32
        bench_tokenizer.plan(bench_tokenizer.parse_args(["--upstream", str(BENCH), "--amp", "bf16"]))


def test_generator_rows_record_their_device_and_autocast(capsys):
    """A training and a sampling row in --case mode with --amp bf16 on the CPU: the same code path a GPU row
    takes (device tensors and generators, autocast, synchronised clocks), with the device in the row."""
    for case in ("train_mar_tiny", "sample_dit_tiny"):
        row = bench_generators.main(["--case", case, "--quick", "--amp", "bf16", "--device", "cpu"])
        assert (row["device"], row["amp"]) == ("cpu", "bf16") and row["gflops_achieved"]["median"] > 0
        assert "peak_cuda_mb" not in row and row["peak_rss_mb"] > 0
    bench_generators.DEV = benchlib.CPU  # main set the module's device: back to the default for other tests
    capsys.readouterr()
