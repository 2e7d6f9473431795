"""Per-step learning-rate schedules."""

from __future__ import annotations

import math


def lr_at(step: int, base: float, total: int, warmup: int, kind: str = "cosine", min_lr: float = 0.0) -> float:
    """Linear warmup over `warmup` steps, then half-cosine from `base` to `min_lr` at `total` (or constant)."""
    if warmup > 0 and step < warmup:
        return base * step / warmup
    if kind == "constant":
        return base
    if kind != "cosine":
        raise ValueError(f"unknown lr schedule {kind!r}")
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
