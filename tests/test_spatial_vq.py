"""The spatial VQ baseline (vqvit): one token per patch in raster order, trained, loaded and cached as DDT is."""

from __future__ import annotations

import pytest
import torch

from detok import registry
from detok.config import ConfigError
from detok.runs.config import SpatialVQRunConfig, tokenizer_config
from detok.runs.train import train_tokenizer
from detok.tokenizers.latents import CacheMismatch, LatentCache, write_cache
from detok.tokenizers.load import load_tokenizer
from detok.tokenizers.spatial_vq import SpatialVQ, spatial_vq_config


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny(**overrides) -> SpatialVQ:
    torch.manual_seed(0)
    return registry.build("tokenizer", "vqvit_tiny", **overrides)


def _images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=rng(seed)) * 2 - 1


def test_presets_have_one_token_per_patch_and_the_ddt_codebooks():
    tiny, mini = _tiny(), registry.build("tokenizer", "vqvit_mini")
    assert (tiny.num_tokens, tiny.codebook_size, tiny.latent_shape) == (16, 64, (16,))  # 32 px / patch 8: 4 x 4
    assert (mini.num_tokens, mini.codebook_size) == (64, 1024)  # 32 px / patch 4: 8 x 8; ddt_mini's codebook
    assert tiny.discrete and not tiny.prefix_order
    assert registry.family_of("tokenizer", "vqvit_tiny").extra == {"trainable": True, "tokens": "discrete"}
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        SpatialVQ(spatial_vq_config("vqvit_tiny", patch_size=5))


def test_forward_is_mse_plus_commitment_and_reaches_every_parameter():
    tok = _tiny().train()
    x = _images()
    tok(x, rng=rng(1))  # k-means init of the codebook on the first batch (the commitment loss is 0 there)
    out = tok(_images(seed=2), rng=rng(3))
    assert set(out) == {"loss", "mse", "commit", "ids"}
    assert torch.isfinite(out["loss"]) and float(out["commit"]) > 0
    torch.testing.assert_close(out["loss"].detach(), out["mse"] + out["commit"])
    assert out["ids"].shape == (4, 16)
    out["loss"].backward()
    dead = [n for n, p in tok.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, dead
    assert any(n.startswith("encoder.") for n, _ in tok.named_parameters())  # the straight-through path


def _local(tok: SpatialVQ) -> SpatialVQ:
    """Zero every block's residual branch outputs: each token then sees only its own patch (and back)."""
    with torch.no_grad():
        for part in (tok.encoder, tok.decoder):
            for blk in part.blocks:
                for lin in (blk.attn.proj, blk.mlp.w3):
                    lin.weight.zero_()
                    lin.bias.zero_()
    return tok.eval()


def test_tokens_are_the_patches_in_raster_order():
    """With position-local blocks, changing patch (row r, column c) moves token r * g + c alone, and changing
    token r * g + c's code moves only that patch of the decoding."""
    tok = _local(_tiny())
    x = _images(1)
    g, p = tok.grid, tok.cfg.patch_size
    h = tok.encoder(x)  # (1, K, E)
    for r, c in [(0, 0), (0, 3), (2, 1), (3, 3)]:
        y = x.clone()
        y[..., r * p:(r + 1) * p, c * p:(c + 1) * p] *= -1
        moved = (tok.encoder(y) - h).abs().amax(-1)[0] > 1e-6  # (K,)
        assert moved.nonzero().flatten().tolist() == [r * g + c], (r, c)
    codes = torch.randn(1, tok.num_tokens, tok.cfg.quantizer.code_dim, generator=rng(4))
    base = tok.decoder(codes)
    other = codes.clone()
    other[0, 1 * g + 2] += 1.0  # token (row 1, column 2)
    diff = (tok.decoder(other) - base).abs().amax(1)[0]  # (H, W)
    changed = diff.unflatten(0, (g, p)).unflatten(2, (g, p)).amax((1, 3)) > 1e-6  # (g, g) patches
    assert changed.nonzero().tolist() == [[1, 2]]


def test_tokenize_is_raster_ids_in_range_deterministic_and_leaves_the_codebook():
    tok = _tiny()
    x = _images()
    tok.train()(x, rng=rng(5))
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    ids = tok.tokenize(x)
    assert ids.shape == (4, tok.num_tokens) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.codebook_size
    assert torch.equal(ids, tok.tokenize(x)) and torch.equal(ids, tok.encode(x))
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    assert tok.training  # tokenize restores the mode
    images = tok.detokenize(ids, rng=rng(6), steps=3)  # DDT's decoding options are accepted and ignored
    assert images.shape == x.shape and torch.equal(images, tok.decode(ids))


def test_detokenize_rejects_bad_ids():
    tok = _tiny().eval()
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.detokenize(torch.full((1, 16), 64))
    with pytest.raises(ValueError, match="K = 16"):
        tok.detokenize(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        tok.detokenize(torch.zeros(1, 16))


# -- runs: config, training, loading, cache ---------------------------------------------------------------------


def _cfg(tmp_path, name: str, steps: int = 4) -> SpatialVQRunConfig:
    return tokenizer_config("vqvit_tiny", ["quickstart_ddt"], [
        f"train.out_dir={tmp_path / name}", f"train.max_steps={steps}", "train.ckpt_every=2",
        "train.global_batch_size=8", "data.shapes_size=64", "train.progress=false", "usage_every=1"])


def test_run_config_takes_the_ddt_recipe_without_its_ddt_only_fields():
    cfg = tokenizer_config("vqvit_mini", ["quickstart_ddt"], ["tokenizer.quantizer.codebook_size=512"])
    assert isinstance(cfg, SpatialVQRunConfig) and cfg.model == "vqvit_mini"
    assert cfg.tokenizer.patch_size == 4 and cfg.tokenizer.quantizer.codebook_size == 512
    assert cfg.train.max_steps == 1500 and cfg.optim.lr == 1e-3 and cfg.data.name == "shapes"  # the recipe's
    with pytest.raises(ConfigError, match="tokenizer.schedule"):  # a DDT field asked for explicitly: an error
        tokenizer_config("vqvit_mini", ["quickstart_ddt"], ["tokenizer.schedule=uniform"])


def test_train_load_and_cache_round_trip(tmp_path):
    from detok.data import build_dataset, collate

    cfg = _cfg(tmp_path, "run")
    summary = train_tokenizer(cfg, recon_images=8)
    rec = summary["reconstruction"]
    assert "psnr_by_tokens" not in rec and rec["psnr"] > 0 and rec["n"] == 6  # raster ids: no prefix curve
    assert (tmp_path / "run" / "reconstructions.png").stat().st_size > 0
    assert not (tmp_path / "run" / "prefixes.png").exists()
    assert 0 < summary["codebook"]["used"] <= 1
    logged = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "code_perplexity" in line]
    assert logged and any('"mse"' in line for line in logged)

    tok = load_tokenizer(tmp_path / "run")
    assert isinstance(tok, SpatialVQ) and not tok.training and tok.num_tokens == 16
    data = build_dataset(cfg.data, "train")
    x = torch.stack([data[i]["image"] for i in range(5)])
    again = load_tokenizer(tmp_path / "run")
    assert torch.equal(tok.tokenize(x), again.tokenize(x))
    raw = load_tokenizer(tmp_path / "run", use_ema=False)
    assert raw.fingerprint() != tok.fingerprint()  # EMA and raw weights are told apart

    meta = write_cache(tok, torch.utils.data.Subset(data, range(12)), tmp_path / "cache", torch.device("cpu"),
                       source={"tokenizer": "run"}, batch_size=5, collate=collate, progress=False)
    assert meta["tokens"] == "discrete" and meta["num_tokens"] == 16 and meta["codebook_size"] == 64
    assert meta["order"] == "raster"  # not DDT's AR order
    cache = LatentCache(tmp_path / "cache")
    cache.check(tok)
    item = cache[3]
    x3 = data[3]["image"][None]
    assert torch.equal(item["ids"], tok.tokenize(x3)[0]) and torch.equal(item["ids_flip"], tok.tokenize(x3.flip(-1))[0])
    with pytest.raises(CacheMismatch, match="not by the tokenizer in use"):
        cache.check(_tiny())
