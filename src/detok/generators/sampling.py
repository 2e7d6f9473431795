"""Class-balanced sampling from a generator, decoded by its tokenizer; results independent of process count."""

from __future__ import annotations

import math
from typing import Protocol

import torch
from tqdm.auto import tqdm

from detok.generators.base import Generator


class Decoder(Protocol):
    """What sampling needs of a tokenizer (any `detok.tokenizers.Tokenizer` is one)."""

    def denormalize(self, z: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels i % num_classes for i < n: every class equally often (up to one)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def sample_images(
    gen: Generator,
    tok: Decoder,
    labels: torch.Tensor,
    *,
    cfg_scale: float = 1.0,
    steps: int | str | None = None,
    head_steps: int | str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    first_index: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Images (n, 3, H, W) in [-1, 1] for `labels`; each batch draws from an rng seeded by (seed, global index).

    The seed of a batch depends only on the index of its first sample, so sharding batches across
    ranks (or resuming) reproduces the same images.
    """
    device = next(gen.parameters()).device
    out = []
    for start in tqdm(range(0, len(labels), batch_size), desc="sample", disable=not progress):
        y = labels[start : start + batch_size].to(device)
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + first_index + start)
        z = gen.sample(len(y), y, cfg_scale=cfg_scale, steps=steps or None, head_steps=head_steps or None, rng=g)
        if getattr(tok, "discrete", False):  # token ids: the diffusion decoder draws its noise from this batch's rng
            images = tok.decode(z, rng=g)
        else:
            images = tok.decode(tok.denormalize(z))
        out.append(images.float().clamp(-1, 1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def grid_labels(num_classes: int, per_class: int, max_classes: int = 10) -> torch.Tensor:
    """Labels for a grid: `per_class` samples of each of the first `max_classes` classes, one class per row."""
    k = min(num_classes, max_classes)
    return torch.arange(k).repeat_interleave(per_class)


def rank_batches(n: int, batch_size: int, rank: int, world: int) -> list[tuple[int, int]]:
    """(start, end) index ranges of the batches this rank samples: batch b goes to rank b % world."""
    batches = math.ceil(n / batch_size)
    return [(b * batch_size, min(n, (b + 1) * batch_size)) for b in range(rank, batches, world)]
