"""Optimisation helpers shared by every training loop: per-step LR schedules and AdamW parameter groups."""

from __future__ import annotations

import math

import torch
from torch import nn

ADAMW_KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}


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


def split_decay(named: list[tuple[str, nn.Parameter]], wd: float, no_decay: list[str]) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on 1-D tensors and names containing `no_decay` words."""
    decay, plain = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (plain if p.ndim < 2 or any(w in name for w in no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": plain, "weight_decay": 0.0}]


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], kernel: str = "fused") -> torch.optim.AdamW:
    """torch AdamW over `groups` with the named kernel (ADAMW_KERNELS): the same update, another speed."""
    if kernel not in ADAMW_KERNELS:
        raise ValueError(f"unknown AdamW kernel {kernel!r}; choose from {', '.join(ADAMW_KERNELS)}")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **ADAMW_KERNELS[kernel])
