"""2-D rotary position embedding (RoPE) for square token grids.

Axis letters: B batch, H heads, N tokens (row-major over an n x n grid), d head dim.

A head of dim d is split in two halves: the first rotates with the token's row coordinate, the
second with its column coordinate, each over d/4 log-spaced frequencies from `max_freq` down to
`min_freq` (times 2 pi), coordinates in [0, 1] (`linspace(0, 1, n)`), as in l-DeTok.

Two table layouts:
- "rotation" (default): both members of an interleaved pair (2i, 2i+1) share one angle, so the
  map is a true rotation and q.k depends only on the relative offset of the two tokens.
- "upstream": l-DeTok's released table, angles laid out in concatenated halves while the rotation
  pairs interleaved neighbours; not a rotation, not relative-position invariant. Only for loading
  upstream checkpoints with identical outputs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

RopeLayout = Literal["rotation", "upstream"]

ROPE_MAX_FREQ = 7.0  # upstream `max_freq`
ROPE_MIN_FREQ = 7e-4  # upstream `min_freq`


def rope_angles(grid: int, head_dim: int, layout: RopeLayout = "rotation") -> torch.Tensor:
    """Angles theta (N, d) for an n x n grid, in the given table layout."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    q = head_dim // 4
    # f_j = max * (min/max)^(j/(q-1)), j = 0..q-1 (a single frequency when q == 1)
    expo = torch.linspace(0.0, -1.0, q, dtype=torch.float64) if q > 1 else torch.zeros(1, dtype=torch.float64)
    freqs = ROPE_MAX_FREQ * (ROPE_MAX_FREQ / ROPE_MIN_FREQ) ** expo * 2 * math.pi  # (q,)
    coords = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    rows = coords.repeat_interleave(grid)  # (N,) row coordinate of token r*n + c
    cols = coords.repeat(grid)  # (N,) column coordinate
    if layout == "rotation":
        row_theta = (rows[:, None] * freqs).repeat_interleave(2, dim=1)  # (N, d/2): pairs share an angle
        col_theta = (cols[:, None] * freqs).repeat_interleave(2, dim=1)  # (N, d/2)
    elif layout == "upstream":
        g = torch.cat([freqs, freqs])  # (d/2,) concatenated halves
        row_theta = rows[:, None] * g  # (N, d/2)
        col_theta = cols[:, None] * g  # (N, d/2)
    else:
        raise ValueError(f"unknown RoPE layout {layout!r}")
    return torch.cat([row_theta, col_theta], dim=1).float()  # (N, d)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last dim."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., d/2, 2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., d)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, d) with cos/sin broadcastable to it, e.g. (N, d) or (B, 1, N, d): any table layout."""
    return x * cos + rotate_pairs(x) * sin


def rope_table(grid: int, head_dim: int, layout: RopeLayout = "rotation") -> torch.Tensor:
    """The table `apply_rope_table` takes: complex e^(i theta) (N, d/2) for a rotation, else [cos | sin] (N, 2d)."""
    theta = rope_angles(grid, head_dim, layout)  # (N, d)
    if layout == "rotation":
        return torch.polar(torch.ones_like(theta[:, ::2]), theta[:, ::2])  # one angle per interleaved pair
    return torch.cat([theta.cos(), theta.sin()], dim=-1)


def apply_rope_table(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, d) rotated by a `rope_table` (rows broadcastable: (N, .) or (B, 1, N, .)).

    A true rotation runs as one complex multiply per pair (about 2.5x faster than cos/sin on CPU);
    the upstream layout needs the general x * cos + rot(x) * sin.
    """
    if table.is_complex():
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (B, H, N, d/2)
        return torch.view_as_real(pairs * table).flatten(-2).to(x.dtype)  # (B, H, N, d)
    cos, sin = table.chunk(2, dim=-1)
    return apply_rope(x, cos, sin)
