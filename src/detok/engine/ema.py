"""Exponential moving average of a module's parameters, kept by parameter name."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """ema = decay * ema + (1 - decay) * param, every step from step 0, for every parameter by name.

    Buffers (e.g. latent statistics) are not averaged: `copy_to` takes them from the live model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names, params = zip(*model.named_parameters())
        shadow = [self.shadow[n] for n in names]
        torch._foreach_lerp_(shadow, [p.detach().float() for p in params], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (same architecture)."""
        for n, p in model.named_parameters():
            p.copy_(self.shadow[n].to(p.dtype))
