"""benchmarks/ddt_language.py, the language-likeness analysis, end to end on tiny runs: both tokenizers x both
orders scored, bad input refused with one line and exit code 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detok.runs.config import tokenizer_config
from detok.runs.train import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "ddt_language.py"

pytestmark = pytest.mark.slow


def _run(tmp_path, model: str, name: str, extra: list[str]) -> Path:
    """A 2-step tokenizer run on the DDT recipe (tests/test_ddt.py's pattern)."""
    out = tmp_path / name
    train_tokenizer(tokenizer_config(model, ["quickstart_ddt"], [
        f"train.out_dir={out}", "train.max_steps=2", "train.ckpt_every=2", "train.global_batch_size=8",
        "data.shapes_size=64", "train.progress=false", "usage_every=1", *extra]), recon_images=0)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lang")
    return {
        "ddt": _run(tmp, "ddt_tiny", "ddt", ["tokenizer.num_tokens=16", "tokenizer.sample_steps=2"]),
        "vq": _run(tmp, "vqvit_tiny", "vq", []),  # K 16: 32 px, patch 8; codebook 64, as ddt_tiny
    }


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)


def test_quick_analysis_scores_both_tokenizers_in_both_orders(runs, tmp_path):
    out = tmp_path / "lang.json"
    res = _script("--ddt", str(runs["ddt"]), "--vq", str(runs["vq"]), "--quick", "--out", str(out),
                  "--work", str(tmp_path / "work"))
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert "partial" not in data and data["settings"]["steps"] == 20 and data["settings"]["images"] == 256
    perm = data["permutation"]
    assert sorted(perm) == list(range(16)) and perm != list(range(16))
    assert set(data["tokenizers"]) == {"ddt", "vq"}
    for name, row in data["tokenizers"].items():
        assert (row["num_tokens"], row["codebook_size"]) == (16, 64), name
        assert row["own_order"] == ("raster" if name == "vq" else "ar (coarse first)")
        assert set(row["orders"]) == {"own", "shuffled"}
        for order, r in row["orders"].items():
            assert math.isfinite(r["val_ce"]) and 0 < r["val_ce"] < 2 * math.log(64 + 10 + 1), (name, order)
            assert r["lm_steps"] == 20 and math.isfinite(r["train_ce"])
        inc = row["shuffle_increase"]
        assert inc["abs"] == pytest.approx(row["orders"]["shuffled"]["val_ce"] - row["orders"]["own"]["val_ce"])
        assert inc["rel"] == pytest.approx(inc["abs"] / row["orders"]["own"]["val_ce"])
        assert 0 < row["positional_unigram_entropy"] <= row["unigram_entropy"] <= math.log(64) + 1e-9
    assert data["ddt_minus_vq_increase"] == pytest.approx(
        data["tokenizers"]["ddt"]["shuffle_increase"]["abs"] - data["tokenizers"]["vq"]["shuffle_increase"]["abs"])
    assert "CE shuffled" in res.stdout and "wrote" in res.stdout
    # both orders' caches hold the same ids, reordered by the one permutation
    from detok.tokenizers.latents import LatentCache

    own, shuffled = (LatentCache(tmp_path / "work" / "vq" / f"cache-{o}").data["ids"] for o in ("own", "shuffled"))
    assert (own[:, perm] == shuffled).all()


def test_mismatched_k_is_refused_with_one_line_and_exit_code_2(runs, tmp_path):
    other = _run(tmp_path, "vqvit_tiny", "vq64", ["tokenizer.patch_size=4"])  # K 64
    out = tmp_path / "lang.json"
    res = _script("--ddt", str(runs["ddt"]), "--vq", str(other), "--quick", "--out", str(out))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddt_language.py: ") and "K (tokens per image)" in lines[0]
    assert "16" in lines[0] and "64" in lines[0] and not out.exists()
    work = tmp_path / "work"
    work.mkdir()
    (work / "old").write_text("x")
    res = _script("--ddt", str(runs["ddt"]), "--vq", str(runs["vq"]), "--quick", "--work", str(work))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"ddt_language.py: --work {work} is not an empty folder; give a new one (caches and LM runs are written "
        "there)"]
