"""Blocks of the DiT family (DiT, SiT, LightningDiT): embedders, adaLN-Zero block, final layer, patchify.

The timestep embedder, `modulate` and the final layer are also those of the per-token diffusion head
(`detok.generators.diffloss`, MAR's SimpleMLPAdaLN), which builds them with the few-rows CPU
`detok.nn.linear.Linear`; parameter names are DiT's / MAR's either way.

"Scalable Diffusion Models with Transformers", Peebles & Xie, arXiv 2212.09748 (adaLN-Zero);
LightningDiT (Yao et al., arXiv 2501.01423) swaps in RMSNorm, SwiGLU, 2-D RoPE and optional QK-norm.

Axis letters: B batch, C channels, H/W latent height/width, h/w token grid, P patch size,
N = h*w tokens (row-major), D width, F frequency-embedding size, d head dim.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from detok.nn.rope import apply_rope_table
from detok.nn.transformer import RMS_EPS, Attention, SwiGLU, swiglu_hidden

LN_EPS = 1e-6  # DiT's LayerNorm epsilon (no affine: adaLN supplies scale and shift)
TIME_FREQ_DIM = 256  # DiT's sinusoidal timestep features
MAX_PERIOD = 10_000  # shortest frequency of the timestep and position features

Norm = Literal["layer", "rms"]
Mlp = Literal["gelu", "swiglu"]


# -- embedders ---------------------------------------------------------------------------------------


def timestep_features(
    t: torch.Tensor, dim: int = TIME_FREQ_DIM, max_period: float = MAX_PERIOD
) -> torch.Tensor:
    """Sinusoidal features [cos | sin] (B, F) of (possibly fractional) timesteps t (B,), as DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, F/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, F)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep t (B,) -> (B, D): sinusoidal features, then Linear-SiLU-Linear.

    `linear` is the Linear class of the MLP (nn.Linear, or the diffusion head's few-rows `Linear`).
    """

    def __init__(
        self, width: int, freq_dim: int = TIME_FREQ_DIM, linear: type[nn.Linear] = nn.Linear
    ) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(linear(freq_dim, width), nn.SiLU(), linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label y (B,) -> (B, D); row `num_classes` is the null class (dropping is Generator.drop_labels)."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, width)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


def sincos_1d(width: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin | cos] (M, width) of positions pos (M,), frequencies 1 / 10000^(k / (width/2))."""
    omega = 1.0 / MAX_PERIOD ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))  # (width/2,)
    out = pos.double()[:, None] * omega[None]  # (M, width/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (N, D) of an n x n grid (MAE / DiT): first half column, second half row."""
    if width % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {width}")
    coords = torch.arange(grid, dtype=torch.float64)
    rows = coords.repeat_interleave(grid)  # (N,) row of token r*n + c
    cols = coords.repeat(grid)  # (N,) column of token r*n + c
    return torch.cat([sincos_1d(width // 2, cols), sincos_1d(width // 2, rows)], dim=1).float()  # (N, D)


# -- patches -----------------------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> tokens (B, N, C*P*P); the (c p q) order equals a flattened Conv2d(k=P, s=P) weight."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=patch, q=patch)


def unpatchify_cpq(tokens: torch.Tensor, patch: int, grid_h: int) -> torch.Tensor:
    """Inverse of `patchify`: tokens (B, N, C*P*P) in (c p q) order -> (B, C, H, W) (MAR / AR latents)."""
    return rearrange(tokens, "b (h w) (c p q) -> b c (h p) (w q)", h=grid_h, p=patch, q=patch)


def unpatchify(tokens: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    """Tokens (B, N, P*P*C) in DiT's (p q c) order -> (B, C, H, W)."""
    return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=grid, w=grid, p=patch, q=patch)


# -- blocks ------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift.

    x (B, N, D) with shift and scale (B, D) shared by every token (DiT), or shift and scale of x's own
    shape: per-token conditions (B, N, D) (RasterAR / RandomAR) or rows (M, D) (the diffusion head).
    """
    if shift.ndim == x.ndim - 1:
        shift, scale = shift[:, None], scale[:, None]  # (B, 1, D): one condition for all N tokens
    return x * (1 + scale) + shift


def make_norm(kind: Norm, width: int) -> nn.Module:
    """DiT: LayerNorm without affine (eps 1e-6); LightningDiT: RMSNorm with a learnable gain."""
    if kind == "layer":
        return nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
    if kind == "rms":
        return nn.RMSNorm(width, eps=RMS_EPS)
    raise ValueError(f"unknown norm {kind!r}")


class GeluMlp(nn.Module):
    """fc2(gelu_tanh(fc1(x))), DiT's MLP."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class QKNormAttention(Attention):
    """Attention with RMSNorm on each head's q and k before RoPE (LightningDiT `qk_norm`)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.q_norm = nn.RMSNorm(width // heads, eps=RMS_EPS)
        self.k_norm = nn.RMSNorm(width // heads, eps=RMS_EPS)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ):
        """x (B, N, D) -> (B, N, D)."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)  # (B, H, N, d) each
        if rope is not None:
            q, k = apply_rope_table(q, rope), apply_rope_table(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class AdaLNBlock(nn.Module):
    """adaLN-Zero block: x + gate * f(modulate(norm(x), shift, scale)) for attention, then the MLP.

    DiT: LayerNorm, GELU-tanh MLP. LightningDiT: RMSNorm, SwiGLU, RoPE, optional QK-norm.
    Six modulation vectors per block come from the condition c (B, D); zero-initialised, the block
    starts as the identity.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        norm: Norm = "layer",
        mlp: Mlp = "gelu",
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, width)
        self.attn = QKNormAttention(width, heads) if qk_norm else Attention(width, heads)
        self.norm2 = make_norm(norm, width)
        if mlp == "gelu":
            self.mlp: nn.Module = GeluMlp(width, int(width * mlp_ratio))
        elif mlp == "swiglu":
            self.mlp = SwiGLU(width, swiglu_hidden(width, mlp_ratio))
        else:
            raise ValueError(f"unknown mlp {mlp!r}")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, D), condition c (B, D) or per token (B, N, D), rope a `rope_table` or None, attn_mask bool
        (B, 1, 1|N, N) True = attend, or None -> (B, N, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x (B[, N], D)
        if c.ndim == 2:
            gate1, gate2 = gate1[:, None], gate2[:, None]  # (B, 1, D): one condition for all N tokens
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope, attn_mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated norm, then a linear map of each token to its output: its patch (DiT) or [eps | v] (head).

    `linear` is the Linear class (nn.Linear, or the diffusion head's few-rows `Linear`).
    """

    def __init__(
        self, width: int, out_dim: int, norm: Norm = "layer", linear: type[nn.Linear] = nn.Linear
    ) -> None:
        super().__init__()
        self.norm_final = make_norm(norm, width)
        self.linear = linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) and c (B, D) -> (B, N, out); or rows x (M, D) and c (M, D) -> (M, out)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))
