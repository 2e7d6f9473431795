"""Classifier-free guidance wrappers shared by the generators (our own code).

Convention of `cfg_fn` (that of DiT / SiT / MAR / LightningDiT `forward_with_cfg`):

- The caller runs its sampler on a doubled batch x = [x_c; x_u] (B = 2n) with labels y = [y; y_null].
  Only the first half of x is used: the network is called on [x_c; x_c], so the second half of the state
  may drift (it sees its own sampler noise) without effect, and the caller keeps the first n samples.
- out = model_fn([x_c; x_c], t, y) splits into cond (first n) and uncond (last n). The guided channels
  g = uncond + s (cond - uncond) replace those channels in BOTH halves; other channels stay as computed
  (cond in the first half, uncond in the second).
- Guided channels: all of them; for learned-sigma outputs (2C channels for a C-channel x) the eps half
  only, the first half keeping the conditional sigma; with `channels=k`, the first k only (DiT's
  "first 3 channels" quirk; a named flag in the generators, off by default).
- `scale` is a float or a function of the first-half times t[:n] returning a float or a (n,) tensor.
- `interval=(lo, hi)`: guidance where lo <= t <= hi (per sample, closed interval, in the units of the
  t the sampler passes: step indices for DDPM, [0, 1] with t = 1 data for flows); elsewhere the guided
  channels take the conditional prediction. LightningDiT's "no guidance for t < 0.1" is interval=(0.1, 1.0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

GuidedFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def cfg_fn(
    model_fn: GuidedFn,
    scale: float | Callable[[Tensor], float | Tensor],
    *,
    channels: int | None = None,
    interval: tuple[float, float] | None = None,
) -> GuidedFn:
    """Wrap model_fn(x, t, y) on a doubled batch into its classifier-free-guided version (see module doc)."""

    def guided(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        n = x.shape[0] // 2
        half = x[:n]
        out = model_fn(torch.cat([half, half]), t, y)  # (2n, C_out, ...)
        cond, uncond = out[:n], out[n:]
        c_in, c_out = half.shape[1], out.shape[1]
        k = c_in if c_out == 2 * c_in else c_out  # learned sigma: guide the eps half only
        if channels is not None:
            k = min(channels, k)
        t_half = t[:n] if t.ndim > 0 else t.expand(n)  # (n,)
        s = scale(t_half) if callable(scale) else scale
        s = torch.as_tensor(s, dtype=out.dtype, device=out.device)
        if s.ndim == 1:
            s = s.view(-1, *([1] * (out.ndim - 1)))  # (n, 1, ...)
        g = uncond[:, :k] + s * (cond[:, :k] - uncond[:, :k])  # (n, k, ...)
        if interval is not None:
            lo, hi = interval
            inside = ((t_half >= lo) & (t_half <= hi)).view(-1, *([1] * (out.ndim - 1)))
            g = torch.where(inside, g, cond[:, :k])
        return torch.cat([torch.cat([g, g]), out[:, k:]], dim=1)  # (2n, C_out, ...)

    return guided


def linear_cfg(scale: float, progress: float) -> float:
    """Linearly ramped guidance 1 + (scale - 1) * progress, progress in [0, 1] (MAR / AR schedules)."""
    return 1 + (scale - 1) * progress
