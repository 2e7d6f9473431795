"""`detok bench tokenizer` with a discrete tokenizer: a tiny DDT and a tiny l-DeTok are two rows of one table.

ddt x ddt_ar and l-DeTok x sit are trained and scored by the one protocol; the pairings that cannot work (sit on
token ids, ddt_ar on continuous latents) are skipped with one log line and marked n/a in table.{json,md}; the rows
show K, the codebook size and "tokens: discrete" for the DDT and the latent shape for l-DeTok; a rerun skips every
finished cell, and an unfinished ddt_ar cell resumes. FID uses a fixed random projection as its feature net: the
bench's cell logic is under test here.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from detok.cli.main import main
from detok.eval import protocol
from detok.runs.config import tokenizer_config
from detok.runs.train import train_tokenizer
from detok.tokenizers.latents import LatentCache


class FakeNet:
    """A fixed random projection of 8x8-pooled pixels: a cheap, deterministic FeatureNet with logits."""

    name, weights_sha256, dim, resize = "fake-projection", "0" * 16, 16, "adaptive avg pool 8"

    def __init__(self, classes: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * 64, self.dim, generator=g)
        self.head = torch.randn(self.dim, classes, generator=g)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1)  # (B, 192)
        pool = x @ self.proj  # (B, 16)
        return {"pool": pool, "logits": pool @ self.head}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A 2-step DDT (ddt_tiny: K 16, codebook 64, 2 decoding steps) and a 2-step l-DeTok (tokenizer_tiny)."""
    root = tmp_path_factory.mktemp("bench_ddt")
    ddt = tokenizer_config("ddt_tiny", ["quickstart_ddt"], [
        f"train.out_dir={root / 'ddt'}", "train.max_steps=2", "train.ckpt_every=2", "train.global_batch_size=8",
        "data.shapes_size=64", "tokenizer.sample_steps=2", "train.progress=false", "usage_every=1"])
    train_tokenizer(ddt, recon_images=0)
    ldetok = tokenizer_config(None, ["tokenizer_tiny"], [f"train.out_dir={root / 'ldetok'}", "train.max_steps=2"])
    train_tokenizer(ldetok, recon_images=0)
    return root


@pytest.mark.slow
def test_ddt_row_next_to_ldetok_row(tokenizers, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("DETOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(protocol, "feature_net_for", lambda *a, **k: FakeNet())
    out = tmp_path / "bench"
    args = ["bench", "tokenizer", str(tokenizers / "ddt"), str(tokenizers / "ldetok"), "--generators", "ddt_ar,sit",
            "--budget", "2", "--batch-size", "8", "--cache-images", "32", "--set", "sample.per_class=0",
            "--set", "train.progress=false", "--eval", "n_search=32", "--eval", "n_final=32",
            "--eval", "batch_size=32", "--eval", "cfg_scales=[1.0]", "--eval", "ref_images=32",
            "--eval", "final_cfg1=false", "--out", str(out)]
    with caplog.at_level(logging.INFO, logger="detok.runs.bench"):
        assert main(args) == 0
    skipped = [r.getMessage() for r in caplog.records if "n/a" in r.getMessage()]
    assert len(skipped) == 2, skipped  # one line per impossible pairing
    assert any("ddt x sit: n/a (discrete tokens)" in m for m in skipped), skipped
    assert any("ldetok x ddt_ar: n/a (continuous latents)" in m for m in skipped), skipped

    # the DDT row's cache is its token ids (no statistics), the l-DeTok row's the posterior moments
    ids = LatentCache(out / "ddt" / "latents")
    assert ids.discrete and len(ids) == 32 and ids[0]["ids"].shape == (16,)
    assert not LatentCache(out / "ldetok" / "latents").discrete

    table = json.loads((out / "table.json").read_text())
    scored = {(r["tokenizer_name"], r["generator"]): r for r in table["rows"]}
    assert set(scored) == {("ddt", "ddt_ar"), ("ldetok", "sit")}
    for key, cell in scored.items():
        assert math.isfinite(cell["fid"]) and cell["n"] == 32 and cell["steps"] == 2, key
        assert cell["recipe"]["feature_net"] == "fake-projection" and "class_accuracy" in cell, key
        assert {"precision", "recall"} <= set(cell), key
    ddt_cell = scored[("ddt", "ddt_ar")]
    assert ddt_cell["model"] == "ddt_ar_mini" and ddt_cell["recipe"]["sampler"]["family"] == "DDTAR"
    assert ddt_cell["latents"] == {"tokens": "discrete", "num_tokens": 16, "codebook_size": 64, "latent_shape": [16]}
    assert scored[("ldetok", "sit")]["latents"]["tokens"] == "continuous"
    na = {(m["tokenizer_name"], m["generator"]): m["reason"] for m in table["not_applicable"]}
    assert na == {("ddt", "sit"): "n/a (discrete tokens)", ("ldetok", "ddt_ar"): "n/a (continuous latents)"}
    assert table["tokenizers"]["ddt"]["shown"] == "K 16, codebook 64, tokens: discrete"
    shape = table["tokenizers"]["ldetok"]["latents"]["latent_shape"]
    assert len(shape) == 3 and table["tokenizers"]["ldetok"]["shown"] == "x".join(map(str, shape))

    md = (out / "table.md").read_text().splitlines()
    assert md[0] == "| tokenizer | latents | sit | ddt_ar |"  # the registry's family order
    ddt_line = next(line for line in md if line.startswith("| ddt |"))
    assert "K 16, codebook 64, tokens: discrete" in ddt_line and "n/a (discrete tokens)" in ddt_line
    assert "n/a (continuous latents)" in next(line for line in md if line.startswith("| ldetok |"))
    assert (out / "table.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "ddt x sit: n/a (discrete tokens)" in printed and "ddt x ddt_ar: FID" in printed

    # a rerun: the finished cells are skipped (not retrained), the impossible pairings skipped again
    cells = [out / "ddt" / "ddt_ar" / "cell.json", out / "ldetok" / "sit" / "cell.json"]
    before = [c.stat().st_mtime_ns for c in cells]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detok.runs.bench"):
        assert main(args) == 0
    assert [c.stat().st_mtime_ns for c in cells] == before
    messages = [r.getMessage() for r in caplog.records]
    assert sum("done, skipped" in m for m in messages) == 2 and sum("n/a" in m for m in messages) == 2
    again = json.loads((out / "table.json").read_text())
    assert len(again["rows"]) == 2 and len(again["not_applicable"]) == 2

    # an unfinished ddt_ar cell resumes from its last checkpoint (its run records the tokenizer's codebook size)
    cells[0].unlink()
    assert main([*args[:args.index("--budget")], "--budget", "4", *args[args.index("--budget") + 2:]]) == 0
    resumed = json.loads(cells[0].read_text())
    assert resumed["steps"] == 4 and cells[1].stat().st_mtime_ns == before[1]
