"""Generators through the CLI: train on a cache or online, sample to .npz / grid, cache mismatches refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detok.cli.main import main
from detok.generators.sampling import balanced_labels, rank_batches

GEN_STEPS = ["train.max_steps=3", "train.global_batch_size=8", "train.log_every=1", "train.progress=false",
             "sample.per_class=1"]


def test_balanced_labels_and_rank_batches():
    assert balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    r0, r1 = rank_batches(10, 4, 0, 2), rank_batches(10, 4, 1, 2)
    assert r0 == [(0, 4), (8, 10)] and r1 == [(4, 8)]


@pytest.fixture(scope="module")
def tokenizer_and_cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gen")
    assert main(["train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(root / "tok")]) == 0
    assert main(["encode", str(root / "tok"), "--out", str(root / "cache"), "--num-workers", "0"]) == 0
    return root / "tok", root / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sit_tiny", "mar_tiny"])
def test_train_generator_on_cache_then_sample(tokenizer_and_cache, tmp_path, model):
    tok, cache = tokenizer_and_cache
    run = tmp_path / model
    assert main(["train", "generator", "--model", model, "--tokenizer", str(tok), "--cache", str(cache),
                 "--out", str(run), *GEN_STEPS]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and Path(summary["samples"]["grid"]).exists()
    out = tmp_path / "samples"
    assert main(["sample", str(run), "-n", "6", "--batch-size", "4", "--steps", "4", "--out", str(out)]) == 0
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (6, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.slow
def test_train_generator_online_encoding(tokenizer_and_cache, tmp_path):
    tok, _ = tokenizer_and_cache
    assert main(["train", "generator", "--model", "dit_tiny", "--tokenizer", str(tok), "--out", str(tmp_path / "d"),
                 "data.shapes_size=64", "data.num_workers=0", *GEN_STEPS, "sample.steps=4"]) == 0


def test_mismatching_cache_is_refused(tokenizer_and_cache, tmp_path, capsys):
    tok, cache = tokenizer_and_cache
    meta = json.loads((cache / "meta.json").read_text())
    bad = tmp_path / "bad_cache"
    bad.mkdir()
    for f in cache.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    meta["tokenizer_fingerprint"] = "0" * 16
    (bad / "meta.json").write_text(json.dumps(meta))
    code = main(["train", "generator", "--model", "sit_tiny", "--tokenizer", str(tok), "--cache", str(bad),
                 "--out", str(tmp_path / "x"), *GEN_STEPS])
    assert code == 2 and "detok encode" in capsys.readouterr().err


def test_unknown_generator_field_is_a_config_error(tokenizer_and_cache, tmp_path, capsys):
    tok, cache = tokenizer_and_cache
    code = main(["train", "generator", "--model", "sit_tiny", "--tokenizer", str(tok), "--cache", str(cache),
                 "--out", str(tmp_path / "y"), "generator.no_such_field=1", *GEN_STEPS])
    assert code == 2 and "no_such_field" in capsys.readouterr().err


def test_posterior_means_option_feeds_the_generator_normalised_means(tokenizer_and_cache):
    """posterior=mean: the generator learns the normalised posterior means, exactly and without noise, from
    the cache and when encoding on the fly; the default draws posterior samples (different every draw)."""
    import torch

    from detok.engine.tasks import GeneratorTask
    from detok.registry import build
    from detok.tokenizers.latents import LatentCache
    from detok.tokenizers.load import load_tokenizer

    tok_dir, cache_dir = tokenizer_and_cache
    tok, cache = load_tokenizer(tok_dir), LatentCache(cache_dir)
    gen = build("generator", "sit_tiny", latent_shape=tok.latent_shape, num_classes=10)
    item = cache[0]
    batch = {"moments": item["moments"][None], "moments_flip": item["moments_flip"][None]}
    means = tok.normalize(item["moments"][None, : tok.latent_channels].float())
    task = GeneratorTask(gen, tok, use_cache=True, hflip=False, posterior="mean")
    torch.testing.assert_close(task.latents(batch, torch.Generator().manual_seed(0)), means)
    sampled = GeneratorTask(gen, tok, use_cache=True, hflip=False)
    a, b = (sampled.latents(batch, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert not torch.allclose(a, b) and not torch.allclose(a, means)
    side = tok.cfg.image_size
    images = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(3)) * 2 - 1
    online = GeneratorTask(gen, tok, use_cache=False, hflip=False, posterior="mean")
    torch.testing.assert_close(online.latents({"image": images}, torch.Generator()), tok.normalize(tok.encode(images)))
    with pytest.raises(ValueError, match="posterior"):
        GeneratorTask(gen, tok, use_cache=True, posterior="median")
