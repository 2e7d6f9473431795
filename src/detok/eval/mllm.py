"""GenEval-style evaluation of a multimodal LM on `shapes`: text-to-image, captioning and instruction editing.

The model is seen only through three callables, so the protocol is testable with fake models:

    generate(prompts, rng) -> images (B, 3, H, W) in [-1, 1]             GenerateFn
    caption(images) -> captions (B)                                       CaptionFn
    edit(images, instructions, rng) -> edited images (B, 3, H, W)         EditFn

What is scored (`evaluate_mllm` runs all three; the numbers are shares in [0, 1]):

- Text-to-image (`score_text_to_image`): every prompt of `text_to_image_prompts` is drawn
  `images_per_prompt` times and the shapes checker (`detok.eval.shapes_checker`) reads back the six
  attributes of each image. An image is right when every attribute the prompt names is read back
  (`score_prompts`); "overall" is the share of right images, "attributes" the per-attribute accuracy.
  Prompts come in two groups: "held_out", captions of scenes of the held-out (colour, shape)
  combinations `HELD_OUT_PAIRS` of `detok.data.shapes` (SHAPES[k] in the (k + 1)-th colour: green
  circle, blue square, ...), which never occur in training captions when the model was trained with
  exclude_held_out=True, so this group measures composition; and "seen", captions of the first val
  scenes whose (colour, shape) is not held out.
- Captioning (`score_captions`): the first `caption_images` val images are captioned and each caption
  is read with `parse_caption`; an attribute the caption does not name counts wrong. "exact" is the
  share of captions identical (up to whitespace) to the true caption.
- Editing (`score_edits`): the first `edit_pairs` val pairs of `ShapesEditDataset`; the checker reads
  the source and the result, and an edit succeeds when the result shows the asked value of the edited
  attribute and every other attribute as read on the source (`edit_success`). "oracle" is the same
  score with the true target images as results: the ceiling the checker allows.

Every random draw of a model comes from one torch.Generator per task, seeded once from cfg.seed, so a
deterministic model gives the same scores on every run. The checker is not required to be usable
(`ShapesChecker.usable`): `evaluate_mllm` records its val accuracy and adds a "warning" if it is not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from detok.config import option
from detok.data.shapes import (
    ATTRIBUTE_NAMES,
    HELD_OUT_PAIRS,
    ShapeScene,
    ShapesDataset,
    held_out_scenes,
    is_held_out,
    parse_caption,
    scene_labels,
)
from detok.data.shapes_tasks import ShapesEditDataset
from detok.data.transforms import to_tensor
from detok.eval.shapes_checker import ShapesChecker, edit_success, score_prompts
from detok.io import atomic_write

GenerateFn = Callable[[list[str], torch.Generator], torch.Tensor]  # prompts (B) -> images (B, 3, H, W) in [-1, 1]
CaptionFn = Callable[[torch.Tensor], list[str]]  # images (B, 3, H, W) in [-1, 1] -> captions (B)
EditFn = Callable[[torch.Tensor, list[str], torch.Generator], torch.Tensor]  # sources, instructions -> edited
ReconstructFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # images -> detokenize(tokenize(images))

GROUPS = ("held_out", "seen")  # the text-to-image prompt groups, in prompt order
SHOWN = 8  # prompts / edit pairs whose images are returned for the PNG grids
GRID_MIN_SIDE = 128  # grid tiles are enlarged (nearest, integer factor) to at least this side: 32 px -> 4x
GRID_PAD = 2  # pixels between grid tiles
TEXT_PAD = 6  # pixels around the text column of a grid
FONT_SIZE = 14  # of the prompts and instructions beside grid rows
_SPACES = re.compile(r"\s+")


@dataclass
class MLLMEvalConfig:
    """How many prompts, images and pairs the multimodal evaluation uses, and its seeds."""

    held_out_per_pair: int = option(4, "text-to-image prompts per held-out (colour, shape) pair (10 pairs)", min=0)
    seen_prompts: int = option(40, "prompts from the captions of the first val scenes without a held-out pair",
                               min=0)
    images_per_prompt: int = option(4, "images drawn per prompt (GenEval draws several)", min=1)
    caption_images: int = option(200, "val images captioned", min=0)
    edit_pairs: int = option(120, "val edit pairs (ShapesEditDataset split='val')", min=0)
    batch_size: int = option(64, "images per call of the model's callables", min=1)
    seed: int = option(0, "seed of the held-out prompts and of the generator every model draw comes from", min=0)
    image_size: int = option(32, "side of the rendered val / source images", min=1)
    data_seed: int = option(0, "seed of the shapes val split (the run's data seed)", min=0)


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering range(n) in steps of `size`."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _check_images(images: Any, n: int, what: str) -> torch.Tensor:
    """The float (n, 3, H, W) tensor a model callable returned, or a ValueError naming the callable."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] != n or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{what} returned {shape}; expected images ({n}, 3, H, W) in [-1, 1]")
    return images.detach().float().cpu()


def _check_texts(texts: Any, n: int, what: str) -> list[str]:
    """The n strings a model callable returned, or a ValueError naming the callable."""
    texts = list(texts)
    if len(texts) != n or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{what} returned {len(texts)} items; expected {n} strings")
    return texts


def _cat_predictions(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-batch checker predictions joined into {attribute: (N,) long}."""
    if not chunks:
        return {a: torch.empty(0, dtype=torch.int64) for a in ATTRIBUTE_NAMES}
    return {a: torch.cat([c[a] for c in chunks]) for a in ATTRIBUTE_NAMES}


def _spread(keys: Sequence[Any], n: int) -> list[int]:
    """n indices taken round-robin over the distinct keys (in order of first appearance), each key's items
    in order: the grid rows of `SHOWN` show every kind of item before repeating one."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    picked: list[int] = []
    for r in range(max((len(g) for g in groups.values()), default=0)):
        picked += [g[r] for g in groups.values() if r < len(g)]
    return picked[:n]


def _mean(values: Sequence[bool] | torch.Tensor) -> float:
    """The share of true values (nan when there are none)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return float(values.mean()) if values.numel() else float("nan")


# ---------------------------------------------------------------------------------------------------
# Text-to-image
# ---------------------------------------------------------------------------------------------------


def text_to_image_prompts(cfg: MLLMEvalConfig) -> list[dict[str, Any]]:
    """The text-to-image prompts: held-out group first, then seen. Deterministic by cfg.seed / cfg.data_seed.

    Each item: {"prompt": the scene's caption, "wanted": scene_labels of the scene (six class indices),
    "group": "held_out" | "seen", "scene": the ShapeScene (for oracles and renders)}. Held-out prompts
    are held_out_scenes(cfg.held_out_per_pair, cfg.seed) (pair-major in HELD_OUT_PAIRS order); seen
    prompts are the captions of the first cfg.seen_prompts scenes of the val split (seed cfg.data_seed)
    whose (colour, shape) is not held out.
    """
    items = [{"prompt": s.caption, "wanted": scene_labels(s), "group": "held_out", "scene": s}
             for s in held_out_scenes(cfg.held_out_per_pair, cfg.seed)]  # fmt: skip
    # about 1 val scene in 12 is held out: 2n + 100 scenes always hold n seen ones in practice
    val = ShapesDataset(2 * cfg.seen_prompts + 100, cfg.image_size, cfg.data_seed, "val")
    seen: list[ShapeScene] = []
    for i in range(len(val)):
        if len(seen) == cfg.seen_prompts:
            break
        scene = val.scene(i)
        if not is_held_out(scene):
            seen.append(scene)
    if len(seen) < cfg.seen_prompts:
        raise RuntimeError(f"found {len(seen)} seen val scenes among {len(val)}, wanted {cfg.seen_prompts}")
    items += [{"prompt": s.caption, "wanted": scene_labels(s), "group": "seen", "scene": s} for s in seen]
    return items


def shown_prompt_indices(prompts: Sequence[dict[str, Any]], per_pair: int) -> list[int]:
    """The SHOWN prompts of the text-to-image grid: the first prompt of each held-out pair (up to SHOWN / 2),
    then seen prompts, then more held-out ones if seen prompts run short."""
    held = [i for i, p in enumerate(prompts) if p["group"] == "held_out"]
    seen = [i for i, p in enumerate(prompts) if p["group"] == "seen"]
    first = held[:: max(per_pair, 1)][: SHOWN // 2]
    rest = [i for i in held if i not in first]
    return (first + seen + rest)[:SHOWN]


def score_text_to_image(
    generate: GenerateFn, checker: ShapesChecker, cfg: MLLMEvalConfig, progress: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """GenEval-style text-to-image score of `generate` on text_to_image_prompts(cfg), read by `checker`.

    Every prompt is repeated cfg.images_per_prompt times (prompt-major) and sent in batches of
    cfg.batch_size with one torch.Generator (on `device`) seeded once from cfg.seed. Returns {"overall",
    "attributes": {attribute: accuracy}, "groups": {"held_out" | "seen": {"overall", "attributes",
    "n_prompts"}}, "n_prompts", "images_per_prompt", "n_images", "per_prompt": [{"prompt", "group",
    "correct": share of its images with every attribute right}], "shown": the indices of the SHOWN
    prompts of the grid (the first prompt of each held-out pair, then seen prompts: shown_prompts),
    "images": their images, (len(shown) * images_per_prompt, 3, H, W) in [-1, 1], prompt-major}.
    """
    prompts = text_to_image_prompts(cfg)
    per = cfg.images_per_prompt
    texts = [p["prompt"] for p in prompts for _ in range(per)]  # (P * R,) prompt-major
    wanted = [p["wanted"] for p in prompts for _ in range(per)]
    shown_prompts = shown_prompt_indices(prompts, cfg.held_out_per_pair)
    keep = {i * per + j for i in shown_prompts for j in range(per)}  # image indices kept for the grid
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    chunks, shown = [], {}
    for a, b in tqdm(_batches(len(texts), cfg.batch_size), desc="mllm eval: text-to-image", disable=not progress):
        images = _check_images(generate(texts[a:b], rng), b - a, "generate")  # (b - a, 3, H, W)
        chunks.append(checker.predict(images))
        shown.update({k: images[k - a] for k in range(a, b) if k in keep})
    pred = _cat_predictions(chunks)
    scores = score_prompts(pred, wanted)
    correct = torch.tensor(scores["correct"], dtype=torch.float64).view(len(prompts), per)  # (P, R)
    groups = {}
    for group in GROUPS:
        rows = [i for i, p in enumerate(prompts) if p["group"] == group]
        idx = torch.tensor([i * per + j for i in rows for j in range(per)], dtype=torch.int64)  # (rows * R,)
        sub = score_prompts({a: v[idx] for a, v in pred.items()}, [wanted[int(i)] for i in idx])
        groups[group] = {"overall": sub["overall"], "attributes": sub["attributes"], "n_prompts": len(rows)}
    empty = torch.empty(0, 3, cfg.image_size, cfg.image_size)
    return {
        "overall": scores["overall"],
        "attributes": scores["attributes"],
        "groups": groups,
        "n_prompts": len(prompts),
        "images_per_prompt": per,
        "n_images": len(texts),
        "per_prompt": [{"prompt": p["prompt"], "group": p["group"], "correct": float(correct[i].mean())}
                       for i, p in enumerate(prompts)],  # fmt: skip
        "shown": shown_prompts,
        "images": torch.stack([shown[i * per + j] for i in shown_prompts for j in range(per)]) if shown else empty,
    }


# ---------------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------------


def score_caption_texts(captions: Sequence[str], scenes: Sequence[ShapeScene]) -> dict[str, Any]:
    """Captions against the scenes they describe: {"attributes": {attribute: accuracy (unnamed = wrong)},
    "overall": share with all six right, "exact": share equal to the true caption up to whitespace, "n"}."""
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} captions for {len(scenes)} scenes")
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTE_NAMES}
    every, exact = [], []
    for text, scene in zip(captions, scenes):
        read, truth = parse_caption(text), scene_labels(scene)
        row = [read[a] is not None and read[a] == truth[a] for a in ATTRIBUTE_NAMES]
        for a, hit in zip(ATTRIBUTE_NAMES, row):
            hits[a].append(hit)
        every.append(all(row))
        exact.append(_SPACES.sub(" ", text).strip() == scene.caption)
    return {"attributes": {a: _mean(h) for a, h in hits.items()}, "overall": _mean(every), "exact": _mean(exact),
            "n": len(scenes)}  # fmt: skip


def score_captions(caption: CaptionFn, cfg: MLLMEvalConfig, progress: bool = False) -> dict[str, Any]:
    """Caption accuracy of `caption` on the first cfg.caption_images val images (seed cfg.data_seed).

    Returns score_caption_texts' {"attributes", "overall", "exact", "n"}, plus "groups": the same scores
    on the val images with a held-out (colour, shape) pair ("held_out", composition) and the rest
    ("seen"), and "examples": the first SHOWN {"truth", "caption"}.
    """
    val = ShapesDataset(cfg.caption_images, cfg.image_size, cfg.data_seed, "val")
    scenes = [val.scene(i) for i in range(len(val))]
    captions: list[str] = []
    for a, b in tqdm(_batches(len(val), cfg.batch_size), desc="mllm eval: captions", disable=not progress):
        images = torch.stack([to_tensor(val.render(s)) for s in scenes[a:b]])  # (b - a, 3, S, S)
        captions += _check_texts(caption(images), b - a, "caption")
    out = score_caption_texts(captions, scenes)
    out["groups"] = {}
    for group in GROUPS:
        rows = [i for i, s in enumerate(scenes) if is_held_out(s) == (group == "held_out")]
        sub = score_caption_texts([captions[i] for i in rows], [scenes[i] for i in rows])
        out["groups"][group] = {k: sub[k] for k in ("overall", "attributes", "n")}
    out["examples"] = [{"truth": s.caption, "caption": c} for s, c in zip(scenes[:SHOWN], captions[:SHOWN])]
    return out


def score_reconstructions(
    reconstruct: ReconstructFn, checker: ShapesChecker, cfg: MLLMEvalConfig, progress: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The ceiling the image tokens allow: the checker on the first cfg.caption_images val images after
    reconstruct (tokenize -> detokenize), against their true attributes.

    A text-to-image sample can only be as right as its tokens can carry: if the tokenizer loses the shape,
    no LM over its ids can draw it. Returns score_prompts' {"overall", "attributes"} and "n".
    """
    val = ShapesDataset(cfg.caption_images, cfg.image_size, cfg.data_seed, "val")
    scenes = [val.scene(i) for i in range(len(val))]
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    chunks = []
    for a, b in tqdm(_batches(len(val), cfg.batch_size), desc="mllm eval: through the tokenizer",
                     disable=not progress):  # fmt: skip
        images = torch.stack([to_tensor(val.render(s)) for s in scenes[a:b]])  # (b - a, 3, S, S)
        chunks.append(checker.predict(_check_images(reconstruct(images, rng), b - a, "reconstruct")))
    scores = score_prompts(_cat_predictions(chunks), [scene_labels(s) for s in scenes])
    return {"overall": scores["overall"], "attributes": scores["attributes"], "n": len(scenes)}


# ---------------------------------------------------------------------------------------------------
# Editing
# ---------------------------------------------------------------------------------------------------


def score_edit_predictions(
    pred_source: dict[str, torch.Tensor], pred_result: dict[str, torch.Tensor], attributes: Sequence[str],
    wanted: Sequence[int] | torch.Tensor,
) -> dict[str, Any]:
    """Edit scores of N pairs from checker predictions on sources and results ({attribute: (N,) long}).

    attributes[i] is the attribute pair i edits, wanted[i] its target value index. Returns {"success":
    share with edit_success, "attributes": {edited attribute: success rate}, "asked_changed": share
    whose result shows the wanted value, "others_kept": share whose result keeps every other attribute
    of the source's prediction, "n", "ok": (N,) bool success per pair}.
    """
    n = len(attributes)
    wanted = torch.as_tensor(wanted, dtype=torch.int64).view(-1)  # (N,)
    if len(wanted) != n:
        raise ValueError(f"{len(wanted)} wanted values for {n} edits")
    ok = torch.zeros(n, dtype=torch.bool)
    asked = torch.zeros(n, dtype=torch.bool)
    kept = torch.zeros(n, dtype=torch.bool)
    by_attribute = {}
    for attr in dict.fromkeys(attributes):  # edited attributes, in order of first appearance
        idx = torch.tensor([i for i, a in enumerate(attributes) if a == attr], dtype=torch.int64)
        src = {a: torch.as_tensor(v)[idx] for a, v in pred_source.items()}
        res = {a: torch.as_tensor(v)[idx] for a, v in pred_result.items()}
        ok[idx] = edit_success(src, res, attr, wanted[idx])
        asked[idx] = res[attr] == wanted[idx]
        same = torch.ones(len(idx), dtype=torch.bool)
        for other in ATTRIBUTE_NAMES:
            if other != attr:
                same &= res[other] == src[other]
        kept[idx] = same
        by_attribute[attr] = _mean(ok[idx])
    ordered = {a: by_attribute[a] for a in ATTRIBUTE_NAMES if a in by_attribute}
    return {"success": _mean(ok), "attributes": ordered, "asked_changed": _mean(asked), "others_kept": _mean(kept),
            "n": n, "ok": ok}  # fmt: skip


def score_edits(
    edit: EditFn, checker: ShapesChecker, cfg: MLLMEvalConfig, progress: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Instruction-editing success of `edit` on the first cfg.edit_pairs val pairs of ShapesEditDataset.

    The checker reads each source and each result; success per pair is edit_success(source prediction,
    result prediction, edited attribute, the target scene's value). One torch.Generator (on `device`)
    seeded once from cfg.seed. Returns score_edit_predictions' {"success", "attributes",
    "asked_changed", "others_kept", "n"}, plus "oracle" / "oracle_attributes": the success with the true
    target images as results (the ceiling the checker allows), "shown": the indices of SHOWN pairs taken
    round-robin over the edited attributes, "images": their (sources, results), "instructions": theirs.
    """
    pairs = ShapesEditDataset(cfg.edit_pairs, cfg.image_size, cfg.data_seed, "val")
    items = [pairs.pair(i) for i in range(len(pairs))]  # (source, target, instruction, attribute) scenes
    attributes = [item[3] for item in items]
    wanted = [scene_labels(item[1])[item[3]] for item in items]
    instructions = [item[2] for item in items]
    keep = _spread(attributes, SHOWN)
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    src_chunks, out_chunks, tgt_chunks = [], [], []
    shown: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for a, b in tqdm(_batches(len(pairs), cfg.batch_size), desc="mllm eval: edits", disable=not progress):
        src = torch.stack([to_tensor(pairs.shapes.render(items[i][0])) for i in range(a, b)])  # (b - a, 3, S, S)
        tgt = torch.stack([to_tensor(pairs.shapes.render(items[i][1])) for i in range(a, b)])  # (b - a, 3, S, S)
        results = _check_images(edit(src, instructions[a:b], rng), b - a, "edit")  # (b - a, 3, H, W)
        src_chunks.append(checker.predict(src))
        out_chunks.append(checker.predict(results))
        tgt_chunks.append(checker.predict(tgt))
        shown.update({i: (src[i - a], results[i - a]) for i in keep if a <= i < b})
    pred_src = _cat_predictions(src_chunks)
    out = score_edit_predictions(pred_src, _cat_predictions(out_chunks), attributes, wanted)
    oracle = score_edit_predictions(pred_src, _cat_predictions(tgt_chunks), attributes, wanted)
    out.pop("ok")
    empty = torch.empty(0, 3, cfg.image_size, cfg.image_size)
    out.update(
        oracle=oracle["success"],
        oracle_attributes=oracle["attributes"],
        shown=keep,
        images=(torch.stack([shown[i][0] for i in keep]) if keep else empty,
                torch.stack([shown[i][1] for i in keep]) if keep else empty),
        instructions=[instructions[i] for i in keep],
    )
    return out


# ---------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------


def _font() -> ImageFont.ImageFont:
    """PIL's default font at FONT_SIZE (its scalable version, Pillow >= 10.1; else the small bitmap one)."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # an older Pillow: no size
        return ImageFont.load_default()


def _text_width(texts: Sequence[str]) -> int:
    """Pixel width of the widest text in the grid font (0 when there is none)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return math.ceil(max((draw.textlength(t, font=_font()) for t in texts), default=0))


def _labelled_grid(images: torch.Tensor, texts: Sequence[str], per_row: int, path: str | Path) -> Path:
    """A PNG of `images` (R * per_row, 3, H, W) in [-1, 1], per_row tiles a row, texts[r] left of row r.

    Tiles are enlarged (nearest, integer factor) to at least GRID_MIN_SIDE pixels.
    """
    from torchvision.utils import make_grid  # torchvision only where grids are drawn

    x = images.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5  # (N, 3, H, W) in [0, 1]
    scale = max(1, -(-GRID_MIN_SIDE // max(x.shape[-2:])))
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")  # (N, 3, sH, sW)
    grid = make_grid(x, nrow=per_row, padding=GRID_PAD, pad_value=1.0)  # (3, R*(sH+2)+2, per_row*(sW+2)+2)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H', W', 3)
    text_w = _text_width(texts)
    left = text_w + 2 * TEXT_PAD if text_w else 0
    canvas = Image.new("RGB", (pixels.shape[1] + left, pixels.shape[0]), "white")
    canvas.paste(Image.fromarray(pixels), (left, 0))
    draw = ImageDraw.Draw(canvas)
    cell = x.shape[-2] + GRID_PAD
    for r, text in enumerate(texts):
        draw.text((TEXT_PAD, GRID_PAD + r * cell + cell // 2 - FONT_SIZE // 2), text, fill="black", font=_font())
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def save_prompt_grid(images: torch.Tensor, prompts: Sequence[str], per_row: int, path: str | Path) -> Path:
    """A PNG with one row per prompt: its prompt, then its per_row images (images prompt-major,
    (len(prompts) * per_row, 3, H, W) in [-1, 1]). Small images are enlarged (nearest) 4x at 32 px."""
    if per_row < 1 or not prompts or images.ndim != 4 or len(images) != len(prompts) * per_row:
        raise ValueError(f"expected {len(prompts)} prompts x {per_row} images (>= 1 each), got images "
                         f"{tuple(images.shape)}")  # fmt: skip
    return _labelled_grid(images, list(prompts), per_row, path)


def save_edit_grid(sources: torch.Tensor, results: torch.Tensor, instructions: Sequence[str],
                   path: str | Path) -> Path:
    """A PNG with one row per edit: its instruction, the source, the result ((B, 3, H, W) each in [-1, 1])."""
    if sources.shape != results.shape or sources.ndim != 4 or len(sources) != len(instructions) or not len(sources):
        raise ValueError(f"expected B >= 1 sources and results of one shape and B instructions, got "
                         f"{tuple(sources.shape)}, {tuple(results.shape)}, {len(instructions)}")  # fmt: skip
    pairs = torch.stack([sources, results], dim=1).flatten(0, 1)  # (B, 2, 3, H, W) -> (2B, 3, H, W)
    return _labelled_grid(pairs, list(instructions), 2, path)


# ---------------------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------------------


def evaluate_mllm(
    generate: GenerateFn, caption: CaptionFn, edit: EditFn, checker: ShapesChecker, cfg: MLLMEvalConfig,
    progress: bool = False, device: str | torch.device = "cpu", reconstruct: ReconstructFn | None = None,
) -> dict[str, Any]:
    """All three scores: {"text_to_image", "captions", "edit", "checker": its val accuracy, "checker_usable",
    "held_out_pairs": [[colour, shape], ...]}, plus "warning" (the usability message) when the checker is
    below USABLE_ACCURACY on some attribute: then the scores are recorded but not trustworthy, and
    "through_tokenizer" (score_reconstructions) when `reconstruct` is given.
    `device`: where the generators passed to generate / edit / reconstruct live (the model's device)."""
    result: dict[str, Any] = {
        "text_to_image": score_text_to_image(generate, checker, cfg, progress, device),
        "captions": score_captions(caption, cfg, progress),
        "edit": score_edits(edit, checker, cfg, progress, device),
        "checker": checker.val_accuracy,
        "checker_usable": checker.usable,
        "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
    }
    if reconstruct is not None:
        result["through_tokenizer"] = score_reconstructions(reconstruct, checker, cfg, progress, device)
    if not checker.usable:
        result["warning"] = checker.usability_message()
    return result


def _cell(value: Any) -> str:
    """A score as a fixed-width table cell."""
    return "     -" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.3f}"


def print_mllm_table(result: dict[str, Any]) -> None:
    """Print evaluate_mllm's result as tables: GenEval per group, captions, edits, the checker."""
    head = f"{'':<22}{'overall':>8}" + "".join(f"{a:>11}" for a in ATTRIBUTE_NAMES)

    def row(name: str, scores: dict[str, Any], overall_key: str = "overall") -> str:
        attrs = scores.get("attributes", {})
        return f"{name:<22}{_cell(scores.get(overall_key)):>8}" + "".join(
            f"{_cell(attrs.get(a)):>11}" for a in ATTRIBUTE_NAMES)

    lines = []
    t2i = result.get("text_to_image")
    if t2i:
        lines += [f"GenEval (text-to-image): {t2i['n_prompts']} prompts x {t2i['images_per_prompt']} images", head]
        for group in GROUPS:
            if group in t2i["groups"]:
                g = t2i["groups"][group]
                lines.append(row(f"  {group} ({g['n_prompts']})", g))
        lines += [row("  all", t2i), ""]
    cap = result.get("captions")
    if cap:
        lines += [f"Captions: {cap['n']} val images (exact {_cell(cap['exact']).strip()})", head]
        for group, g in cap.get("groups", {}).items():
            lines.append(row(f"  {group} ({g['n']})", g))
        lines += [row("  all", cap), ""]
    ed = result.get("edit")
    if ed:
        lines += [f"Edits: {ed['n']} val pairs (overall = success; asked changed {_cell(ed['asked_changed']).strip()}, "
                  f"others kept {_cell(ed['others_kept']).strip()})", head,
                  row("  model", ed, "success"),
                  row("  oracle (true target)", {"overall": ed.get("oracle"),
                                                 "attributes": ed.get("oracle_attributes", {})}), ""]  # fmt: skip
    ceiling = result.get("through_tokenizer")
    if ceiling:
        lines += [f"Through the tokenizer: checker on {ceiling['n']} reconstructed val images (the ceiling the "
                  "tokens allow)", head, row("  reconstructions", ceiling), ""]
    if "checker" in result:
        acc = result["checker"]
        lines.append("checker val accuracy: " + " ".join(f"{a} {acc[a]:.3f}" for a in ATTRIBUTE_NAMES if a in acc)
                     + ("" if result.get("checker_usable") else "  (NOT usable)"))  # fmt: skip
    if result.get("warning"):
        lines.append("WARNING: " + result["warning"])
    print("\n".join(lines), flush=True)
