"""Domain feature network: a small CNN classifier trained once per dataset, cached, used as a FeatureNet.

ImageNet Inception features say little about 32-px Fashion-MNIST or `shapes`, so small datasets are
scored with a classifier trained on the dataset itself: its penultimate features ("pool") give a
"domain FID", its logits the class accuracy of class-conditional samples.

    net = load_domain_net(DataConfig(name="fashion-mnist", image_size=32))  # trains on first use
    feats = net(images_uint8)  # {"pool": (B, 128), "logits": (B, 10)}

Weights are cached as `<key>.safetensors` + `<key>.json` under `$DETOK_CACHE/domain` (else
`~/.cache/detok/domain`); the key hashes the dataset identity and the DomainConfig. An entry that
cannot be read raises `DomainCacheError` naming it (delete it to retrain): it is never replaced
silently, since reference statistics elsewhere are keyed by the weights it held. Create an entry
ahead of time with `python -m detok.eval.domain data.name=fashion-mnist data.image_size=32`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
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
from detok.data.build import DataConfig, build_dataset, collate
from detok.data.fashion_mnist import find_fashion_mnist
from detok.eval.features import file_sha256, state_dict_sha256
from detok.eval.recon import to_uint8
from detok.io import CACHE_ENV, atomic_write  # noqa: F401  (CACHE_ENV: documented name)
from detok.io import cache_dir as _cache_dir
from detok.nn.optim import lr_at, split_decay

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the architecture or recipe changes meaning: old cache entries stop matching
FEATURE_CHUNK = 256  # images per forward pass inside DomainFeatures.__call__
PRELOAD_BATCH = 256  # dataset items per DataLoader batch while reading a split into memory
UINT8_HALF = 127.5  # uint8 0..255 <-> [-1, 1]
SHAPES_PROBE = 4  # shapes: hash this many rendered images into the identity (catches renderer changes)
LOG_EVERY = 50  # steps between progress-bar loss updates


@dataclass
class DomainConfig:
    """Architecture and training recipe of the domain classifier (every field is part of the cache key)."""

    image_size: int = option(32, "input side of the net; other sizes are resized (bilinear, antialias)")
    width: int = option(16, "channels of the first stage; doubled at every later stage")
    stages: int = option(4, "conv stages, each but the last followed by 2x2 max pooling")
    dim: int = option(128, "feature width ('pool'): channels of the last stage")
    steps: int = option(1000, "optimizer steps")
    batch: int = option(128, "images per step")
    lr: float = option(3e-3, "peak AdamW learning rate (linear warmup, cosine decay to 0)")
    warmup: int = option(100, "warmup steps")
    weight_decay: float = option(5e-4, "AdamW weight decay on conv / linear weights")
    crop_pad: int = option(2, "random crop: pad by this many pixels (replicate), crop back; 0 = off")
    hflip: bool = option(True, "random horizontal flips (fine for shapes and Fashion-MNIST)")
    seed: int = option(0, "seed of the initial weights, data order and augmentation")


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float (B, 3, H, W) -> float (B, 3, size, size), 0-255 scale, bilinear with antialias."""
    x = images.float()
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class DomainNet(nn.Module):
    """Pure CNN classifier: [conv3x3-BN-ReLU, maxpool] x stages, global average pool -> dim -> K logits."""

    def __init__(
        self, num_classes: int, image_size: int = 32, width: int = 16, stages: int = 4, dim: int = 128
    ):
        super().__init__()
        if image_size < 2 ** (stages - 1):
            raise ValueError(f"image_size {image_size} is too small for {stages} stages")
        self.image_size, self.num_classes, self.dim = image_size, num_classes, dim
        chans = [width * 2**i for i in range(stages - 1)] + [dim]
        layers: list[nn.Module] = []
        for i, c in enumerate(chans):
            layers += [
                nn.Conv2d(3 if i == 0 else chans[i - 1], c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
            ]
            layers += [nn.ReLU(inplace=True)] + ([nn.MaxPool2d(2)] if i < stages - 1 else [])
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(dim, num_classes)
        self.train_stats: dict[str, Any] = {}  # set by train_domain_net: val accuracy, time, image counts

    def init_weights(self, rng: torch.Generator) -> None:
        """Kaiming-normal convs, unit BatchNorm, small-normal head: every draw from `generator`."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=rng)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01, generator=rng)
        nn.init.zeros_(self.head.bias)

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float images (B, 3, S, S) in [-1, 1] -> {"pool": (B, dim), "logits": (B, K)}."""
        pool = self.body(x).mean(dim=(2, 3))  # (B, dim)
        return {"pool": pool, "logits": self.head(pool)}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 images (B, 3, H, W), any H, W -> embed() of them resized to the net's size."""
        return self.embed(resize_to(images, self.image_size) / UINT8_HALF - 1)


def augment(x: torch.Tensor, pad: int, hflip: bool, rng: torch.Generator) -> torch.Tensor:
    """Random crop (replicate padding by `pad`) and horizontal flip of float images (B, C, H, W)."""
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate").permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
        oy, ox = torch.randint(0, 2 * pad + 1, (2, b), generator=rng)  # crop corners
        rows, cols = oy[:, None] + torch.arange(h), ox[:, None] + torch.arange(w)  # (B, H), (B, W)
        x = padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
    if hflip:
        flip = torch.rand(b, generator=rng) < 0.5  # (B,)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def load_split(data_cfg: DataConfig, split: str, size: int, progress: bool = True):
    """A whole split in memory: (uint8 images (N, 3, size, size), int64 labels (N,), number of classes).

    Images are rounded to uint8 as generated samples are, then resized as DomainNet.forward does.
    """
    ds = build_dataset(data_cfg, split)
    loader = DataLoader(ds, batch_size=PRELOAD_BATCH, num_workers=data_cfg.num_workers, collate_fn=collate)
    images, labels = [], []
    for batch in tqdm(loader, desc=f"domain net: read {data_cfg.name} {split}", disable=not progress):
        images.append(resize_to(to_uint8(batch["image"]), size).round().clamp(0, 255).to(torch.uint8))
        labels.append(torch.as_tensor(batch["label"], dtype=torch.int64))
    y = torch.cat(labels)
    return torch.cat(images), y, getattr(ds, "num_classes", None) or int(y.max()) + 1


@torch.enable_grad()  # callers may be inside no_grad (evaluate_tokenizer is the first to need the net)
def train_domain_net(
    data_cfg: DataConfig, cfg: DomainConfig | None = None, progress: bool = True, device: Any = None
) -> DomainNet:
    """Train on the train split in memory, then measure top-1 on the val split (into `net.train_stats`).

    Every random draw (initial weights, data order, augmentation) comes from one generator seeded by
    cfg.seed, so a seed gives the same weights on the same machine and thread count.
    """
    cfg = cfg or DomainConfig()
    device = torch.device(device or "cpu")
    start = time.perf_counter()
    x_train, y_train, num_classes = load_split(data_cfg, "train", cfg.image_size, progress)
    steps_per_epoch = len(y_train) // cfg.batch
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {len(y_train)} images, fewer than one batch of {cfg.batch}")
    g = torch.Generator().manual_seed(cfg.seed)
    net = DomainNet(num_classes, cfg.image_size, cfg.width, cfg.stages, cfg.dim)
    net.init_weights(g)
    net.to(device, memory_format=torch.channels_last).train()  # NHWC convs: about 2x faster on CPU
    groups = split_decay(list(net.named_parameters()), cfg.weight_decay, [])  # no decay on 1-D (BN) tensors
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    perm = torch.empty(0, dtype=torch.int64)
    bar = tqdm(range(cfg.steps), desc="domain net: train", disable=not progress)
    for step in bar:
        k = step % steps_per_epoch
        if k == 0:
            perm = torch.randperm(len(y_train), generator=g)  # a new epoch
        idx = perm[k * cfg.batch : (k + 1) * cfg.batch]  # (batch,)
        x = augment(x_train[idx].float() / UINT8_HALF - 1, cfg.crop_pad, cfg.hflip, g)  # (batch, 3, S, S)
        logits = net.embed(x.to(device, memory_format=torch.channels_last))["logits"]
        loss = F.cross_entropy(logits, y_train[idx].to(device))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.steps, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    x_val, y_val, _ = load_split(data_cfg, "val", cfg.image_size, progress)
    net.train_stats = {
        "val_accuracy": class_accuracy(DomainFeatures(net, "val"), x_val, y_val),
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_images": len(y_train),
        "val_images": len(y_val),
    }
    log.info("domain net for %s: val top-1 %.4f", data_cfg.name, net.train_stats["val_accuracy"])
    return net


class DomainFeatures:
    """A trained DomainNet as a `FeatureNet`: uint8 (B, 3, H, W) -> {"pool": (B, dim), "logits": (B, K)}."""

    def __init__(self, net: DomainNet, name: str, meta: dict[str, Any] | None = None) -> None:
        net = net.eval().to(memory_format=torch.channels_last)  # NHWC: ~1.7x faster on CPU; hash unchanged
        self.net, self.name, self.dim, self.num_classes = net, name, net.dim, net.num_classes
        self.weights_sha256 = state_dict_sha256(net.state_dict())
        self.resize = f"bilinear to {net.image_size} px, antialias (none at {net.image_size} px)"
        self.meta = dict(meta or {})  # the cache entry's JSON: config, data identity, val accuracy, ...

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.net.eval()
        device = next(self.net.parameters()).device
        chunks = [
            self.net(images[i : i + FEATURE_CHUNK].to(device)) for i in range(0, len(images), FEATURE_CHUNK)
        ]
        return {k: torch.cat([c[k] for c in chunks]).float() for k in ("pool", "logits")}


def class_accuracy(net: Any, images_uint8: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose predicted class (argmax of net(images)["logits"]) is their label."""
    if len(images_uint8) != len(labels):
        raise ValueError(f"{len(images_uint8)} images but {len(labels)} labels")
    pred = net(images_uint8)["logits"].argmax(1).cpu()  # (B,)
    return float((pred == torch.as_tensor(labels).cpu()).float().mean()) if len(labels) else float("nan")


# ---------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------


class DomainCacheError(RuntimeError):
    """A cache entry exists but cannot be read, or its weights do not match the recorded hash."""


def default_cache_dir() -> Path:
    """$DETOK_CACHE/domain, else ~/.cache/detok/domain."""
    return _cache_dir("domain")


def dataset_identity(data_cfg: DataConfig) -> dict[str, Any]:
    """What identifies the training data: name and size, plus the shapes seed / size and a hash of a few
    rendered images, or the Fashion-MNIST files' names and sizes, or a folder's root, lists and sizes."""
    ident: dict[str, Any] = {"name": data_cfg.name, "image_size": data_cfg.image_size}
    if data_cfg.name == "shapes":
        ds = build_dataset(data_cfg, "train")
        h = hashlib.sha256(b"".join(to_uint8(ds[i]["image"]).numpy().tobytes() for i in range(SHAPES_PROBE)))
        ident.update(seed=data_cfg.seed, shapes_size=data_cfg.shapes_size, probe=h.hexdigest()[:16])
    elif data_cfg.name == "fashion-mnist":
        for split in ("train", "val"):
            found = find_fashion_mnist(data_cfg.root, split)
            if found is None:
                build_dataset(data_cfg, split)  # raises the dataset's own "files not found" help
            ident[split] = [[p.name, p.stat().st_size] for p in found or ()]
    else:
        lists = [lst for lst in (data_cfg.file_list, data_cfg.val_file_list) if lst]
        ident.update(
            root=os.path.abspath(data_cfg.root), lists=[[os.path.abspath(p), file_sha256(p)] for p in lists]
        )
        ident["sizes"] = [len(build_dataset(data_cfg, split)) for split in ("train", "val")]
    return ident


def cache_key(data_cfg: DataConfig, cfg: DomainConfig) -> str:
    """`<dataset>-<size>px-<hash>`, hashing the dataset identity, the DomainConfig and FORMAT_VERSION."""
    blob = {"format": FORMAT_VERSION, "data": dataset_identity(data_cfg), "config": to_dict(cfg)}
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return f"{data_cfg.name}-{data_cfg.image_size}px-{digest}"


def _load_entry(weights: Path, meta_path: Path, name: str) -> DomainFeatures:
    """A cache entry as DomainFeatures; DomainCacheError naming the files if it cannot be used."""
    try:
        meta = json.loads(meta_path.read_text())
        cfg = DomainConfig(**meta["config"])
        net = DomainNet(meta["num_classes"], cfg.image_size, cfg.width, cfg.stages, cfg.dim)
        net.load_state_dict(load_file(str(weights)))
    except Exception as e:  # any failure here means the entry is unusable
        raise DomainCacheError(
            f"domain-net cache entry {weights} (+ {meta_path.name}) cannot be read "
            f"({type(e).__name__}: {e}); delete both files to retrain"
        ) from e
    feats = DomainFeatures(net, name, meta)
    if feats.weights_sha256 != meta.get("weights_sha256"):
        raise DomainCacheError(
            f"{weights}: weights hash {feats.weights_sha256} differs from {meta.get('weights_sha256')} "
            f"recorded in {meta_path.name}; delete both files to retrain"
        )
    return feats


def load_domain_net(
    data_cfg: DataConfig,
    cfg: DomainConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    train_if_missing: bool = True,
    device: Any = None,
    progress: bool = True,
) -> DomainFeatures:
    """The domain classifier for `data_cfg` as a FeatureNet: from the cache, else trained once and cached.

    The JSON is written after the weights, so an entry exists when its JSON does; weights without
    one (an interrupted write) are retrained over.
    """
    cfg = cfg or DomainConfig()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(data_cfg, cfg)
    weights, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    name = f"domain-cnn/{data_cfg.name}@{cfg.image_size}"
    if not meta_path.is_file():
        if not train_if_missing:
            raise FileNotFoundError(
                f"no domain-net cache entry {weights} ({data_cfg.name}, {data_cfg.image_size} px). Create "
                f"it with `python -m detok.eval.domain data.name={data_cfg.name} "
                f"data.image_size={data_cfg.image_size} cache_dir={folder}` plus the data.* / domain.* "
                "settings in use, or allow training"
            )
        net = train_domain_net(data_cfg, cfg, progress=progress, device=device).cpu()
        state = {k: v.contiguous() for k, v in net.state_dict().items()}  # channels_last -> contiguous
        meta = {"format": FORMAT_VERSION, "key": key, "name": name, "num_classes": net.num_classes,
                "config": to_dict(cfg), "data": dataset_identity(data_cfg), **net.train_stats,
                "weights_sha256": state_dict_sha256(state), "torch": torch.__version__}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(weights, lambda tmp: save_file(state, tmp))
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
        log.info("domain net cached at %s (val top-1 %.4f)", weights, meta["val_accuracy"])
    feats = _load_entry(weights, meta_path, name)
    feats.net.to(device or "cpu")
    return feats


@dataclass
class DomainRun:
    """`python -m detok.eval.domain data.name=... domain.steps=... cache_dir=...`"""

    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=32))
    domain: DomainConfig = field(default_factory=DomainConfig)
    cache_dir: str = option("", "empty: $DETOK_CACHE/domain or ~/.cache/detok/domain")


def main(argv: list[str] | None = None) -> None:
    """Train (or find) and cache the domain net of dotted overrides; print its cache entry."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = resolve(DomainRun, overrides=sys.argv[1:] if argv is None else argv)
    feats = load_domain_net(run.data, run.domain, run.cache_dir or None)
    print(json.dumps({"name": feats.name, "weights_sha256": feats.weights_sha256, **feats.meta}, indent=2))


if __name__ == "__main__":
    main()
