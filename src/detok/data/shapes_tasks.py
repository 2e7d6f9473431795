"""Instruction editing on `shapes`: scene pairs that differ in exactly one attribute, with an instruction.

    from detok.data.shapes_tasks import ShapesEditDataset, edit_scene
    ds = ShapesEditDataset(10000, image_size=32, seed=0, split="train", exclude_held_out=True)
    item = ds[0]  # {"source", "target", "instruction", "attribute", "source_caption", "target_caption", "index"}

`edit_scene(scene, attribute, rng)` changes one attribute of a ShapeScene (a different value, drawn
uniformly) and re-lays-out only what that attribute requires:

- colour, background, shape: the object centres are kept; the object colour never equals the background.
- count: new object centres by the dataset's layout procedure (template, flip, jitter), with the group at
  the same fractional position in its grid cell.
- position: the group (same relative offsets) moves to another of the 9 cells, placed as the dataset does.
- size: the group is rescaled about its centre and kept at the same fractional position in its cell (so
  a bigger group still fits inside the image; for a centred group this is the same anchor).

The instruction is drawn from INSTRUCTION_TEMPLATES[attribute]; for count and size the pool also holds
the relative templates of the edit's direction ("add one more" when the count grows by one, "make them
smaller" when the size shrinks), which do not name the new value; every other template does.
Item i of ShapesEditDataset is a pure function of (seed, split, i): the source is ShapesDataset's item i
(same seed and split), the edit is drawn from its own stream; the attribute cycles so that each
(shape, attribute) combination is equally frequent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from detok.data.shapes import (
    ATTRIBUTE_NAMES,
    COLOURS,
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    MARGIN,
    MAX_COUNT,
    PLURALS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLIT_STREAMS,
    WHERE_JITTER,
    ShapeScene,
    ShapesDataset,
    _offsets,
    _place,
    _where,
)
from detok.data.transforms import to_tensor

_HELD_OUT = frozenset(HELD_OUT_PAIRS)
EDIT_STREAM = 0xED17  # seed-sequence word of the edit draws, so they do not reuse the scene's stream
# the grid cell as a destination, for "move it to the ..." (POSITIONS holds the caption phrases)
POSITION_WORDS = [
    ["top left", "top", "top right"],
    ["left", "center", "right"],
    ["bottom left", "bottom", "bottom right"],
]

# str.format templates. Fields: {it} "it"/"them"; {noun} the source's shape noun ("circle"/"circles");
# {singular}, {plural} its two forms; {new} the new value's word; {a_new} with an article ("an orange");
# {new_noun} the target's shape noun phrase ("a star"/"stars"; for count "three circles");
# {phrase} the target's position phrase ("in the top left").
INSTRUCTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": (
        "turn the {noun} into {new_noun}",
        "replace the {noun} with {new_noun}",
        "make {it} {new_noun}",
        "change the {noun} to {new_noun}",
    ),
    "colour": (
        "make the {noun} {new}",
        "make {it} {new}",
        "colour {it} {new}",
        "paint the {noun} {new}",
        "change the colour to {new}",
    ),
    "count": (
        "make it {new_noun}",
        "show {new_noun} instead",
        "change the number of {plural} to {new}",
    ),
    "size": (
        "make {it} {new}",
        "make the {noun} {new}",
        "change the size to {new}",
    ),
    "position": (
        "move {it} to the {new}",
        "move the {noun} to the {new}",
        "put {it} {phrase}",
        "place the {noun} {phrase}",
    ),
    "background": (
        "change the background to {new}",
        "make the background {new}",
        "use {a_new} background",
        "put {it} on {a_new} background",
    ),
}
# relative templates, added to the pool for an edit in that direction (they do not name the new value)
RELATIVE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "count+1": ("add one more", "add another {singular}"),
    "count-1": ("remove one", "take away one {singular}"),
    "size+": ("make {it} bigger", "make the {noun} larger", "enlarge the {noun}"),
    "size-": ("make {it} smaller", "make the {noun} smaller", "shrink the {noun}"),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(kind: str, count: int) -> str:
    return kind if count == 1 else PLURALS.get(kind, kind + "s")


def _group(scene: ShapeScene) -> tuple[np.ndarray, np.ndarray]:
    """The scene's object offsets from the group centre (count, 2) and the group's fractional position
    in its cell (2,), both (x, y): what _place needs to rebuild the centres."""
    centres = np.array(scene.centres)  # (count, 2)
    centre = centres.mean(0)  # the layouts are zero-mean, so this is the anchor up to the mean jitter
    offsets = centres - centre  # (count, 2)
    d = SIZES[scene.size]
    half = np.abs(offsets).max(0) + d / 2
    lo, hi = half + MARGIN, 1 - half - MARGIN
    cell = np.array([scene.col, scene.row]) / 2
    fits = lo < hi
    where = np.where(fits, (centre - lo) / np.where(fits, hi - lo, 1.0), cell)
    band = np.clip(cell - WHERE_JITTER, 0, 1), np.clip(cell + WHERE_JITTER, 0, 1)  # where the dataset puts it
    return offsets, np.clip(where, *band)


def _pick(options: Sequence[Any], rng: np.random.Generator) -> Any:
    return options[int(rng.integers(len(options)))]


def edit_scene(
    scene: ShapeScene, attribute: str, rng: np.random.Generator, *, exclude_held_out: bool = False
) -> tuple[ShapeScene, str]:
    """(the scene with `attribute` changed to another value, an instruction asking for that change).

    attribute: one of ATTRIBUTE_NAMES. exclude_held_out: a colour or shape edit never creates a
    (colour, shape) pair of HELD_OUT_PAIRS (the other edits keep colour and shape).
    """
    if attribute not in INSTRUCTION_TEMPLATES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {list(ATTRIBUTE_NAMES)}")
    d = SIZES[scene.size]
    fields: dict[str, Any] = {}
    words: dict[str, str] = {}
    direction = ""
    if attribute == "colour":
        options = [
            c
            for c in COLOURS
            if c not in (scene.colour, scene.background)
            and not (exclude_held_out and (c, scene.kind) in _HELD_OUT)
        ]
        fields["colour"] = words["new"] = _pick(options, rng)
    elif attribute == "background":
        options = [c for c in COLOURS if c not in (scene.background, scene.colour)]
        fields["background"] = words["new"] = _pick(options, rng)
    elif attribute == "shape":
        options = [
            k for k in SHAPES if k != scene.kind and not (exclude_held_out and (scene.colour, k) in _HELD_OUT)
        ]
        kind = fields["kind"] = _pick(options, rng)
        words["new"] = kind
        words["new_noun"] = f"{_article(kind)} {kind}" if scene.count == 1 else _noun(kind, 2)
    elif attribute == "count":
        count = fields["count"] = _pick([n for n in range(1, MAX_COUNT + 1) if n != scene.count], rng)
        _, where = _group(scene)
        centres = _place(_offsets(count, d, rng), d, where)  # (count, 2)
        fields["centres"] = tuple((float(x), float(y)) for x, y in centres)
        words["new"] = COUNT_WORDS[count - 1]
        words["new_noun"] = f"{COUNT_WORDS[count - 1]} {_noun(scene.kind, count)}"
        direction = {1: "count+1", -1: "count-1"}.get(count - scene.count, "")
    elif attribute == "size":
        size = fields["size"] = words["new"] = _pick([s for s in SIZES if s != scene.size], rng)
        offsets, where = _group(scene)
        centres = _place(offsets * (SIZES[size] / d), SIZES[size], where)  # (count, 2)
        fields["centres"] = tuple((float(x), float(y)) for x, y in centres)
        direction = "size+" if SIZES[size] > d else "size-"
    else:  # position
        cells = [(r, c) for r in range(3) for c in range(3) if (r, c) != (scene.row, scene.col)]
        row, col = _pick(cells, rng)
        fields.update(row=row, col=col)
        offsets, _ = _group(scene)
        centres = _place(offsets, d, _where(row, col, rng))  # (count, 2)
        fields["centres"] = tuple((float(x), float(y)) for x, y in centres)
        words["new"], words["phrase"] = POSITION_WORDS[row][col], POSITIONS[row][col]
    new_scene = dataclasses.replace(scene, **fields)

    pool = INSTRUCTION_TEMPLATES[attribute] + RELATIVE_TEMPLATES.get(direction, ())
    template = _pick(pool, rng)
    words.setdefault("new_noun", "")
    instruction = template.format(
        it="it" if scene.count == 1 else "them",
        noun=_noun(scene.kind, scene.count),
        singular=scene.kind,
        plural=_noun(scene.kind, 2),
        a_new=f"{_article(words['new'])} {words['new']}",
        **{"phrase": "", **words},
    )
    return new_scene, instruction


class ShapesEditDataset(Dataset):
    """Instruction-editing pairs on shapes, deterministic by (seed, split, index).

    Item i: the source is ShapesDataset(size, image_size, seed, split, exclude_held_out)'s scene i; the
    edited attribute is attributes[(i // 10) % len(attributes)] (each shape meets each attribute equally
    often); the edit and instruction come from their own stream. exclude_held_out (train split only, as
    in ShapesDataset): neither source nor target shows a held-out (colour, shape) pair.
    """

    def __init__(
        self,
        size: int = 10000,
        image_size: int = 32,
        seed: int = 0,
        split: Literal["train", "val"] = "train",
        *,
        exclude_held_out: bool = False,
        attributes: Sequence[str] = ATTRIBUTE_NAMES,
    ) -> None:
        self.shapes = ShapesDataset(size, image_size, seed, split, exclude_held_out=exclude_held_out)
        unknown = [a for a in attributes if a not in INSTRUCTION_TEMPLATES]
        if unknown or not attributes:
            raise ValueError(
                f"attributes must be a non-empty subset of {list(ATTRIBUTE_NAMES)}, got {attributes}"
            )
        self.attributes = tuple(attributes)
        self.size, self.image_size, self.seed, self.split = size, image_size, seed, split
        self.exclude_held_out = self.shapes.exclude_held_out and split == "train"

    def __len__(self) -> int:
        return self.size

    def attribute(self, index: int) -> str:
        """The attribute edited in item `index`."""
        return self.attributes[(index // len(SHAPES)) % len(self.attributes)]

    def pair(self, index: int) -> tuple[ShapeScene, ShapeScene, str, str]:
        """(source scene, target scene, instruction, attribute) of item `index`."""
        source = self.shapes.scene(index)  # raises IndexError out of range
        rng = np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index, EDIT_STREAM])
        attribute = self.attribute(index)
        target, instruction = edit_scene(source, attribute, rng, exclude_held_out=self.exclude_held_out)
        return source, target, instruction, attribute

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item `index`: {"source", "target" (3, S, S) in [-1, 1], "instruction", "attribute",
        "source_caption", "target_caption", "index"}."""
        index = int(index) + (self.size if index < 0 else 0)
        source, target, instruction, attribute = self.pair(index)
        return {
            "source": to_tensor(self.shapes.render(source)),
            "target": to_tensor(self.shapes.render(target)),
            "instruction": instruction,
            "attribute": attribute,
            "source_caption": source.caption,
            "target_caption": target.caption,
            "index": index,
        }
