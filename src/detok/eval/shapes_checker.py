"""Shapes attribute checker: a six-head CNN that reads back what a `shapes` image shows, GenEval-style.

One small CNN reads an image and predicts every attribute a shapes caption names: shape (10 kinds),
colour (12), count (1-4), size (3), position (9 cells, row * 3 + col) and background (12). detok trains
it once on the shapes train split and caches it like the domain net; text-to-image and editing
samples are then scored by whether the checker reads back what the prompt asked for.

    checker = load_or_train_checker(image_size=32)          # trains on first use (~5 min at 1 thread)
    pred = checker.predict(images)                          # {"shape": (B,), "colour": (B,), ...} long
    score_prompts(pred, wanted)["overall"]                  # GenEval-style: all asked attributes right
    edit_success(pred_src, pred_out, "colour", "red")       # (B,) bool: asked change made, the rest kept

Attribute values are class indices (count index 0 = one object; position = row * 3 + col) or, wherever
a value is asked for, their caption words: VALUE_NAMES["count"] = ["one", ...], VALUE_NAMES["position"]
= ["in the top left", ...]. A checker is trustworthy only if its val accuracy is >= USABLE_ACCURACY on
every attribute (`checker.usable`; `checker.require_usable()` raises naming the attributes below).

Weights are cached as `<key>.safetensors` + `<key>.json` under `$DETOK_CACHE/shapes_checker` (else
`~/.cache/detok/shapes_checker`); the key hashes the CheckerConfig (data seed, image size, train size,
steps, architecture and recipe), FORMAT_VERSION and a hash of a few rendered images. An unreadable
entry raises `CheckerCacheError` naming it (delete it to retrain). Create one ahead of time with

    OMP_NUM_THREADS=1 python -m detok.eval.shapes_checker checker.image_size=32

Val accuracy measured with that command (defaults: 20000 train images with horizontal flips, 2500
steps of 128, width 16, 4 stages, data seed 0; val = the first 1000 images of the val split; 1 thread on
a shared 2-core CPU, 301 s of training):

    shape 0.960  colour 0.998  count 1.000  size 0.987  position 0.988  background 1.000   (usable)

Shape is the hard head at 32 px (small hexagons vs circles); `checker.width=16 checker.steps=1500
checker.train_size=10000` (152 s) gave shape 0.939 colour 0.997 count 0.998 size 0.974 position 0.982
background 1.000: not usable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detok.config import option, resolve, to_dict
from detok.data.build import collate
from detok.data.shapes import (
    ATTRIBUTE_NAMES,
    COLOURS,
    COUNT_WORDS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    scene_labels,
)
from detok.eval.domain import UINT8_HALF, resize_to
from detok.eval.features import state_dict_sha256
from detok.eval.recon import to_uint8
from detok.io import atomic_write
from detok.io import cache_dir as _cache_dir
from detok.nn.optim import lr_at, split_decay

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # architecture version: bump when net or recipe change meaning (old entries stop matching)
ATTRIBUTES = ATTRIBUTE_NAMES  # the order of shapes.ATTRIBUTES (labels: shapes.scene_labels)
VALUE_NAMES: dict[str, list[str]] = {
    "shape": list(SHAPES),
    "colour": list(COLOURS),
    "count": list(COUNT_WORDS),  # index = number of objects - 1
    "size": list(SIZES),
    "position": [phrase for row in POSITIONS for phrase in row],  # index = row * 3 + col
    "background": list(COLOURS),
}
NUM_VALUES = {attr: len(names) for attr, names in VALUE_NAMES.items()}
USABLE_ACCURACY = 0.95  # issue 15: the checker may score samples only if this accurate on every attribute
GRID = 3  # positions form a GRID x GRID grid
PREDICT_CHUNK = 256  # images per forward pass in predict()
READ_BATCH = 256  # dataset items per DataLoader batch while reading a split into memory
PROBE = 4  # hash this many rendered train images into the cache key (catches renderer changes)
LOG_EVERY = 50  # steps between progress-bar loss updates


def mirror_position(position: torch.Tensor) -> torch.Tensor:
    """Position indices of the horizontally mirrored images: column c -> GRID - 1 - c, row kept."""
    return position // GRID * GRID + (GRID - 1 - position % GRID)


def value_index(attribute: str, value: int | str) -> int:
    """A class index from an index or a caption word ('red', 'two', 'in the top left')."""
    if attribute not in NUM_VALUES:
        raise KeyError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    if isinstance(value, str):
        if value not in VALUE_NAMES[attribute]:
            raise ValueError(f"{value!r} is not a {attribute}; choose one of {VALUE_NAMES[attribute]}")
        return VALUE_NAMES[attribute].index(value)
    index = int(value)
    if not 0 <= index < NUM_VALUES[attribute]:
        raise ValueError(f"{attribute} index {index} out of range 0..{NUM_VALUES[attribute] - 1}")
    return index


@dataclass
class CheckerConfig:
    """Data, architecture and training recipe of the checker (every field is part of the cache key)."""

    image_size: int = option(32, "input side; other sizes are resized (bilinear, antialias)")
    data_seed: int = option(0, "seed of the shapes dataset trained and measured on")
    train_size: int = option(20000, "shapes train images (rendered into memory)")
    val_size: int = option(1000, "shapes val images the recorded accuracy is measured on")
    width: int = option(16, "channels of the first stage; doubled at every later stage up to dim")
    stages: int = option(4, "conv stages, each but the last followed by 2x2 max pooling")
    dim: int = option(128, "channels of the last stage; pooled (mean and max) into the heads")
    steps: int = option(2500, "optimizer steps (2500: the fewest tried with every head >= 95% at 32 px)")
    batch: int = option(128, "images per step")
    lr: float = option(3e-3, "peak AdamW learning rate (linear warmup, cosine decay to 0)")
    warmup: int = option(100, "warmup steps")
    weight_decay: float = option(5e-4, "AdamW weight decay on conv / linear weights")
    hflip: bool = option(True, "random horizontal flips, mirroring the position label (shapes are symmetric)")
    seed: int = option(0, "seed of the initial weights, data order and flips")


def _coords(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) with two coordinate channels appended: (B, C + 2, H, W), each in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, ys, xs], dim=1)


class CheckerNet(nn.Module):
    """Pure CNN: [coords, conv3x3-BN-ReLU, maxpool] x stages, mean + max pooling, a linear head per attribute.

    The coordinate channels (CoordConv) let globally pooled features say where the objects are.
    """

    def __init__(self, image_size: int = 32, width: int = 16, stages: int = 4, dim: int = 128):
        super().__init__()
        if image_size < 2 ** (stages - 1):
            raise ValueError(f"image_size {image_size} is too small for {stages} stages")
        self.image_size, self.dim = image_size, dim
        chans = [min(width * 2**i, dim) for i in range(stages - 1)] + [dim]
        self.convs = nn.ModuleList(
            nn.Conv2d((3 if i == 0 else chans[i - 1]) + 2, c, 3, padding=1, bias=False)
            for i, c in enumerate(chans)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in chans)
        self.heads = nn.ModuleDict({attr: nn.Linear(2 * dim, n) for attr, n in NUM_VALUES.items()})

    def init_weights(self, rng: torch.Generator) -> None:
        """Kaiming-normal convs, unit BatchNorm, small-normal heads: every draw from `rng`."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=rng)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01, generator=rng)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float images (B, 3, S, S) in [-1, 1] -> {attribute: logits (B, NUM_VALUES[attribute])}."""
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(_coords(x))))
            if i < len(self.convs) - 1:
                x = F.max_pool2d(x, 2)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # (B, 2 * dim)
        return {attr: head(pooled) for attr, head in self.heads.items()}


def _prepare(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] or uint8 -> float (B, 3, size, size) in [-1, 1] on the uint8 grid.

    Rounding to uint8 first makes samples look like the saved PNGs the checker was trained on.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    x = resize_to(x, size).round().clamp(0, 255)
    return x / UINT8_HALF - 1


def _shapes_root(data: Any) -> ShapesDataset:
    """The ShapesDataset under a dataset / Subset / DataLoader (followed through `.dataset`)."""
    node = data
    for _ in range(8):
        if isinstance(node, ShapesDataset):
            return node
        node = getattr(node, "dataset", None)
    raise TypeError(f"expected a ShapesDataset or a DataLoader over one, got {type(data).__name__}")


def _read(data: Any, size: int, progress: bool = False, desc: str = "read") -> tuple[torch.Tensor, ...]:
    """A shapes dataset or loader in memory: uint8 images (N, 3, size, size), labels (N, 6) (ATTRIBUTES)."""
    root = _shapes_root(data)
    loader = data if isinstance(data, DataLoader) else DataLoader(data, READ_BATCH, collate_fn=collate)
    images, labels = [], []
    for batch in tqdm(loader, desc=f"shapes checker: {desc}", disable=not progress):
        images.append(resize_to(to_uint8(batch["image"]), size).round().clamp(0, 255).to(torch.uint8))
        for i in torch.as_tensor(batch["index"]).tolist():
            found = scene_labels(root.scene(int(i)))
            labels.append([found[a] for a in ATTRIBUTES])
    if not images:
        none = torch.empty(0, 3, size, size, dtype=torch.uint8)
        return none, torch.empty(0, len(ATTRIBUTES), dtype=torch.int64)
    return torch.cat(images), torch.tensor(labels, dtype=torch.int64)


class ShapesChecker:
    """A trained CheckerNet with its cache record (`meta`: config, val accuracy per attribute, ...)."""

    def __init__(self, net: CheckerNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.image_size = net.image_size
        self.meta = dict(meta or {})
        self.weights_sha256 = state_dict_sha256(net.state_dict())

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] (or uint8), any H, W -> {attribute: predicted index (B,) long}."""
        self.net.eval()
        device = next(self.net.parameters()).device
        x = _prepare(images, self.image_size)
        chunks = [self.net(x[i : i + PREDICT_CHUNK].to(device)) for i in range(0, len(x), PREDICT_CHUNK)]
        if not chunks:
            return {attr: torch.empty(0, dtype=torch.int64) for attr in ATTRIBUTES}
        return {attr: torch.cat([c[attr] for c in chunks]).argmax(1).cpu() for attr in ATTRIBUTES}

    def accuracy(self, data: Any) -> dict[str, float]:
        """Per-attribute accuracy on real shapes images: a ShapesDataset, Subset or DataLoader over one."""
        images, labels = _read(data, self.image_size)
        return self._accuracy(images, labels)

    def _accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        if len(labels) == 0:
            return {attr: float("nan") for attr in ATTRIBUTES}
        pred = self.predict(images)
        return {a: float((pred[a] == labels[:, j]).float().mean()) for j, a in enumerate(ATTRIBUTES)}

    @property
    def val_accuracy(self) -> dict[str, float]:
        """The per-attribute val accuracy measured when the checker was trained ({} if unknown)."""
        return dict(self.meta.get("val_accuracy", {}))

    def below_threshold(self, threshold: float = USABLE_ACCURACY) -> dict[str, float]:
        """The attributes whose recorded val accuracy is below `threshold` (all if none is recorded)."""
        acc = self.val_accuracy
        return {a: acc.get(a, float("nan")) for a in ATTRIBUTES if not acc.get(a, 0.0) >= threshold}

    @property
    def usable(self) -> bool:
        """Every attribute's val accuracy >= USABLE_ACCURACY: only then may the checker score samples."""
        return not self.below_threshold()

    def usability_message(self) -> str:
        """One line: usable, or which attributes fall short of USABLE_ACCURACY and by how much."""
        low = self.below_threshold()
        if not low:
            return f"shapes checker usable: every attribute >= {USABLE_ACCURACY:.0%} on val"
        parts = ", ".join(f"{a} {v:.1%} ({v - USABLE_ACCURACY:+.1%})" for a, v in low.items())
        return (
            f"shapes checker NOT usable: val accuracy below {USABLE_ACCURACY:.0%} on {parts}; "
            "train longer (checker.steps) or on more images (checker.train_size)"
        )

    def require_usable(self) -> None:
        """Raise CheckerNotUsableError (the usability message) unless `usable`."""
        if not self.usable:
            raise CheckerNotUsableError(self.usability_message())


class CheckerNotUsableError(RuntimeError):
    """The checker's val accuracy is below USABLE_ACCURACY on some attribute."""


@torch.enable_grad()  # callers may be inside no_grad
def train_checker(
    cfg: CheckerConfig | None = None, progress: bool = True, device: Any = None
) -> ShapesChecker:
    """Train on the shapes train split in memory, then measure every head on the val split (into meta).

    Every random draw (initial weights, data order, flips) comes from one generator seeded by cfg.seed.
    """
    cfg = cfg or CheckerConfig()
    device = torch.device(device or "cpu")
    start = time.perf_counter()
    train = ShapesDataset(cfg.train_size, cfg.image_size, cfg.data_seed, "train")
    x_train, y_train = _read(train, cfg.image_size, progress, "read train")
    steps_per_epoch = len(y_train) // cfg.batch
    if steps_per_epoch < 1:
        raise ValueError(f"{len(y_train)} train images are fewer than one batch of {cfg.batch}")
    g = torch.Generator().manual_seed(cfg.seed)
    net = CheckerNet(cfg.image_size, cfg.width, cfg.stages, cfg.dim)
    net.init_weights(g)
    net.to(device, memory_format=torch.channels_last).train()  # NHWC convs: faster on CPU
    opt = torch.optim.AdamW(split_decay(list(net.named_parameters()), cfg.weight_decay, []), lr=cfg.lr)
    pos = ATTRIBUTES.index("position")
    perm = torch.empty(0, dtype=torch.int64)
    bar = tqdm(range(cfg.steps), desc="shapes checker: train", disable=not progress)
    for step in bar:
        k = step % steps_per_epoch
        if k == 0:
            perm = torch.randperm(len(y_train), generator=g)  # a new epoch
        idx = perm[k * cfg.batch : (k + 1) * cfg.batch]  # (batch,)
        x, y = x_train[idx].float() / UINT8_HALF - 1, y_train[idx].clone()  # (batch, 3, S, S), (batch, 6)
        if cfg.hflip:
            flip = torch.rand(len(idx), generator=g) < 0.5  # (batch,)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y[:, pos] = torch.where(flip, mirror_position(y[:, pos]), y[:, pos])
        logits = net(x.to(device, memory_format=torch.channels_last))
        y = y.to(device)
        loss = sum(F.cross_entropy(logits[a], y[:, j]) for j, a in enumerate(ATTRIBUTES))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.steps, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - start
    checker = ShapesChecker(net.cpu().to(memory_format=torch.contiguous_format))
    val = ShapesDataset(cfg.val_size, cfg.image_size, cfg.data_seed, "val")
    acc = checker._accuracy(*_read(val, cfg.image_size, progress, "read val"))
    checker.meta.update(
        val_accuracy=acc, train_seconds=round(train_seconds, 1), train_images=len(y_train),
        val_images=len(val),
    )
    checker.meta["usable"] = checker.usable
    log.info("shapes checker val accuracy: %s", ", ".join(f"{a} {v:.4f}" for a, v in acc.items()))
    return checker


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------


def score_prompts(predictions: Mapping[str, torch.Tensor], wanted: Sequence[Mapping[str, int | str]]) -> dict:
    """GenEval-style scores of B samples against the B prompts that made them.

    wanted[i] names the attributes prompt i asked for (any subset, values as indices or caption words).
    Returns {"overall": share of samples with every asked attribute right, "attributes": {attribute:
    accuracy over the prompts that asked for it}, "n": B, "correct": per-sample list of bools}.
    """
    n = len(wanted)
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    correct = []
    for i, asked in enumerate(wanted):
        ok = True
        for attr, value in asked.items():
            pred = predictions[attr]
            if len(pred) != n:
                raise ValueError(f"{len(pred)} {attr} predictions for {n} prompts")
            hit = int(pred[i]) == value_index(attr, value)
            hits[attr].append(hit)
            ok = ok and hit
        correct.append(ok)
    return {
        "overall": sum(correct) / n if n else float("nan"),
        "attributes": {a: sum(h) / len(h) for a, h in hits.items() if h},
        "n": n,
        "correct": correct,
    }


def edit_success(
    pred_source: Mapping[str, torch.Tensor],
    pred_result: Mapping[str, torch.Tensor],
    attribute: str,
    wanted_value: int | str | torch.Tensor | Iterable[int],
) -> torch.Tensor:
    """(B,) bool: the edited image has the asked value of `attribute` AND every other attribute of its source.

    wanted_value is one value for every pair (index or caption word) or a (B,) tensor of indices.
    """
    if isinstance(wanted_value, (int, str)):
        index = value_index(attribute, wanted_value)
        wanted = torch.full_like(torch.as_tensor(pred_result[attribute]), index)
    else:
        wanted = torch.as_tensor(list(wanted_value) if not torch.is_tensor(wanted_value) else wanted_value)
        for v in wanted.tolist():
            value_index(attribute, v)  # range check
    ok = torch.as_tensor(pred_result[attribute]) == wanted
    for other in ATTRIBUTES:
        if other != attribute:
            ok &= torch.as_tensor(pred_result[other]) == torch.as_tensor(pred_source[other])
    return ok


# ---------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------


class CheckerCacheError(RuntimeError):
    """A cache entry exists but cannot be read, or its weights do not match the recorded hash."""


def default_cache_dir() -> Path:
    """$DETOK_CACHE/shapes_checker, else ~/.cache/detok/shapes_checker."""
    return _cache_dir("shapes_checker")


def _probe(cfg: CheckerConfig) -> str:
    """sha256 (16 hex) of the first PROBE rendered train images: the renderer is part of the identity."""
    ds = ShapesDataset(max(cfg.train_size, PROBE), cfg.image_size, cfg.data_seed, "train")
    blob = b"".join(to_uint8(ds[i]["image"]).numpy().tobytes() for i in range(PROBE))
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_key(cfg: CheckerConfig) -> str:
    """`shapes-checker-<size>px-<hash>`, hashing the CheckerConfig, FORMAT_VERSION and the render probe."""
    blob = {"format": FORMAT_VERSION, "config": to_dict(cfg), "probe": _probe(cfg)}
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return f"shapes-checker-{cfg.image_size}px-{digest}"


def _load_entry(weights: Path, meta_path: Path) -> ShapesChecker:
    try:
        meta = json.loads(meta_path.read_text())
        cfg = CheckerConfig(**meta["config"])
        net = CheckerNet(cfg.image_size, cfg.width, cfg.stages, cfg.dim)
        net.load_state_dict(load_file(str(weights)))
    except Exception as e:  # any failure here means the entry is unusable
        raise CheckerCacheError(
            f"shapes-checker cache entry {weights} (+ {meta_path.name}) cannot be read "
            f"({type(e).__name__}: {e}); delete both files to retrain"
        ) from e
    checker = ShapesChecker(net, meta)
    if checker.weights_sha256 != meta.get("weights_sha256"):
        raise CheckerCacheError(
            f"{weights}: weights hash {checker.weights_sha256} differs from {meta.get('weights_sha256')} "
            f"recorded in {meta_path.name}; delete both files to retrain"
        )
    return checker


def load_or_train_checker(
    image_size: int = 32,
    cfg: CheckerConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    train_if_missing: bool = True,
    device: Any = None,
    progress: bool = True,
) -> ShapesChecker:
    """The checker of `cfg` (default: CheckerConfig at `image_size`): cached, else trained once and cached.

    The JSON is written after the weights, so an entry exists when its JSON does. A checker below
    USABLE_ACCURACY on some attribute is returned (and cached) with a warning; callers that score
    samples should call `require_usable()`.
    """
    cfg = cfg or CheckerConfig(image_size=image_size)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(cfg)
    weights, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if not meta_path.is_file():
        if not train_if_missing:
            raise FileNotFoundError(
                f"no shapes-checker cache entry {weights} ({cfg.image_size} px). Create it with "
                f"`python -m detok.eval.shapes_checker checker.image_size={cfg.image_size} "
                f"cache_dir={folder}` "
                "plus the checker.* settings in use, or allow training"
            )
        checker = train_checker(cfg, progress=progress, device=device)
        state = {k: v.contiguous() for k, v in checker.net.state_dict().items()}
        meta = {"format": FORMAT_VERSION, "key": key, "config": to_dict(cfg), "probe": _probe(cfg),
                **checker.meta, "weights_sha256": state_dict_sha256(state),
                "torch": torch.__version__}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(weights, lambda tmp: save_file(state, tmp))
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
        log.info("shapes checker cached at %s", weights)
    checker = _load_entry(weights, meta_path)
    if not checker.usable:
        log.warning("%s (%s)", checker.usability_message(), meta_path)
    checker.net.to(device or "cpu")
    return checker


@dataclass
class CheckerRun:
    """`python -m detok.eval.shapes_checker checker.image_size=32 checker.steps=... cache_dir=...`"""

    checker: CheckerConfig = field(default_factory=CheckerConfig)
    cache_dir: str = option("", "empty: $DETOK_CACHE/shapes_checker or ~/.cache/detok/shapes_checker")


def main(argv: list[str] | None = None) -> None:
    """Train (or find) and cache the checker of dotted overrides; print its cache entry and usability."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = resolve(CheckerRun, overrides=sys.argv[1:] if argv is None else argv)
    checker = load_or_train_checker(cfg=run.checker, cache_dir=run.cache_dir or None)
    print(json.dumps(checker.meta, indent=2))
    print(checker.usability_message())


if __name__ == "__main__":
    main()
