"""Domain feature network: FeatureNet protocol, training on tiny shapes, the cache and determinism."""

from __future__ import annotations

import json

import pytest
import torch

import detok.eval.domain as domain
from detok.data.build import DataConfig
from detok.eval.domain import (
    DomainCacheError,
    DomainConfig,
    DomainFeatures,
    DomainNet,
    augment,
    cache_key,
    class_accuracy,
    load_domain_net,
)
from detok.eval.features import FeatureNet, recipe

NUM_CLASSES = 10  # shapes
CHANCE = 1 / NUM_CLASSES
TINY_DATA = DataConfig(name="shapes", image_size=16, shapes_size=512, num_workers=0)
TINY = DomainConfig(image_size=16, width=8, stages=3, dim=32, steps=20, batch=64, warmup=5)  # cache tests
# shapes is slow to learn from little data at 16 px: accuracy is tested at 32 px with 4 stages (val: 102 images)
LEARN_DATA = DataConfig(name="shapes", image_size=32, shapes_size=1024, num_workers=0)
LEARN = DomainConfig(width=16, stages=4, dim=64, steps=200, batch=64, warmup=10, crop_pad=0, hflip=False)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _random_net(image_size: int = 16) -> DomainFeatures:
    net = DomainNet(NUM_CLASSES, image_size=image_size, width=8, stages=3, dim=32)
    net.init_weights(torch.Generator().manual_seed(0))
    return DomainFeatures(net, "domain-cnn/test@16")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """One tiny domain net trained into a module-wide cache dir: (cache dir, DomainFeatures)."""
    torch.set_num_threads(1)  # the determinism test retrains under the same thread count
    folder = tmp_path_factory.mktemp("domain-cache")
    return folder, load_domain_net(TINY_DATA, TINY, cache_dir=folder, progress=False)


def test_feature_net_protocol_and_shapes():
    feats = _random_net()
    assert isinstance(feats, FeatureNet)
    out = feats(_images(5, 16))
    assert out["pool"].shape == (5, 32) and out["logits"].shape == (5, NUM_CLASSES)
    assert out["pool"].dtype == torch.float32 and torch.isfinite(out["pool"]).all()
    assert recipe(feats) == {
        "feature_net": "domain-cnn/test@16",
        "weights_sha256": feats.weights_sha256,
        "dim": 32,
        "resize": feats.resize,
    }
    assert len(feats.weights_sha256) == 16
    with pytest.raises(ValueError, match="uint8"):
        feats(_images(2, 16).float())


def test_chunking_and_per_image_features(monkeypatch):
    """Eval-mode features do not depend on the batch: chunked, whole and one-by-one agree."""
    feats, images = _random_net(), _images(7, 16)
    whole = feats(images)["pool"]
    monkeypatch.setattr(domain, "FEATURE_CHUNK", 3)
    torch.testing.assert_close(feats(images)["pool"], whole)
    torch.testing.assert_close(torch.cat([feats(images[i : i + 1])["pool"] for i in range(7)]), whole)


def test_resize_path():
    feats = _random_net(image_size=16)
    big = _images(3, 64)
    out = feats(big)
    assert out["pool"].shape == (3, 32) and out["logits"].shape == (3, NUM_CLASSES)
    small = torch.nn.functional.interpolate(big.float(), size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(out["pool"], feats.net.embed(small / 127.5 - 1)["pool"])


def test_augment_is_seeded_and_shape_preserving():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    assert torch.equal(augment(x, 0, False, torch.Generator()), x)
    a = augment(x, 2, True, torch.Generator().manual_seed(1))
    b = augment(x, 2, True, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    flipped = augment(x, 0, True, torch.Generator().manual_seed(3))
    for img, out in zip(x, flipped):  # each image is itself or its mirror
        assert torch.equal(out, img) or torch.equal(out, img.flip(-1))


def test_class_accuracy():
    logits = torch.eye(4)[[0, 1, 2, 3]]  # predicts 0, 1, 2, 3

    def net(images):
        return {"logits": logits[: len(images)]}

    assert class_accuracy(net, _images(4, 4), torch.tensor([0, 1, 0, 0])) == 0.5
    with pytest.raises(ValueError):
        class_accuracy(net, _images(4, 4), torch.tensor([0]))


def test_cache_entry_metadata(cached):
    _, feats = cached
    assert feats.name == "domain-cnn/shapes@16" and feats.dim == TINY.dim
    assert feats.meta["train_images"] == TINY_DATA.shapes_size and 0 <= feats.meta["val_accuracy"] <= 1


@pytest.mark.slow
def test_training_beats_chance(tmp_path):
    """About 8 s on a quiet core: 200 steps on 1024 shapes images reach > 2x chance on the val split."""
    feats = load_domain_net(LEARN_DATA, LEARN, cache_dir=tmp_path, progress=False)
    assert feats.meta["val_accuracy"] > 2 * CHANCE


def test_cache_files_and_reload_without_training(cached, monkeypatch):
    folder, first = cached
    key = cache_key(TINY_DATA, TINY)
    assert (folder / f"{key}.safetensors").is_file()
    meta = json.loads((folder / f"{key}.json").read_text())
    assert meta["weights_sha256"] == first.weights_sha256 and meta["config"]["steps"] == TINY.steps
    assert not list(folder.glob("*.tmp"))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached net was retrained")

    monkeypatch.setattr(domain, "train_domain_net", no_training)
    again = load_domain_net(TINY_DATA, TINY, cache_dir=folder, train_if_missing=False)
    assert again.weights_sha256 == first.weights_sha256
    images = _images(6, 16)
    torch.testing.assert_close(again(images)["pool"], first(images)["pool"], rtol=0, atol=0)


def test_keys_differ_with_config_and_data():
    key = cache_key(TINY_DATA, TINY)
    assert cache_key(TINY_DATA, DomainConfig(**{**TINY.__dict__, "seed": 1})) != key
    assert cache_key(DataConfig(**{**TINY_DATA.__dict__, "seed": 1}), TINY) != key
    assert cache_key(DataConfig(**{**TINY_DATA.__dict__, "image_size": 32}), TINY) != key
    assert cache_key(DataConfig(**{**TINY_DATA.__dict__, "num_workers": 2}), TINY) == key  # how, not what


def test_missing_entry_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_domain_net(TINY_DATA, TINY, cache_dir=tmp_path, train_if_missing=False)
    assert str(tmp_path / f"{cache_key(TINY_DATA, TINY)}.safetensors") in str(err.value)
    assert "python -m detok.eval.domain" in str(err.value)


def test_corrupt_entry_is_an_error_naming_the_file(cached, tmp_path):
    folder, _ = cached
    key = cache_key(TINY_DATA, TINY)
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"{key}{suffix}").write_bytes((folder / f"{key}{suffix}").read_bytes())
    (tmp_path / f"{key}.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DomainCacheError, match=str(tmp_path / f"{key}.safetensors")):
        load_domain_net(TINY_DATA, TINY, cache_dir=tmp_path)


def test_main_reads_the_entry(cached, monkeypatch, capsys):
    """The command named by the FileNotFoundError finds the same entry."""
    folder, first = cached
    monkeypatch.setattr(domain, "train_domain_net", None)  # would raise TypeError if called
    domain.main(
        [f"cache_dir={folder}", "data.name=shapes", "data.image_size=16", "data.shapes_size=512"]
        + ["data.num_workers=0", "domain.image_size=16", "domain.width=8", "domain.stages=3", "domain.dim=32"]
        + ["domain.steps=20", "domain.batch=64", "domain.warmup=5"]
    )
    assert json.loads(capsys.readouterr().out)["weights_sha256"] == first.weights_sha256


def test_training_is_deterministic(cached, tmp_path):
    """Same seed, same weights, also when the first caller is inside no_grad (as evaluate_tokenizer is)."""
    _, first = cached
    with torch.no_grad():
        again = load_domain_net(TINY_DATA, TINY, cache_dir=tmp_path, progress=False)
    assert again.weights_sha256 == first.weights_sha256
