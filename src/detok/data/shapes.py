"""`shapes`: a built-in procedural dataset of coloured shapes with captions (ships with the install).

Item i of a split is a pure function of (seed, split, i): a numpy Generator seeded from those three
numbers picks 1-4 objects of one kind (the class, i % 10) with one colour, size and position, on a
background of another colour. Objects are drawn on a supersampled canvas and BOX-downsampled, so
edges are anti-aliased at any image size. The caption names every attribute, e.g.
"two large red circles in the top left on a grey background".

Attributes as classes: `ATTRIBUTES` lists, in order, each attribute's values ("shape", "colour",
"count", "size", "position", "background"); `scene_labels(scene)` gives one class index per attribute
and `parse_caption(text)` reads the same indices back from a caption (None where a caption, e.g. a
model's, does not name a value), so captioning and text-to-image can be scored per attribute.

Held-out combinations (for measuring composition). `HELD_OUT_PAIRS` holds ten (colour, shape) pairs,
one per shape, by a fixed rule: SHAPES[k] is held out in the (k + 1)-th colour of COLOURS (the
diagonal shifted by one), i.e. green circle, blue square, yellow triangle, orange diamond, purple
cross, pink ring, cyan star, brown hexagon, white heart, black ellipse. Each held-out colour and each
held-out shape belongs to exactly one pair, so with `ShapesDataset(split="train", exclude_held_out=True)`
every held-out colour is still seen on the other 9 shapes and every held-out shape in the other 11
colours; only the conjunction is never seen (the colour of a train scene that would form a pair is
redrawn from the same random stream). A model that draws "a green circle" (prompts from
`held_out_prompts`) or names one in a caption (the val split keeps the natural distribution, where
about 1 scene in 12 has a held-out pair) must therefore combine two concepts it only ever saw apart:
its score on those items measures composition, not recall.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from detok.data.transforms import to_tensor

SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "heart", "ellipse"]
PLURALS = {"cross": "crosses", "ellipse": "ellipses"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
    "pink": (245, 150, 200),
    "cyan": (40, 200, 210),
    "brown": (130, 80, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
}
SIZES = {"small": 0.18, "medium": 0.26, "large": 0.34}  # object diameter as a fraction of the image side
COUNT_WORDS = ["one", "two", "three", "four"]
MAX_COUNT = len(COUNT_WORDS)
# position phrase per (row, column) of a 3 x 3 grid of image regions
POSITIONS = [
    ["in the top left", "at the top", "in the top right"],
    ["on the left", "in the center", "on the right"],
    ["in the bottom left", "at the bottom", "in the bottom right"],
]
SPLIT_STREAMS = {"train": 0, "val": 1}  # the split is part of the seed, so train and val never share images
SPACING = 1.2  # distance between object centres in a group, in object diameters
JITTER = 0.08  # per-object centre jitter, in object diameters
MARGIN = 0.03  # keep objects this far (fraction of the side) from the image border
WHERE_JITTER = 0.1  # jitter of the group's fractional position within its grid cell

# attribute name -> its values, in class-index order ("position" indexes the 3 x 3 grid row-major)
ATTRIBUTES: dict[str, tuple[Any, ...]] = {
    "shape": tuple(SHAPES),
    "colour": tuple(COLOURS),
    "count": tuple(range(1, MAX_COUNT + 1)),
    "size": tuple(SIZES),
    "position": tuple(phrase for row in POSITIONS for phrase in row),
    "background": tuple(COLOURS),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

# (colour, shape) pairs never shown in training when exclude_held_out=True; the rule: SHAPES[k] in the
# (k + 1)-th colour of COLOURS, so each pair has its own colour and its own shape (module docstring)
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (list(COLOURS)[(k + 1) % len(COLOURS)], kind) for k, kind in enumerate(SHAPES)
)
_HELD_OUT = frozenset(HELD_OUT_PAIRS)
HELD_OUT_STREAM = 0x48E1D  # seed-sequence word of held_out_scenes, apart from every split's stream


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # (2P, 2)


def _heart(n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)  # (n, 2)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


def _regular(sides: int, rotation: float = -math.pi / 2) -> np.ndarray:
    angles = rotation + np.arange(sides) * 2 * math.pi / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (sides, 2)


# unit-radius outlines of the polygon shapes, centred at 0, y pointing down
_POLYGONS: dict[str, np.ndarray] = {
    "triangle": _regular(3) + np.array([0.0, 0.2]),  # shift the centroid to the bounding-box centre
    "diamond": np.array([[0.0, -1.0], [0.7, 0.0], [0.0, 1.0], [-0.7, 0.0]]),
    "star": _star(),
    "hexagon": _regular(6, rotation=0.0),
    "heart": _heart(),
}


def _draw(
    draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill: tuple[int, ...]
) -> None:
    """Draw one object of radius r (half its diameter) centred at (cx, cy), in canvas pixels."""
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "ellipse":
        draw.ellipse((cx - r, cy - 0.5 * r, cx + r, cy + 0.5 * r), fill=fill)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, round(0.38 * r)))
    elif kind == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif kind == "cross":
        w = 0.33 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        pts = _POLYGONS[kind] * r + np.array([cx, cy])  # (P, 2)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)


def _layout(count: int, rng: np.random.Generator) -> np.ndarray:
    """Object centres of a compact group, in units of SPACING * diameter, centred at 0."""
    if count == 1:
        offsets = [[0.0, 0.0]]
    elif count == 2:
        offsets = [[-0.5, 0.0], [0.5, 0.0]]
    elif count == 3:
        offsets = [[-0.5, 0.29], [0.5, 0.29], [0.0, -0.58]]
    else:
        offsets = [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]
    out = np.array(offsets)  # (count, 2) as (x, y)
    if rng.random() < 0.5:
        out = out[:, ::-1] if count == 2 else out * np.array([1.0, -1.0])  # vertical pair / flipped group
    return out


def _place(offsets: np.ndarray, d: float, where: np.ndarray) -> np.ndarray:
    """Centres of a group, given its object offsets from the group centre (count, 2) and its fractional
    position `where` (2,) within the range that keeps the whole group inside the image, (x, y)."""
    half = np.abs(offsets).max(0) + d / 2  # half extent of the group, (x, y)
    lo, hi = half + MARGIN, 1 - half - MARGIN
    anchor = np.where(lo < hi, lo + (hi - lo) * where, 0.5)  # (2,) group centre, (x, y)
    return offsets + anchor  # (count, 2)


def _where(row: int, col: int, rng: np.random.Generator) -> np.ndarray:
    """A random fractional group position inside grid cell (row, col), as (x, y)."""
    return np.clip(np.array([col, row]) / 2 + rng.uniform(-WHERE_JITTER, WHERE_JITTER, 2), 0, 1)


def _offsets(count: int, d: float, rng: np.random.Generator) -> np.ndarray:
    """Jittered object offsets of a group of `count` objects of diameter d, centred near 0, (count, 2)."""
    jitter = rng.uniform(-JITTER, JITTER, (count, 2)) * d  # (count, 2)
    return _layout(count, rng) * SPACING * d + jitter  # (count, 2) as (x, y)


@dataclass(frozen=True)
class ShapeScene:
    """The attributes of one shapes image: everything the caption names, plus object centres."""

    kind: str
    colour: str
    size: str
    count: int
    row: int
    col: int
    background: str
    centres: tuple[tuple[float, float], ...]  # object centres as fractions of the image side, (x, y)

    @property
    def position(self) -> str:
        """The position phrase, e.g. 'in the top left'."""
        return POSITIONS[self.row][self.col]

    @property
    def caption(self) -> str:
        """E.g. 'two large red circles in the top left on a grey background'."""
        noun = self.kind if self.count == 1 else PLURALS.get(self.kind, self.kind + "s")
        article = "an" if self.background[0] in "aeiou" else "a"
        return (
            f"{COUNT_WORDS[self.count - 1]} {self.size} {self.colour} {noun} {self.position} "
            f"on {article} {self.background} background"
        )


def draw_scene(
    kind: str, rng: np.random.Generator, *, colour: str | None = None, exclude_held_out: bool = False
) -> ShapeScene:
    """A random scene of objects of `kind` drawn from `rng` (ShapesDataset.scene's procedure).

    colour: use this object colour instead of drawing one. exclude_held_out: redraw the colour (from the
    same stream) while (colour, kind) is a held-out pair.
    """
    names = list(COLOURS)
    if colour is None:
        colour = names[rng.integers(len(names))]
        while exclude_held_out and (colour, kind) in _HELD_OUT:
            colour = names[rng.integers(len(names))]
    elif colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose one of {names}")
    background = [c for c in names if c != colour][rng.integers(len(names) - 1)]
    size = list(SIZES)[rng.integers(len(SIZES))]
    count = int(rng.integers(1, MAX_COUNT + 1))
    row, col = (int(v) for v in rng.integers(3, size=2))

    d = SIZES[size]
    centres = _place(_offsets(count, d, rng), d, _where(row, col, rng))  # (count, 2) as (x, y)
    return ShapeScene(
        kind=kind,
        colour=colour,
        size=size,
        count=count,
        row=row,
        col=col,
        background=background,
        centres=tuple((float(x), float(y)) for x, y in centres),
    )


def is_held_out(scene: ShapeScene) -> bool:
    """Whether the scene's (colour, shape) is one of HELD_OUT_PAIRS."""
    return (scene.colour, scene.kind) in _HELD_OUT


def scene_labels(scene: ShapeScene) -> dict[str, int]:
    """The class index of each attribute of `scene`, keyed and ordered as ATTRIBUTES."""
    return {
        "shape": SHAPES.index(scene.kind),
        "colour": ATTRIBUTES["colour"].index(scene.colour),
        "count": scene.count - 1,
        "size": ATTRIBUTES["size"].index(scene.size),
        "position": 3 * scene.row + scene.col,
        "background": ATTRIBUTES["background"].index(scene.background),
    }


_NOUNS = {**{k: k for k in SHAPES}, **{PLURALS.get(k, k + "s"): k for k in SHAPES}}
_BACKGROUND = re.compile(r"\bon an? (\w+) background\b")


def _first(words: list[str], values: Any) -> int | None:
    """Index in `values` of the first word of `words` that is one of them, or None."""
    values = list(values)
    return next((values.index(w) for w in words if w in values), None)


def parse_caption(text: str) -> dict[str, int | None]:
    """Attribute class indices named by a caption (None where it names none), keyed as ATTRIBUTES.

    Inverse of ShapeScene.caption (parse_caption(scene.caption) == scene_labels(scene)); lenient on
    free text, e.g. a model's caption: the first value word of each attribute counts, the background is
    the colour in "on a(n) X background" and the object colour the first colour word outside it.
    """
    text = " ".join(text.lower().split())
    match = _BACKGROUND.search(text)
    background = _first([match.group(1)], COLOURS) if match else None
    words = re.findall(r"[a-z]+", _BACKGROUND.sub(" ", text))
    kind = next((_NOUNS[w] for w in words if w in _NOUNS), None)
    positions = [i for i, phrase in enumerate(ATTRIBUTES["position"]) if re.search(rf"\b{phrase}\b", text)]
    return {
        "shape": None if kind is None else SHAPES.index(kind),
        "colour": _first(words, COLOURS),
        "count": _first(words, COUNT_WORDS),
        "size": _first(words, SIZES),
        "position": positions[0] if len(positions) == 1 else None,
        "background": background,
    }


def held_out_scenes(n_per_pair: int, seed: int = 0) -> list[ShapeScene]:
    """n_per_pair scenes per held-out (colour, shape) pair, pair-major in HELD_OUT_PAIRS order; count,
    size, position and background drawn as in the dataset (deterministic by seed, pair and j)."""
    if n_per_pair < 0 or seed < 0:
        raise ValueError(f"need n_per_pair >= 0 and seed >= 0, got {n_per_pair}, {seed}")
    return [
        draw_scene(kind, np.random.default_rng([seed, HELD_OUT_STREAM, p, j]), colour=colour)
        for p, (colour, kind) in enumerate(HELD_OUT_PAIRS)
        for j in range(n_per_pair)
    ]


def held_out_prompts(n_per_pair: int, seed: int = 0) -> list[str]:
    """Captions of held_out_scenes(n_per_pair, seed): text-to-image prompts for the composition score."""
    return [scene.caption for scene in held_out_scenes(n_per_pair, seed)]


class ShapesDataset(Dataset):
    """Procedural coloured shapes, 10 classes (the shape kind), deterministic by (seed, split, index)."""

    class_names = list(SHAPES)
    num_classes = len(SHAPES)

    def __init__(
        self,
        size: int = 10000,
        image_size: int = 32,
        seed: int = 0,
        split: Literal["train", "val"] = "train",
        *,
        exclude_held_out: bool = False,
    ) -> None:
        """exclude_held_out: no train item shows a (colour, shape) pair of HELD_OUT_PAIRS (the val split is
        unaffected, so it still contains them); items without a held-out pair are unchanged."""
        if split not in SPLIT_STREAMS:
            raise ValueError(f"split must be one of {list(SPLIT_STREAMS)}, got {split!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if image_size < 1 or size < 0:
            raise ValueError(f"need image_size >= 1 and size >= 0, got {image_size}, {size}")
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.exclude_held_out = bool(exclude_held_out)
        # supersampling factor: 4x for small images, less where the canvas would get big
        self.supersample = 4 if image_size <= 128 else 2 if image_size <= 512 else 1

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> ShapeScene:
        """The attributes of item `index` (a pure function of seed, split and index)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} shapes images")
        rng = np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index])
        exclude = self.exclude_held_out and self.split == "train"
        return draw_scene(SHAPES[index % len(SHAPES)], rng, exclude_held_out=exclude)

    def labels(self, index: int) -> dict[str, int]:
        """The class index of every attribute of item `index` (see ATTRIBUTES, scene_labels)."""
        return scene_labels(self.scene(index))

    def render(self, scene: ShapeScene) -> Image.Image:
        """Draw a scene as an anti-aliased RGB image of image_size x image_size."""
        side = self.image_size * self.supersample
        canvas = Image.new("RGB", (side, side), COLOURS[scene.background])
        draw = ImageDraw.Draw(canvas)
        r = SIZES[scene.size] * side / 2
        for x, y in scene.centres:
            _draw(draw, scene.kind, x * side, y * side, r, COLOURS[scene.colour])
        return canvas.reduce(self.supersample) if self.supersample > 1 else canvas  # BOX downsample

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item `index`: {"image" (3, S, S) in [-1, 1], "label", "index", "caption", "skipped"}."""
        index = int(index) + (self.size if index < 0 else 0)
        scene = self.scene(index)
        image: torch.Tensor = to_tensor(self.render(scene))
        return {
            "image": image,
            "label": index % len(SHAPES),
            "index": index,
            "caption": scene.caption,
            "skipped": [],
        }
