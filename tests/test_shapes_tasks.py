"""Shapes tasks: attribute labels, instruction-editing pairs, held-out (colour, shape) combinations."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from detok.data.shapes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    COLOURS,
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    PLURALS,
    SHAPES,
    SIZES,
    ShapesDataset,
    held_out_prompts,
    held_out_scenes,
    is_held_out,
    parse_caption,
    scene_labels,
)
from detok.data.shapes_tasks import (
    INSTRUCTION_TEMPLATES,
    POSITION_WORDS,
    RELATIVE_TEMPLATES,
    ShapesEditDataset,
    edit_scene,
)

# sha256 of the first 20 items (item image bytes + rendered PIL bytes; captions + scene reprs), computed by
# running the code as it was BEFORE the labels / held-out / editing additions: the default output is frozen
REFERENCE = {
    "default": (
        {},
        "8c4871b446d4b5584394983983065c84deec9de3a2c2b5784a236e8749379e3a",
        "adeafbb3cafb618fb5e93b5834431e7874024fb3614539f283adc98a7a9d6f1e",
    ),
    "val": (
        {"split": "val"},
        "2b05c5a21dd65d18bbefbe701da1a75934c59151685e0135a333932ff1873a67",
        "e46b5401ad94619ab57a52a22f80b9866c0d049b9b5baa94a85702e7d39aa76f",
    ),
    "64px_seed3": (
        {"size": 100, "image_size": 64, "seed": 3},
        "32dd5ef3c1d81391be48a6d7318d0e4b3f861511ff2a31e3823f35fd6d7f9df7",
        "13cfdb93668aacbc1958babfd8c00be95fcabecffab952d42320a5b13bc21798",
    ),
}


def _digest(ds: ShapesDataset, n: int = 20) -> tuple[str, str]:
    h_img, h_cap = hashlib.sha256(), hashlib.sha256()
    for i in range(n):
        item = ds[i]
        h_img.update(item["image"].numpy().tobytes())
        h_img.update(ds.render(ds.scene(i)).tobytes())
        h_cap.update((item["caption"] + "\n").encode())
        h_cap.update(repr(ds.scene(i)).encode())
    return h_img.hexdigest(), h_cap.hexdigest()


@pytest.mark.parametrize("name", list(REFERENCE))
def test_default_output_unchanged(name):
    kwargs, images, captions = REFERENCE[name]
    ds = ShapesDataset(**kwargs)
    assert set(ds[0]) == {"image", "label", "index", "caption", "skipped"}  # __getitem__ gained no keys
    assert _digest(ds) == (images, captions)
    # exclude_held_out changes nothing for the val split (it is not a training split)
    if kwargs.get("split") == "val":
        assert _digest(ShapesDataset(**kwargs, exclude_held_out=True)) == (images, captions)


# ---------------------------------------------------------------- labels


def test_attribute_table():
    assert ATTRIBUTE_NAMES == ("shape", "colour", "count", "size", "position", "background")
    assert [len(ATTRIBUTES[a]) for a in ATTRIBUTE_NAMES] == [10, 12, 4, 3, 9, 12]
    assert ATTRIBUTES["count"] == (1, 2, 3, 4) and ATTRIBUTES["position"][0] == "in the top left"
    assert ATTRIBUTES["position"][5] == "on the right"  # row-major: 3 * row + col
    for values in ATTRIBUTES.values():
        assert len(set(values)) == len(values)


def test_labels_round_trip_to_caption_words():
    ds = ShapesDataset(200, 16, seed=5)
    for i in range(200):
        scene, labels = ds.scene(i), ds.labels(i)
        assert labels == scene_labels(scene) and list(labels) == list(ATTRIBUTE_NAMES)
        assert labels["shape"] == i % len(SHAPES)  # the class is the shape
        value = {a: ATTRIBUTES[a][labels[a]] for a in ATTRIBUTE_NAMES}
        noun = value["shape"] if value["count"] == 1 else PLURALS.get(value["shape"], value["shape"] + "s")
        article = "an" if value["background"][0] in "aeiou" else "a"
        words = (
            f"{COUNT_WORDS[value['count'] - 1]} {value['size']} {value['colour']} {noun} {value['position']} "
            f"on {article} {value['background']} background"
        )
        assert words == scene.caption, (i, labels)
        assert parse_caption(scene.caption) == labels


def test_parse_caption_free_text():
    got = parse_caption("A Large GREEN circle, top left, on an orange background.")
    assert got["colour"] == list(COLOURS).index("green") and got["background"] == list(COLOURS).index(
        "orange"
    )
    assert got["shape"] == 0 and got["size"] == list(SIZES).index("large")
    assert got["count"] is None and got["position"] is None
    assert all(v is None for v in parse_caption("nothing to see").values())


# ---------------------------------------------------------------- editing


def _in_bounds(scene) -> bool:
    r = SIZES[scene.size] / 2
    c = np.array(scene.centres)
    return bool((c - r >= 0).all() and (c + r <= 1).all())


@pytest.mark.parametrize("attribute", ATTRIBUTE_NAMES)
def test_edit_changes_exactly_the_named_attribute(attribute):
    ds = ShapesDataset(100, 32, seed=2)
    rng = np.random.default_rng(0)
    for i in range(100):
        source = ds.scene(i)
        target, instruction = edit_scene(source, attribute, rng)
        before, after = scene_labels(source), scene_labels(target)
        changed = [a for a in ATTRIBUTE_NAMES if before[a] != after[a]]
        assert changed == [attribute], (i, instruction, source.caption, target.caption)
        assert target.colour != target.background and len(target.centres) == target.count
        assert _in_bounds(target), (i, attribute, target)
        if attribute in ("colour", "background", "shape"):
            assert target.centres == source.centres
        else:
            assert target.centres != source.centres
        if attribute == "position":  # the group moves rigidly
            offsets = [np.array(s.centres) - np.array(s.centres).mean(0) for s in (source, target)]
            np.testing.assert_allclose(*offsets, atol=1e-12)
        assert not np.array_equal(np.asarray(ds.render(source)), np.asarray(ds.render(target)))


def _noun_forms(kind: str) -> set[str]:
    return {kind, PLURALS.get(kind, kind + "s")}


@pytest.mark.parametrize("attribute", ATTRIBUTE_NAMES)
def test_instructions_name_the_new_value(attribute):
    ds = ShapesDataset(100, 32, seed=7)
    rng = np.random.default_rng(1)
    templates = set()
    for i in range(100):
        source = ds.scene(i)
        target, instruction = edit_scene(source, attribute, rng)
        words = instruction.split()
        assert instruction == instruction.strip() and "  " not in instruction and "{" not in instruction
        if attribute == "colour":
            assert target.colour in words
        elif attribute == "background":
            assert target.background in words and "background" in words
        elif attribute == "shape":
            assert _noun_forms(target.kind) & set(words)
            if source.count == 1:
                assert re.search(rf"\ban? {target.kind}\b", instruction)
        elif attribute == "position":  # the destination ends the instruction
            where, phrase = POSITION_WORDS[target.row][target.col], target.position
            assert instruction.endswith(f" to the {where}") or instruction.endswith(f" {phrase}"), instruction
        elif attribute == "count":
            delta = target.count - source.count
            if words[0] in ("add", "remove", "take"):  # relative: "add one more", "take away one circle"
                assert delta == (1 if words[0] == "add" else -1), (instruction, source.count, target.count)
            else:
                assert COUNT_WORDS[target.count - 1] in words, (instruction, target.count)
        elif attribute == "size":
            bigger = SIZES[target.size] > SIZES[source.size]
            relative = (
                bool({"bigger", "larger", "enlarge"} & set(words))
                if bigger
                else bool({"smaller", "shrink"} & set(words))
            )
            assert target.size in words or relative, (instruction, source.size, target.size)
            assert not ({"bigger", "larger", "enlarge", "smaller", "shrink"} & set(words)) or relative
        templates.add(
            re.sub(r"\b(" + "|".join(map(re.escape, _all_value_words())) + r")\b", "_", instruction)
        )
    assert len(INSTRUCTION_TEMPLATES[attribute]) >= 3
    assert len(templates) >= 3, templates  # several templates per attribute are in use


def _all_value_words() -> list[str]:
    kinds = [w for k in SHAPES for w in _noun_forms(k)]
    return sorted(
        [*COLOURS, *SIZES, *COUNT_WORDS, *kinds, *[w for row in POSITION_WORDS for w in row]],
        key=len,
        reverse=True,
    )


def test_relative_templates_only_for_their_direction():
    assert set(RELATIVE_TEMPLATES) == {"count+1", "count-1", "size+", "size-"}
    ds = ShapesDataset(300, 16)
    rng = np.random.default_rng(3)
    seen = set()
    for i in range(300):
        source = ds.scene(i)
        target, instruction = edit_scene(source, "count", rng)
        if instruction in ("add one more", "remove one"):
            seen.add(instruction)
            assert target.count - source.count == (1 if instruction == "add one more" else -1)
    assert seen == {"add one more", "remove one"}


def test_edit_rejects_unknown_attribute():
    with pytest.raises(ValueError, match="unknown attribute"):
        edit_scene(ShapesDataset(1).scene(0), "texture", np.random.default_rng(0))


def test_edit_dataset_deterministic_and_split_distinct():
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a, b = ShapesEditDataset(120, 32, seed=4), ShapesEditDataset(120, 32, seed=4)
    val = ShapesEditDataset(120, 32, seed=4, split="val")
    keys = {"source", "target", "instruction", "attribute", "source_caption", "target_caption", "index"}
    for i in (0, 13, 59, 119):
        x, y, v = a[i], b[i], val[i]
        assert set(x) == keys and x["index"] == i
        for k in ("source", "target"):
            assert x[k].shape == (3, 32, 32) and x[k].dtype == torch.float32
            assert x[k].min() >= -1 and x[k].max() <= 1
            assert torch.equal(x[k], y[k]) and torch.equal(x[k], a[i][k])  # by index, repeatable
            assert not torch.equal(x[k], v[k])  # another stream per split
        assert (x["instruction"], x["target_caption"]) == (y["instruction"], y["target_caption"])
        assert x["source_caption"] == ShapesDataset(120, 32, seed=4)[i]["caption"]
        assert x["source_caption"] != x["target_caption"] and not torch.equal(x["source"], x["target"])
    assert a[-1]["index"] == 119
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(
        torch.get_rng_state(), torch_state
    )
    # every attribute is edited, each shape meeting each attribute equally often over 60 items
    pairs = {(i % 10, a.attribute(i)) for i in range(60)}
    assert len(pairs) == 60 and {a[i]["attribute"] for i in range(0, 60, 10)} == set(ATTRIBUTE_NAMES)
    only = ShapesEditDataset(30, 16, attributes=["colour"])
    assert {only.attribute(i) for i in range(30)} == {"colour"}
    with pytest.raises(ValueError):
        ShapesEditDataset(10, attributes=["texture"])
    with pytest.raises(IndexError):
        a.pair(120)


# ---------------------------------------------------------------- held-out combinations


def test_held_out_pairs_follow_the_rule():
    assert len(HELD_OUT_PAIRS) == 10
    assert [kind for _, kind in HELD_OUT_PAIRS] == SHAPES  # one per shape
    colours = [c for c, _ in HELD_OUT_PAIRS]
    assert len(set(colours)) == 10 and set(colours) <= set(COLOURS)  # each a different colour
    assert colours == [list(COLOURS)[(k + 1) % len(COLOURS)] for k in range(10)]
    assert HELD_OUT_PAIRS[0] == ("green", "circle") and HELD_OUT_PAIRS[-1] == ("black", "ellipse")


def test_exclude_held_out_is_real_and_minimal():
    n = 5000
    plain, excl = ShapesDataset(n, 16), ShapesDataset(n, 16, exclude_held_out=True)
    held = 0
    for i in range(n):
        p, e = plain.scene(i), excl.scene(i)
        assert not is_held_out(e), (i, e.caption)
        assert (e.colour, e.kind) not in HELD_OUT_PAIRS and e.colour != e.background
        if is_held_out(p):
            held += 1
            assert e.kind == p.kind and e.colour != p.colour
        else:
            assert e == p  # items without a held-out pair are untouched
    assert 250 < held < 600  # about 1 in 12 scenes has one without the exclusion: the exclusion is real
    # every held-out colour and shape is still seen in training, only their conjunction is not
    seen = {(excl.scene(i).colour, excl.scene(i).kind) for i in range(2000)}
    for colour, kind in HELD_OUT_PAIRS:
        assert any(c == colour for c, _ in seen) and any(k == kind for _, k in seen)
    # the val split keeps its held-out pairs (it is where composition is measured)
    val = ShapesDataset(600, 16, split="val", exclude_held_out=True)
    assert any(is_held_out(val.scene(i)) for i in range(600))


def test_edit_dataset_exclude_held_out():
    ds = ShapesEditDataset(1200, 16, exclude_held_out=True, attributes=["colour", "shape"])
    plain = ShapesEditDataset(1200, 16, attributes=["colour", "shape"])
    for i in range(1200):
        source, target, _, _ = ds.pair(i)
        assert not is_held_out(source) and not is_held_out(target), (i, target.caption)
    assert any(is_held_out(plain.pair(i)[1]) for i in range(1200))


def test_held_out_prompts_contain_every_pair():
    n = 12
    prompts, scenes = held_out_prompts(n), held_out_scenes(n)
    assert len(prompts) == 10 * n and prompts == [s.caption for s in scenes]
    assert prompts == held_out_prompts(n)  # deterministic
    assert prompts != held_out_prompts(n, seed=1)
    for p, (colour, kind) in enumerate(HELD_OUT_PAIRS):
        chunk = prompts[p * n : (p + 1) * n]
        for text in chunk:
            labels = parse_caption(text)
            assert (ATTRIBUTES["colour"][labels["colour"]], SHAPES[labels["shape"]]) == (colour, kind)
            assert colour in text.split() and _noun_forms(kind) & set(text.split())
        labels = [parse_caption(t) for t in chunk]
        for attribute in ("count", "size", "position", "background"):  # the other attributes vary
            assert len({lab[attribute] for lab in labels}) > 1, (colour, kind, attribute)
    assert all(_in_bounds(s) and s.colour != s.background for s in scenes)
    assert held_out_prompts(0) == []
