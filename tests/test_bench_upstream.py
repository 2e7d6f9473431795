"""The upstream A/B of benchmarks/bench_tokenizer.py runs exactly detok's masks (no upstream code needed here)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # as the scripts do

import bench_tokenizer as bt  # noqa: E402
import upstream_detok  # noqa: E402
from benchlib import BenchError  # noqa: E402


@pytest.mark.parametrize("n_tok", [16, 64, 256])
def test_ratio_for_keep_gives_upstreams_ceil_exactly_that_many_tokens(n_tok):
    for keep in range(1, n_tok):
        r = upstream_detok.ratio_for_keep(keep, n_tok)
        assert 0 < r < 1 and math.ceil(n_tok * (1 - r)) == keep
    assert upstream_detok.ratio_for_keep(n_tok, n_tok) == 0.0  # upstream's unmasked path


def test_replayed_draws_equal_the_detok_steps_draws():
    """draws_of (meta-device model) predicts the flip and visible-token count of TrainBench.step's own draw."""
    torch.set_num_threads(1)
    cfg = bt.run_config(bt.CASES["quickstart"], "model")
    bench = bt.TrainBench(cfg, "model", 4, "eager")
    seen = set()
    for seed in bt.step_seeds(0, 2, 6)[1]:
        bench.step(seed)
        flip, keep = bt.draws_of(cfg, 4, seed)
        assert keep == bench.keep.last
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(flip, torch.rand(4, generator=g) < 0.5)
        seen.add(keep)
    assert len(seen) > 1  # the seeds really draw different masks


def test_upstream_path_errors_name_the_problem(tmp_path):
    with pytest.raises(BenchError, match="no models/detok.py there"):
        upstream_detok.import_upstream(tmp_path)
    with pytest.raises(BenchError, match="no models/detok.py"):
        bt.plan(bt.parse_args(["--upstream", str(tmp_path), "--cases", "detok_ss_32"]))


def test_ab_rounds_rotate_over_every_side(tmp_path):
    """--ab-variants eager,compile_blocks: each round runs both detok variants and upstream, in rotated order,
    so no side always runs first (machine drift within a round falls on each side in turn)."""
    clone = tmp_path / "DeTok"
    (clone / "models").mkdir(parents=True)
    (clone / "models" / "detok.py").write_text("")
    args = bt.parse_args(["--upstream", str(clone), "--cases", "detok_ss_32", "--flavours", "model",
                          "--ab-variants", "eager,compile_blocks"])
    ab = [job.key for job in bt.plan(args) if "ab_round" in job.key]
    rounds = [[k["variant"] for k in ab if k["ab_round"] == r] for r in range(3)]
    assert rounds == [["eager", "compile_blocks", "upstream"], ["compile_blocks", "upstream", "eager"],
                      ["upstream", "eager", "compile_blocks"]]
    with pytest.raises(BenchError, match="--ab-variants: unknown nope"):
        bt.plan(bt.parse_args(["--upstream", str(clone), "--ab-variants", "eager,nope"]))


def test_meta_flop_counts_follow_the_visible_tokens():
    """The FLOPs every A/B row is scored with (meta device, DeTok.draw_mask replaced by a fixed L): more visible
    tokens cost more, the quadratic fit reproduces a fourth count, and L = N is the unmasked step."""
    cfg = bt.run_config(bt.CASES["quickstart"], "model")
    flops = bt.ModelFlops(cfg, 4)
    n = flops.n_tok
    counts = [flops(k) for k in (1, n // 4, n // 2, n - 1, n)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    bench = bt.TrainBench(cfg, "model", 4, "eager")
    seed = next(s for s in range(100) if bt.draws_of(cfg, 4, s)[1] < n)  # a masked step
    counted, keep = bench.count(seed)
    assert counted == flops(keep)  # the CPU count of the step that ran equals the meta count at its L
