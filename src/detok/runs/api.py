"""The short Python API exported from `detok` itself: load runs, sample, encode / decode, save a grid.

    import detok

    tok = detok.load_tokenizer("runs/quickstart/tokenizer")       # a run folder, checkpoint or converted release
    gen = detok.load_generator("runs/quickstart/sit")
    images = detok.sample(gen, tok, labels=[0, 1, 2, 3], cfg_scale=2.0, seed=0)   # (4, 3, H, W) in [-1, 1]
    detok.save_grid(images, "samples.png", labels=[0, 1, 2, 3])   # one row per class (names= to label them)
    z = detok.encode(tok, images)                                 # posterior means (4, C, h, w)
    x = detok.decode(tok, z)                                      # back to images, (4, 3, H, W)

Everything here is a thin layer over `detok.tokenizers.load`, `detok.generators.load` and
`detok.generators.sampling`; `detok.runs` has the verbs that write run folders (train, evaluate, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from detok.generators.base import Generator
from detok.tokenizers.base import Tokenizer


def load_tokenizer(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> Tokenizer:
    """A tokenizer in eval mode from a detok run / checkpoint folder, a converted upstream checkpoint or an
    external spec (`detok.tokenizers.load.load_tokenizer`), on `device`; EMA weights unless `ema=False`."""
    from detok.tokenizers.load import load_tokenizer as _load

    return _load(path, use_ema=ema).eval().to(device)


def load_generator(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> Generator:
    """A generator in eval mode from a detok run / checkpoint folder (or a converted MAR), on `device`;
    EMA weights unless `ema=False`. Its run config is `gen.run_config`."""
    from detok.generators.load import load_generator as _load

    gen, cfg = _load(path, use_ema=ema)
    gen.run_config = cfg
    return gen.to(device)


def _labels(labels: Sequence[int] | torch.Tensor | int, num_classes: int) -> torch.Tensor:
    """Class labels (N,) int64: a sequence / tensor as given, or an int n = n labels cycling over the classes."""
    if isinstance(labels, int):
        return torch.arange(labels) % num_classes
    out = torch.as_tensor(labels, dtype=torch.int64).flatten()
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {out.min().item()}..{out.max().item()}")
    return out


def sample(
    gen: Generator, tok: Tokenizer, labels: Sequence[int] | torch.Tensor | int, *, cfg_scale: float = 1.0,
    seed: int = 0, steps: int | str | None = None, head_steps: int | str | None = None, batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Class-conditional images (N, 3, H, W) in [-1, 1], decoded by `tok`.

    `labels`: the class of each image, or an int N (N images, classes 0, 1, ... in turn). `steps` /
    `head_steps`: the sampler's outer steps / the per-token head's (None = the generator's defaults). The
    same (seed, batch_size) gives the same images: batch b draws from an rng seeded by (seed, its first index).
    """
    y = _labels(labels, gen.num_classes)
    from detok.generators.sampling import sample_images

    with torch.no_grad():
        return sample_images(gen, tok, y, cfg_scale=cfg_scale, steps=steps, head_steps=head_steps, seed=seed,
                             batch_size=batch_size, progress=progress)


def encode(tok: Tokenizer, images: torch.Tensor, sample: bool = False, seed: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> latents (B, C, h, w): posterior means, or posterior samples with
    `sample=True` (seeded by `seed`); token ids (B, K) for a discrete tokenizer."""
    rng = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():  # a discrete tokenizer's encode ignores sample / rng (quantization is deterministic)
        return tok.encode(images, sample=sample, rng=rng)


def decode(tok: Tokenizer, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) (or token ids) -> images (B, 3, H, W), clamped to [-1, 1]."""
    with torch.no_grad():
        return tok.decode(latents).float().clamp(-1, 1)


def save_grid(images: torch.Tensor, path: str | Path, labels: Sequence[int] | torch.Tensor | None = None,
              names: list[str] | None = None, nrow: int = 8) -> Path:
    """Save [-1, 1] images as a PNG: with `labels`, one row per class with its name (`names`, default
    "class k"); without, rows of `nrow` images. Small images are enlarged. Returns the path."""
    from detok.runs.sample import save_class_grid

    if labels is None:
        labels = torch.arange(len(images)) // nrow  # row r holds images r * nrow ...
        names = [f"row {r}" for r in range(int(labels.max()) + 1)] if len(images) else []
    return save_class_grid(images, torch.as_tensor(labels), path, names)

