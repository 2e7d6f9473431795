"""Shared transformer blocks: SwiGLU MLP, attention on SDPA with optional RoPE, pre-norm ViT block.

Axis letters: B batch, N tokens, D width, H heads, d head dim (D = H * d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detok.nn.rope import apply_rope_table

RMS_EPS = 1e-6  # l-DeTok's RMSNorm epsilon


def swiglu_hidden(width: int, mlp_ratio: float = 4.0) -> int:
    """SwiGLU hidden size int(2/3 * ratio * D): keeps the parameter count of a GELU MLP of that ratio."""
    return int(2 / 3 * width * mlp_ratio)


class SwiGLU(nn.Module):
    """w3(silu(a) * b) with (a, b) = halves of w12(x)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)  # (B, N, hidden) each
        return self.w3(F.silu(a) * b)


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv, RoPE on q and k, PyTorch scaled-dot-product attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, D); rope a `rope_table` with rows for these tokens; attn_mask bool (B, 1, 1|N, N), True = attend."""
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1))  # (B, N, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, d)
        if rope is not None:
            q = apply_rope_table(q, rope)
            k = apply_rope_table(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); RMSNorm + SwiGLU."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(width, eps=RMS_EPS)
        self.attn = Attention(width, heads)
        self.norm2 = nn.RMSNorm(width, eps=RMS_EPS)
        self.mlp = SwiGLU(width, swiglu_hidden(width, mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) Linear/Conv weights and zero biases, as l-DeTok / MAE initialise."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
