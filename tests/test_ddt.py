"""The DDT tokenizer: token schedule and its conventions, the decoder's key mask, training, decoding from
prefixes, the token cache, exact resume and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detok import registry
from detok.engine.tasks import DDTTask
from detok.io import Checkpoint, find_checkpoint
from detok.processes.timestep_tokens import (
    appear_time,
    ar_order,
    code_order,
    prefix_lengths,
    prefix_mask,
    stage_tokens,
    visible_count,
)
from detok.runs.config import DDTRunConfig, tokenizer_config
from detok.runs.train import train_tokenizer
from detok.tokenizers.ddt import DDT, ddt_config
from detok.tokenizers.latents import CacheMismatch, LatentCache, write_cache
from detok.tokenizers.load import load_tokenizer


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- schedule ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["uniform", "piecewise"])
@pytest.mark.parametrize("k", [5, 16, 32, 512])
def test_schedule_is_monotone_and_covers_every_token(schedule, k):
    t = torch.linspace(0, 1, 20001)
    count = visible_count(t, k, schedule)
    assert int(count[0]) == 1 and int(count[-1]) == k  # one token near clean, all K at pure noise
    assert bool((count[1:] >= count[:-1]).all())
    assert set(count.tolist()) == set(range(1, k + 1))  # every count reached: each token gets its interval


def test_uniform_schedule_formula_and_control():
    t = torch.tensor([0.0, 0.01, 0.49, 0.5, 0.999, 1.0])
    assert visible_count(t, 32, "uniform").tolist() == [1, 1, 16, 17, 32, 32]  # min(floor(32 t), 31) + 1
    assert visible_count(t, 32, "all").tolist() == [32] * 6


def test_piecewise_schedule_is_the_released_one_at_512():
    assert stage_tokens(512) == (192, 184, 72, 48, 16)
    assert sum(stage_tokens(37)) == 37 and min(stage_tokens(37)) >= 1
    first = appear_time(512, "piecewise")  # the released schedule's appearance times (reference-selftok 2.3)
    for j, t in [(191, 0.199), (192, 0.2), (375, 0.399), (447, 0.597), (495, 0.796), (511, 0.9875)]:
        assert float(first[j]) == pytest.approx(t, abs=1e-3), j


def test_ar_order_is_reversed_code_order_and_prefix_is_the_coarse_end():
    code = torch.arange(8)[None]  # code indices 0..7
    ar = ar_order(code)
    assert ar.tolist() == [[7, 6, 5, 4, 3, 2, 1, 0]]  # coarse (last visible, high index) first
    assert torch.equal(code_order(ar), code)
    keep = prefix_mask(8, 3)
    assert keep.tolist() == [False] * 5 + [True] * 3  # the first 3 AR tokens = code indices 5, 6, 7
    # the first j AR tokens are the ones that appear last in t (visible only at high noise)
    first = appear_time(8, "uniform")
    assert bool(first[keep].min() >= first[~keep].max())
    assert prefix_lengths(32) == [0, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="does not fit"):
        prefix_mask(8, 9)


# -- the model -------------------------------------------------------------------------------------------------


def _tiny(**overrides) -> DDT:
    torch.manual_seed(0)
    return registry.build("tokenizer", "ddt_tiny", **overrides)


def test_decoder_mask_hides_exactly_the_tokens_beyond_k_of_t():
    """Changing a hidden token's code leaves the velocity unchanged; changing a visible one changes it."""
    tok = _tiny().eval()
    with torch.no_grad():  # non-zero adaLN / output weights, so that tokens can act on the output at all
        for p in tok.decoder.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=rng(1)))
    k = tok.num_tokens
    x = torch.randn(1, 3, 32, 32, generator=rng(2))
    codes = torch.randn(1, k, tok.cfg.quantizer.code_dim, generator=rng(3))
    for t_val in (0.05, 0.3, 0.62, 0.97):
        t = torch.tensor([t_val])
        visible = tok.visible(t)
        n_vis = int(visible.sum())
        assert n_vis == int(visible_count(t, k)[0]) and bool(visible[0, :n_vis].all())
        base = tok.decoder(x, t, codes, visible)
        for j in range(k):
            other = codes.clone()
            other[0, j] += 1.0
            changed = not torch.allclose(tok.decoder(x, t, other, visible), base, atol=1e-6)
            assert changed == (j < n_vis), (t_val, j)


def test_tokenize_is_deterministic_in_range_and_does_not_touch_the_codebook():
    tok = _tiny()
    x = torch.rand(4, 3, 32, 32, generator=rng(4)) * 2 - 1
    tok.train()(x, rng=rng(5))  # k-means init of the codebook
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    ids = tok.tokenize(x)
    assert ids.shape == (4, tok.num_tokens) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.codebook_size
    assert torch.equal(ids, tok.tokenize(x))
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    assert tok.training  # tokenize restores the mode


def test_detokenize_is_seeded_and_rejects_bad_ids():
    tok = _tiny().eval()
    ids = torch.randint(0, tok.codebook_size, (2, tok.num_tokens), generator=rng(6))
    a = tok.detokenize(ids, rng=rng(7), steps=3)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, tok.detokenize(ids, rng=rng(7), steps=3))
    assert not torch.equal(a, tok.detokenize(ids, rng=rng(8), steps=3))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.detokenize(torch.full((1, tok.num_tokens), 64), steps=2)
    with pytest.raises(ValueError, match="K = 16"):
        tok.detokenize(torch.zeros(1, 8, dtype=torch.long), steps=2)
    with pytest.raises(ValueError, match="integer"):
        tok.detokenize(torch.zeros(1, tok.num_tokens), steps=2)


def test_decoding_from_a_given_set_of_tokens_uses_exactly_those():
    """given = the first j AR positions is `known = j`; with given = the last j, changing any other id is a no-op."""
    tok = _tiny()
    tok.train()(torch.rand(4, 3, 32, 32, generator=rng(4)) * 2 - 1, rng=rng(5))  # k-means init: distinct codes
    tok.eval()
    with torch.no_grad():  # non-zero adaLN / output weights, so that tokens can act on the output at all
        for p in tok.decoder.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=rng(1)))
    k, j = tok.num_tokens, 4
    ids = torch.randint(0, tok.codebook_size, (2, k), generator=rng(6))
    first_j = torch.arange(k) < j  # (K,) AR positions 0 .. j-1
    assert torch.equal(tok.detokenize(ids, rng=rng(7), steps=3, known=j),
                       tok.detokenize(ids, rng=rng(7), steps=3, given=first_j))
    last_j = torch.arange(k) >= k - j
    base = tok.detokenize(ids, rng=rng(7), steps=3, given=last_j)
    coarse, fine = ids.clone(), ids.clone()
    coarse[:, 0] = (coarse[:, 0] + 1) % tok.codebook_size  # a hidden position: no effect
    fine[:, -1] = (fine[:, -1] + 1) % tok.codebook_size  # a given one: an effect
    assert torch.equal(tok.detokenize(coarse, rng=rng(7), steps=3, given=last_j), base)
    assert not torch.allclose(tok.detokenize(fine, rng=rng(7), steps=3, given=last_j), base, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        tok.detokenize(ids, steps=2, known=2, given=last_j)
    with pytest.raises(ValueError, match=r"\(K,\) = \(16,\)"):
        tok.detokenize(ids, steps=2, given=torch.ones(8, dtype=torch.bool))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="token schedule"):
        DDT(ddt_config("ddt_tiny", schedule="cosine"))


@pytest.mark.slow
def test_small_ddt_learns_tokens_that_carry_the_image():
    """8 fixed images (2x2 grids of flat colours), 250 steps: the flow loss falls, the reconstruction from all
    tokens gains PSNR, and near pure noise the decoder does better with an image's own tokens than with another
    image's or with none (the tokens carry information the noisy input no longer has)."""
    from detok.eval.recon import psnr_per_image, to_uint8

    torch.manual_seed(0)
    tok = DDT(ddt_config("ddt_mini", num_tokens=16, sample_steps=8, continuous_steps=100))
    x = torch.rand(8, 3, 2, 2, generator=rng(9)).repeat_interleave(16, -1).repeat_interleave(16, -2) * 2 - 1
    g = rng(10)

    def psnr() -> float:
        tok.eval()
        y = tok.detokenize(tok.tokenize(x), rng=rng(11)).clamp(-1, 1)
        tok.train()
        return float(psnr_per_image(to_uint8(x), to_uint8(y)).mean())

    start = psnr()
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(250):
        out = tok.train()(x, rng=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["flow"]))
    end = psnr()
    tok.eval()
    with torch.no_grad():
        codes = tok.quantizer.codes_from_ids(code_order(tok.tokenize(x)))  # (8, K, E)
        t = torch.full((8,), 0.95)
        eps = torch.randn(x.shape, generator=rng(12))
        xt, target, vis = 0.05 * x + 0.95 * eps, eps - x, tok.visible(t)

        def mse(c, v) -> float:
            return float((tok.decoder(xt, t, c, v) - target).pow(2).mean())

        own, other, none = mse(codes, vis), mse(codes.roll(1, 0), vis), mse(codes, torch.zeros_like(vis))
    print(f"flow {sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f}; PSNR {start:.2f} -> {end:.2f} dB; "
          f"t=0.95 mse own {own:.3f} other {other:.3f} none {none:.3f}")
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:10]) / 10
    assert end > start + 2.0
    assert own < other and own < 0.9 * none


# -- runs: training, resume, cache -------------------------------------------------------------------------------


def _cfg(tmp_path, name: str, steps: int = 4) -> DDTRunConfig:
    return tokenizer_config("ddt_tiny", ["quickstart_ddt"], [
        f"train.out_dir={tmp_path / name}", f"train.max_steps={steps}", "train.ckpt_every=2",
        "train.global_batch_size=8", "data.shapes_size=64", "tokenizer.sample_steps=2", "train.progress=false",
        "usage_every=1"])


def test_ddt_run_config_is_built_from_the_registry_preset():
    cfg = tokenizer_config("ddt_mini", ["quickstart_ddt"], ["tokenizer.quantizer.codebook_size=512"])
    assert isinstance(cfg, DDTRunConfig) and cfg.model == "ddt_mini"
    assert cfg.tokenizer.num_tokens == 32 and cfg.tokenizer.quantizer.codebook_size == 512


def test_train_then_reconstruct_reports_the_prefix_curve(tmp_path):
    summary = train_tokenizer(_cfg(tmp_path, "run"), recon_images=8)
    rec = summary["reconstruction"]
    assert list(rec["psnr_by_tokens"]) == ["0", "2", "4", "8", "16"]
    assert rec["psnr"] == rec["psnr_by_tokens"]["16"]
    assert list(rec["psnr_by_suffix"]) == ["2", "4", "8"]  # the last j tokens, 0 < j < K
    gaps = [rec["psnr_by_tokens"][j] - rec["psnr_by_suffix"][j] for j in ("2", "4", "8")]
    assert rec["order_gap_db"] == pytest.approx(sum(gaps) / 3)
    for key in ("grid", "prefix_grid", "prefix_plot"):
        assert Path(rec[key]).parent == tmp_path / "run" and Path(rec[key]).stat().st_size > 0, key
    assert (tmp_path / "run" / "prefixes.png").stat().st_size > 0
    assert (tmp_path / "run" / "prefix_psnr.png").stat().st_size > 0
    logged = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "code_perplexity" in line]
    assert logged, "codebook usage was never logged"
    tok = load_tokenizer(tmp_path / "run")
    assert isinstance(tok, DDT) and tok.num_tokens == 16


def _weights(run) -> dict[str, torch.Tensor]:
    path = find_checkpoint(run)
    return {**load_file(str(path / "weights.safetensors")),
            **{"ema." + k: v for k, v in load_file(str(path / "ema.safetensors")).items()}}


@pytest.mark.slow
def test_resumed_ddt_run_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
    train_tokenizer(_cfg(tmp_path, "full"), recon_images=0)
    real_step = DDTTask.step

    def killed(self, batch, step, generator):
        if step == 2:
            raise KeyboardInterrupt("simulated kill after the step-2 checkpoint")
        return real_step(self, batch, step, generator)

    monkeypatch.setattr(DDTTask, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(_cfg(tmp_path, "resumed"), recon_images=0)
    assert Checkpoint(tmp_path / "resumed").step == 2
    monkeypatch.setattr(DDTTask, "step", real_step)
    train_tokenizer(_cfg(tmp_path, "resumed"), resume=True, recon_images=0)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and any("quantizer" in k for k in a)  # the EMA codebook is in the weights
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_token_cache_round_trip_and_mismatch_errors(tmp_path):
    from detok.data import build_dataset, collate

    cfg = _cfg(tmp_path, "run", steps=2)
    train_tokenizer(cfg, recon_images=0)
    tok = load_tokenizer(tmp_path / "run")
    data = build_dataset(cfg.data, "train")
    meta = write_cache(tok, torch.utils.data.Subset(data, range(12)), tmp_path / "cache", torch.device("cpu"),
                       source={"tokenizer": "run"}, batch_size=5, collate=collate, progress=False)
    assert meta["tokens"] == "discrete" and meta["num_tokens"] == 16 and meta["codebook_size"] == 64
    assert meta["order"] == "ar"
    cache = LatentCache(tmp_path / "cache")
    cache.check(tok)
    item = cache[3]
    x = data[3]["image"][None]
    assert torch.equal(item["ids"], tok.tokenize(x)[0]) and torch.equal(item["ids_flip"], tok.tokenize(x.flip(-1))[0])
    other = DDT(ddt_config("ddt_tiny"))
    with pytest.raises(CacheMismatch, match="not by the tokenizer in use"):
        cache.check(other)


def test_a_continuous_generator_on_ddt_tokens_is_refused(tmp_path):
    from detok.runs.config import generator_config
    from detok.runs.train import train_generator

    train_tokenizer(_cfg(tmp_path, "run", steps=2), recon_images=0)
    cfg = generator_config(overrides=["model=sit_tiny", f"tokenizer={tmp_path / 'run'}",
                                      f"train.out_dir={tmp_path / 'gen'}", "data.name=shapes", "train.max_steps=1"])
    with pytest.raises(ValueError, match="continuous tokens but the tokenizer gives discrete"):
        train_generator(cfg)


@pytest.mark.slow
def test_quickstart_with_ddt_reports_the_prefix_curve_and_ddt_ar(tmp_path, monkeypatch):
    """`quickstart(with_ddt=True)`: DDT tokenizer -> token cache -> ddt_ar -> FID / class accuracy in summary["ddt"].
    (The domain feature net is replaced by the protocol tests' fixed projection: what is tested here is the
    DDT pipeline, and the real domain net has its own tests.)"""
    import json

    from detok.eval import protocol
    from detok.runs.quickstart import quickstart
    from test_eval_protocol import FakeNet  # tests/ is on sys.path under pytest

    monkeypatch.setenv("DETOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(protocol, "feature_net_for", lambda *a, **k: FakeNet(classes=10))
    summary = quickstart("shapes", tmp_path / "qs", steps=2, generator_steps=2, generators="", cache_images=64,
                         eval_samples=16, overrides=["stats_images=64"], with_ddt=True,
                         ddt_overrides=["tokenizer.sample_steps=2"])
    ddt = summary["ddt"]
    assert list(ddt["psnr_by_tokens"]) == ["0", "4", "8", "16", "32"] and ddt["tokenizer"]["steps"] == 2
    assert ddt["generator"]["model"] == "ddt_ar_mini" and ddt["generator"]["steps"] == 2
    assert ddt["tokenizer"]["input"] == "l-DeTok latents"  # the default: DDT over the quickstart's own latents
    ddt_tok = load_tokenizer(tmp_path / "qs" / "ddt")
    assert ddt_tok.base is not None and ddt_tok.input_shape == (8, 8, 8)
    assert 0 <= ddt["class_accuracy"] <= 1 and ddt["fid"] >= 0
    for png in (ddt["prefix_grid"], ddt["prefix_plot"], ddt["generator"]["samples"]):
        assert Path(png).stat().st_size > 0
    meta = json.loads((tmp_path / "qs" / "ddt_tokens" / "meta.json").read_text())
    assert meta["tokens"] == "discrete" and meta["count"] == 64 and meta["num_tokens"] == 32
    assert json.loads((tmp_path / "qs" / "summary.json").read_text())["ddt"]["psnr"] == ddt["psnr"]


def test_evaluate_reports_psnr_ssim_rfid_by_prefix_length(tmp_path, monkeypatch):
    """`detok evaluate` on a DDT run: one entry per prefix length, the full-K one equal to the top level.
    (A fixed projection stands in for the domain feature net, which has its own tests.)"""
    from detok.eval import protocol
    from detok.eval.protocol import EvalConfig, evaluate_tokenizer
    from test_eval_protocol import FakeNet  # tests/ is on sys.path under pytest

    monkeypatch.setattr(protocol, "feature_net_for", lambda *a, **k: FakeNet(classes=10))
    cfg = _cfg(tmp_path, "run", steps=2)
    train_tokenizer(cfg, recon_images=0)
    tok = load_tokenizer(tmp_path / "run")
    res = evaluate_tokenizer(tok, cfg.data, EvalConfig(recon_images=8, batch_size=4), progress=False)
    assert list(res["by_tokens"]) == ["0", "2", "4", "8", "16"]
    assert res["by_tokens"]["16"]["psnr"] == res["psnr"] and res["by_tokens"]["16"]["rfid"] == res["rfid"]
    assert all(v["rfid"] >= 0 and v["psnr"] > 0 for v in res["by_tokens"].values())
    assert "first j AR-order tokens" in res["recipe"]["encode"]
