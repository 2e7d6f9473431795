"""Two gloo processes under torchrun train the tokenizer with DistributedDataParallel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from detok.io import Checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.dist
def test_two_process_ddp_tokenizer_training(tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        "-m", "detok.cli.main", "train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(run),
        "train.device=cpu", "train.max_steps=4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 8 = 2 process(es) x 4 per process" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["per_process_batch_size"] == 4
    assert all(v == v for v in summary["final"].values()), "finite losses"
    ck = Checkpoint(run)
    assert ck.step == 4
    # each rank keeps its own RNG stream (per-rank seeds), all saved in the one atomic checkpoint
    ranks = ck.training_state()["rank_rng"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["task"], ranks[1]["task"])
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])


@pytest.mark.slow
@pytest.mark.dist
def test_two_process_resume_equals_uninterrupted(tmp_path):
    """A 2-process run resumed from its step-2 checkpoint ends bit-identical to the uninterrupted 2-process run:
    weights, EMA, optimizer states and both ranks' RNG streams (so both ranks' data order and draws)."""
    import shutil

    def run(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "detok.cli.main", "train", "tokenizer", "--config", "tokenizer_tiny",
               "--out", str(out), "train.device=cpu", "train.max_steps=4", "train.ckpt_every=2",
               "disc_start_epoch=0.25", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(full)
    # the state a kill right after the step-2 checkpoint leaves: step 2 is `latest`, nothing later exists
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    (resumed / "checkpoints" / "latest").write_text("step-00000002\n")
    assert Checkpoint(resumed).step == 2
    run(resumed, "--resume")
    a, b = Checkpoint(full), Checkpoint(resumed)
    assert a.step == b.step == 4
    for part in ("weights", "ema"):
        for module, state in getattr(a, part).items():
            for k, v in state.items():
                assert torch.equal(v, getattr(b, part)[module][k]), (part, module, k)
    sa, sb = a.training_state(), b.training_state()
    for r in range(2):
        for key in ("torch", "task"):
            assert torch.equal(sa["rank_rng"][r][key], sb["rank_rng"][r][key]), (r, key)
    for name, opt in sa["optimizers"].items():
        for pid, st in opt["state"].items():
            for key, value in st.items():
                assert torch.equal(value, sb["optimizers"][name]["state"][pid][key]), (name, pid, key)


@pytest.mark.slow
@pytest.mark.dist
def test_two_process_generator_training_and_sampling(tmp_path):
    """A generator trains under 2-process DDP, and sampling with 2 processes gives the 1-process images."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tok = tmp_path / "tok"
    subprocess.run([sys.executable, "-m", "detok.cli.main", "train", "tokenizer", "--config", "tokenizer_tiny",
                    "--out", str(tok)], check=True, capture_output=True, env=env, timeout=600)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    gen = tmp_path / "gen"
    proc = subprocess.run(
        [*launch, "--master-port", str(_free_port()), "-m", "detok.cli.main", "train", "generator",
         "--model", "sit_tiny", "--tokenizer", str(tok), "--out", str(gen), "train.device=cpu", "train.max_steps=3",
         "train.global_batch_size=8", "data.shapes_size=64", "data.num_workers=0", "sample.per_class=1",
         "generator.sampler=euler", "generator.sample_steps=4"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((gen / "summary.json").read_text())["processes"] == 2
    common = ["-m", "detok.cli.main", "sample", str(gen), "-n", "6", "--batch-size", "2", "--device", "cpu"]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "s1")], capture_output=True, text=True,
                         env=env, timeout=600)
    two = subprocess.run([*launch, "--master-port", str(_free_port()), *common, "--out", str(tmp_path / "s2")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    a, b = np.load(tmp_path / "s1" / "samples.npz"), np.load(tmp_path / "s2" / "samples.npz")
    assert np.array_equal(a["arr_1"], b["arr_1"]) and np.array_equal(a["arr_0"], b["arr_0"])
