"""Shapes attribute checker: labels from scenes, GenEval-style scoring, edit success, cache, real training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import detok.eval.shapes_checker as sc
from detok.data.shapes import PLURALS, POSITIONS, ShapesDataset, scene_labels
from detok.data.transforms import to_tensor
from detok.eval.shapes_checker import (
    ATTRIBUTES,
    NUM_VALUES,
    VALUE_NAMES,
    CheckerCacheError,
    CheckerConfig,
    CheckerNet,
    CheckerNotUsableError,
    ShapesChecker,
    cache_key,
    edit_success,
    load_or_train_checker,
    mirror_position,
    score_prompts,
    value_index,
)

# cache tests: a few steps on a few images (about a second)
TINY = CheckerConfig(image_size=16, train_size=128, val_size=16, width=8, stages=3, dim=16, steps=3, batch=32,
                     warmup=1)  # fmt: skip
# the real run: 400 steps at 16 px (30 steps do not lift the shape head off chance at 16 px)
LEARN = CheckerConfig(image_size=16, train_size=2048, val_size=300, width=16, stages=3, dim=64, steps=400,
                      batch=64, warmup=10)  # fmt: skip


def _pred(**cols: list[int]) -> dict[str, torch.Tensor]:
    """Predictions of every attribute, 0 where not given."""
    n = len(next(iter(cols.values())))
    return {a: torch.tensor(cols.get(a, [0] * n), dtype=torch.int64) for a in ATTRIBUTES}


def _random_checker(image_size: int = 16, meta: dict | None = None) -> ShapesChecker:
    net = CheckerNet(image_size, width=8, stages=3, dim=16)
    net.init_weights(torch.Generator().manual_seed(0))
    return ShapesChecker(net, meta)


def test_labels_match_caption_words():
    ds = ShapesDataset(size=200, image_size=16, seed=3)
    for i in range(200):
        scene = ds.scene(i)
        labels = scene_labels(scene)
        assert set(labels) == set(ATTRIBUTES)
        assert all(0 <= labels[a] < NUM_VALUES[a] for a in ATTRIBUTES)
        words = {a: VALUE_NAMES[a][labels[a]] for a in ATTRIBUTES}
        caption = scene.caption
        first = caption.split()
        assert first[0] == words["count"] and first[1] == words["size"] and first[2] == words["colour"]
        noun = words["shape"] if scene.count == 1 else PLURALS.get(words["shape"], words["shape"] + "s")
        assert first[3] == noun, (caption, words)
        assert f" {words['position']} on " in caption
        assert caption.endswith(f" {words['background']} background")
        assert labels["shape"] == i % 10  # the class label of item i
        assert words["position"] == POSITIONS[scene.row][scene.col]


def test_hflip_premise_mirrored_scene_renders_as_the_flipped_image():
    """Training flips images and mirrors the position label: exact for every kind (all are symmetric)."""
    ds = ShapesDataset(size=40, image_size=32, seed=0)
    for i in range(40):
        s = ds.scene(i)
        m = dataclasses.replace(s, col=2 - s.col, centres=tuple((1 - x, y) for x, y in s.centres))
        assert torch.equal(to_tensor(ds.render(s)).flip(-1), to_tensor(ds.render(m)))
        pos = torch.tensor([scene_labels(s)["position"]])
        assert mirror_position(pos).item() == scene_labels(m)["position"]


def test_value_index():
    assert value_index("count", "two") == 1 and value_index("count", 1) == 1
    assert value_index("position", "in the top right") == 2 and value_index("position", "on the left") == 3
    assert value_index("colour", "red") == 0 and value_index("background", "grey") == 11
    with pytest.raises(ValueError):
        value_index("size", 3)
    with pytest.raises(ValueError):
        value_index("shape", "blob")
    with pytest.raises(KeyError):
        value_index("texture", 0)


def test_score_prompts_exact():
    pred = _pred(shape=[0, 1, 2, 3], colour=[5, 5, 5, 0], count=[0, 1, 2, 3])
    wanted = [
        {"shape": 0, "colour": 5},  # both right
        {"shape": 1, "colour": "red", "count": "two"},  # colour wrong (red = 0)
        {"shape": "triangle", "count": 2},  # both right
        {"count": 0},  # wrong (3 predicted)
    ]
    out = score_prompts(pred, wanted)
    assert out["n"] == 4 and out["correct"] == [True, False, True, False]
    assert out["overall"] == 0.5
    assert out["attributes"] == {"shape": 1.0, "colour": 0.5, "count": 2 / 3}
    full = score_prompts(pred, [{a: int(pred[a][i]) for a in ATTRIBUTES} for i in range(4)])
    assert full["overall"] == 1.0 and all(v == 1.0 for v in full["attributes"].values())
    with pytest.raises(ValueError):
        score_prompts(pred, wanted[:3])  # 4 predictions for 3 prompts


def test_edit_success_exact():
    src = _pred(shape=[0, 0, 0, 0, 0], colour=[1, 1, 1, 1, 1], size=[2, 2, 2, 2, 2])
    out = _pred(
        shape=[0, 0, 0, 0, 0],
        colour=[4, 4, 1, 4, 3],  # asked: colour -> 4
        size=[2, 0, 0, 2, 2],
    )
    ok = edit_success(src, out, "colour", 4)
    # 0: colour changed, rest kept; 1: colour and size changed (two attributes); 2: wrong attribute changed
    # (size, colour kept); 3: right; 4: colour changed to the wrong value
    assert ok.tolist() == [True, False, False, True, False]
    assert ok.dtype == torch.bool and ok.shape == (5,)
    assert edit_success(src, out, "colour", VALUE_NAMES["colour"][4]).tolist() == ok.tolist()
    per_item = edit_success(src, out, "colour", torch.tensor([4, 4, 4, 4, 3]))
    assert per_item.tolist() == [True, False, False, True, True]
    with pytest.raises(ValueError):
        edit_success(src, out, "colour", 12)


def test_predict_shapes_dtype_and_resize():
    checker = _random_checker(16)
    images = torch.rand(5, 3, 24, 24) * 2 - 1
    pred = checker.predict(images)
    assert set(pred) == set(ATTRIBUTES)
    for a in ATTRIBUTES:
        assert pred[a].shape == (5,) and pred[a].dtype == torch.int64
        assert ((pred[a] >= 0) & (pred[a] < NUM_VALUES[a])).all()
    as_uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
    assert all(torch.equal(pred[a], checker.predict(as_uint8)[a]) for a in ATTRIBUTES)
    assert all(len(v) == 0 for v in checker.predict(images[:0]).values())
    with pytest.raises(ValueError):
        checker.predict(images[:, :1])


def test_usable_flag_and_message():
    good = {a: 0.99 for a in ATTRIBUTES}
    assert _random_checker(meta={"val_accuracy": good}).usable
    _random_checker(meta={"val_accuracy": good}).require_usable()
    low = _random_checker(meta={"val_accuracy": {**good, "count": 0.91, "position": 0.949}})
    assert not low.usable and set(low.below_threshold()) == {"count", "position"}
    msg = low.usability_message()
    assert "NOT usable" in msg and "count 91.0%" in msg and "position 94.9%" in msg and " shape " not in msg
    with pytest.raises(CheckerNotUsableError, match="count"):
        low.require_usable()
    assert not _random_checker().usable  # nothing measured: not usable


def test_cache_key_changes_with_each_input(monkeypatch):
    base = cache_key(TINY)
    assert base.startswith("shapes-checker-16px-") and cache_key(TINY) == base
    changed = [
        dataclasses.replace(TINY, data_seed=1),
        dataclasses.replace(TINY, image_size=24),
        dataclasses.replace(TINY, train_size=256),
        dataclasses.replace(TINY, steps=4),
        dataclasses.replace(TINY, width=16),  # architecture
        dataclasses.replace(TINY, lr=1e-3),  # recipe
    ]
    keys = [cache_key(c) for c in changed]
    monkeypatch.setattr(sc, "FORMAT_VERSION", sc.FORMAT_VERSION + 1)  # architecture version
    keys.append(cache_key(TINY))
    assert len(set(keys + [base])) == len(keys) + 1


def test_cached_checker_is_reused_not_retrained(tmp_path, monkeypatch):
    calls = []
    real = sc.train_checker

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sc, "train_checker", counting)
    with pytest.raises(FileNotFoundError, match="python -m detok.eval.shapes_checker"):
        load_or_train_checker(cfg=TINY, cache_dir=tmp_path, train_if_missing=False)
    first = load_or_train_checker(cfg=TINY, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1
    (meta_path,) = tmp_path.glob("*.json")
    weights = meta_path.with_suffix(".safetensors")
    mtimes = (meta_path.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    second = load_or_train_checker(cfg=TINY, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1  # not trained again
    assert (meta_path.stat().st_mtime_ns, weights.stat().st_mtime_ns) == mtimes
    assert second.weights_sha256 == first.weights_sha256 and second.meta == first.meta
    meta = json.loads(meta_path.read_text())
    assert meta["key"] == cache_key(TINY) == meta_path.stem and meta["config"] == dataclasses.asdict(TINY)
    assert set(meta["val_accuracy"]) == set(ATTRIBUTES) and meta["train_images"] == TINY.train_size
    assert meta["usable"] is False  # 3 steps: far below 95%
    weights.write_bytes(b"not safetensors")
    with pytest.raises(CheckerCacheError, match="delete both files"):
        load_or_train_checker(cfg=TINY, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1  # a broken entry is an error, never silently retrained over


def test_real_training_beats_chance(tmp_path):
    """Un-mocked: 400 steps at 16 px on 2048 images (~7 s at 1 thread); every head beats chance on val."""
    checker = load_or_train_checker(cfg=LEARN, cache_dir=tmp_path, progress=False)
    val = ShapesDataset(LEARN.val_size, LEARN.image_size, LEARN.data_seed, "val")
    images = torch.stack([val[i]["image"] for i in range(8)])
    pred = checker.predict(images)
    assert all(pred[a].shape == (8,) and pred[a].dtype == torch.int64 for a in ATTRIBUTES)
    acc = checker.accuracy(val)
    assert acc == pytest.approx(checker.val_accuracy)  # the recorded numbers are the val split's
    loader = torch.utils.data.DataLoader(val, batch_size=64, shuffle=True, collate_fn=sc.collate)
    assert checker.accuracy(loader) == pytest.approx(acc)  # labels follow each batch's indices
    assert acc["shape"] > 1.5 / NUM_VALUES["shape"], acc
    for a in ATTRIBUTES:
        assert acc[a] > 1.5 / NUM_VALUES[a], (a, acc)
    assert not checker.usable and "NOT usable" in checker.usability_message()
