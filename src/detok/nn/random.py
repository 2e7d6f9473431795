"""Random draws from a caller's torch.Generator, on the generator's own device.

A torch.Generator can only draw on its own device. Every draw in the model layer therefore happens on
`rng.device` when an rng is given (a CPU generator gives the same numbers whatever device the model is
on) and is then moved to the target device; without an rng it happens on the target device from torch's
global generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def draw_device(rng: torch.Generator | None, device: torch.device | str | None) -> torch.device | str | None:
    """The device a draw for `device` happens on: the generator's if one is given, else `device`."""
    return rng.device if rng is not None else device


def randn(
    shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal noise of `shape` and `dtype` (None: the default dtype) on `device`, drawn from `rng`."""
    out = torch.randn(tuple(shape), generator=rng, device=draw_device(rng, device), dtype=dtype)
    return out.to(device)


def randn_like(x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise of x's shape, dtype and device, drawn from `rng` (see `randn`)."""
    return randn(x.shape, device=x.device, dtype=x.dtype, rng=rng)
