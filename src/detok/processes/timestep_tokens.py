"""Diffusion-timestep token schedules (DDT-LLaMA arXiv 2504.14666, Selftok arXiv 2505.07538).

Conventions, stated once for all of detok (those of the released Selftok code):

- Flow time: x_t = (1 - t) x0 + t eps, so **t = 1 is pure noise** and t = 0 the clean input.
- **Code order**: index 0..K-1 of the tokenizer's query tokens. At noise level t the decoder sees the code
  indices i < `visible_count(t)`: one token near t = 0, all K at t = 1. A token is visible at every t above
  the moment it appears, so low indices carry what little noise destroys (fine detail) and high indices what
  only heavy noise destroys (layout, tone).
- **AR order** = reversed code order (coarse first): AR position p holds code index K - 1 - p. Language
  models read and write AR order; the first j AR tokens are the code indices K - j .. K - 1.

`visible_count` is the one map from t to the number of visible code indices; `ar_order` / `code_order` are
the one conversion between the two orders.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["uniform", "piecewise", "all"]
SCHEDULES: tuple[str, ...] = ("uniform", "piecewise", "all")

# The released 512-token Selftok schedule: stage boundaries in flow t and tokens per stage (sum 512).
PIECEWISE_STAGES = (0.2, 0.4, 0.6, 0.8, 1.0)
PIECEWISE_TOKENS_512 = (192, 184, 72, 48, 16)


def stage_tokens(num_tokens: int) -> tuple[int, ...]:
    """The released per-stage token counts scaled to K tokens (largest remainders; each stage >= 1 when K >= 5)."""
    if num_tokens < len(PIECEWISE_STAGES):
        raise ValueError(f"the piecewise schedule needs at least {len(PIECEWISE_STAGES)} tokens, got {num_tokens}")
    raw = [n * num_tokens / sum(PIECEWISE_TOKENS_512) for n in PIECEWISE_TOKENS_512]
    counts = [max(1, math.floor(r)) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
    i = 0
    while sum(counts) < num_tokens:  # hand the missing tokens to the largest remainders
        counts[by_remainder[i % len(raw)]] += 1
        i += 1
    while sum(counts) > num_tokens:  # (only when the max(1, .) floor added some) take from the largest stage
        counts[counts.index(max(counts))] -= 1
    return tuple(counts)


def visible_count(t: torch.Tensor, num_tokens: int, schedule: Schedule = "uniform") -> torch.Tensor:
    """Number of visible code indices (B,) long in [1, K] at flow times t (B,) in [0, 1].

    uniform: k(t) = min(floor(t K), K - 1) + 1 (Selftok's `arange(K) <= floor(t K)`);
    piecewise: the released stages scaled to K, linear inside each stage;
    all: K at every t (the control without timestep structure).
    """
    k = num_tokens
    t = t.to(torch.float64).clamp(0.0, 1.0)
    if schedule == "all":
        return torch.full(t.shape, k, dtype=torch.long, device=t.device)
    if schedule == "uniform":
        return (t * k).floor().long().clamp(max=k - 1) + 1
    if schedule == "piecewise":
        counts = stage_tokens(k)
        index = torch.zeros(t.shape, dtype=torch.float64, device=t.device)
        start, before = 0.0, 0
        for end, n in zip(PIECEWISE_STAGES, counts):
            inside = (t >= start) & ((t < end) | (end == PIECEWISE_STAGES[-1]))
            index = torch.where(inside, before + (t - start) / (end - start) * n, index)
            start, before = end, before + n
        return index.floor().long().clamp(max=k - 1) + 1
    raise ValueError(f"unknown token schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def appear_time(num_tokens: int, schedule: Schedule = "uniform", grid: int = 100_000) -> torch.Tensor:
    """(K,) the smallest t at which each code index is visible (on a fine grid of t; 0 for the 'all' control)."""
    t = torch.linspace(0.0, 1.0, grid + 1, dtype=torch.float64)
    counts = visible_count(t, num_tokens, schedule)  # (grid + 1,) nondecreasing
    first = torch.searchsorted(counts, torch.arange(1, num_tokens + 1), side="left")  # (K,)
    return t[first.clamp(max=grid)]


def ar_order(code_ids: torch.Tensor) -> torch.Tensor:
    """(..., K) ids in code order -> AR order (coarse first): position p holds code index K - 1 - p."""
    return code_ids.flip(-1)


def code_order(ar_ids: torch.Tensor) -> torch.Tensor:
    """(..., K) ids in AR order -> code order (the inverse of `ar_order`, the same flip)."""
    return ar_ids.flip(-1)


def prefix_lengths(num_tokens: int) -> list[int]:
    """The truncated-prefix lengths j of the prefix curve: 0, K/8, K/4, K/2, K (distinct, sorted)."""
    return sorted({0, num_tokens // 8, num_tokens // 4, num_tokens // 2, num_tokens})


def prefix_mask(num_tokens: int, known: int, device: torch.device | None = None) -> torch.Tensor:
    """(K,) bool over code indices: True for the first `known` tokens in AR order (code indices >= K - known)."""
    if not 0 <= known <= num_tokens:
        raise ValueError(f"a prefix of {known} tokens does not fit K = {num_tokens}")
    return torch.arange(num_tokens, device=device) >= num_tokens - known
