"""vqvit: the spatial VQ baseline, a ViT autoencoder with a VQ bottleneck and one token per patch.

The control of DDT-LLaMA's "language-likeness" analysis (arXiv 2504.14666: shuffling the order of DDT tokens
hurts a language model, shuffling spatial tokens barely does). It is DDT with the two things that make DDT
tokens ordered taken out, everything else kept:

- encoder: DDT's encoder trunk without the K queries (a ViT over the patches: learnable positions, pre-norm
  RMSNorm / SwiGLU blocks of `detok.nn.transformer`, a final RMSNorm), every patch output projected to
  `code_dim`: the tokens ARE the patches, K = (image_size / patch_size)^2;
- quantizer: DDT's, `detok.nn.quantize.TokenQuantizer` (EMA cosine codebook, or FSQ);
- decoder: a ViT of the same kind over the K code embeddings, regressing each patch's pixels (no diffusion, no
  token schedule, every token used at once);
- loss: MSE(recon, x) + the quantizer's commitment loss.

Ids leave and enter this class in raster order (row-major over the patch grid). They have no prefix order
(`prefix_order = False`): a truncated id sequence is not a coarse image, so reconstruction reports the full
decoding only (`detok.runs.reconstruct.reconstruct`).

Axis letters: B batch, H/W image height/width, P patch size, g = H / P the grid side, K = g * g tokens (one per
patch), D width, E code dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from detok.config import option
from detok.nn.quantize import QuantizerConfig, TokenQuantizer
from detok.nn.sizes import SIZES, size_of
from detok.nn.transformer import RMS_EPS, Block, init_vit_weights
from detok.registry import Family, register, register_family
from detok.tokenizers.base import DiscreteTokenizer


@dataclass
class SpatialVQConfig:
    """Architecture of the spatial VQ baseline; defaults are an l-DeTok-BB-sized ViT at 256 px (K = 256)."""

    image_size: int = 256
    patch_size: int = option(16, "patch side in pixels: one token per patch, K = (image_size / patch_size)^2", min=1)
    encoder_size: str = field(default="base", metadata={"help": "one of " + ", ".join(SIZES)})
    decoder_size: str = "base"
    mlp_ratio: float = 4.0
    quantizer: QuantizerConfig = option(factory=QuantizerConfig)


class _PatchViT(nn.Module):
    """The trunk of both halves: learnable positions over the g * g grid, pre-norm blocks, a final RMSNorm."""

    def __init__(self, size: str, grid: int, mlp_ratio: float) -> None:
        super().__init__()
        width, depth, heads = size_of(size)
        self.width = width
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(1, grid * grid, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.ln_post = nn.RMSNorm(width, eps=RMS_EPS)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K, D) in raster order -> (B, K, D)."""
        x = x + self.positional_embedding
        for blk in self.blocks:
            x = blk(x)
        return self.ln_post(x)


class SpatialVQEncoder(_PatchViT):
    """Patches -> ViT -> one continuous code-space vector per patch."""

    def __init__(self, cfg: SpatialVQConfig, grid: int) -> None:
        super().__init__(cfg.encoder_size, grid, cfg.mlp_ratio)
        self.patch = cfg.patch_size
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, self.width)
        self.to_code = nn.Linear(self.width, cfg.quantizer.code_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> h (B, K, E), before quantization."""
        patches = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=self.patch, p2=self.patch)  # (B, K, P*P*3)
        return self.to_code(self.run(self.patch_embed(patches)))  # (B, K, E)


class SpatialVQDecoder(_PatchViT):
    """Codes -> ViT -> each token's patch of pixels."""

    def __init__(self, cfg: SpatialVQConfig, grid: int) -> None:
        super().__init__(cfg.decoder_size, grid, cfg.mlp_ratio)
        self.patch, self.grid = cfg.patch_size, grid
        self.code_embed = nn.Linear(cfg.quantizer.code_dim, self.width)
        self.to_pixels = nn.Linear(self.width, 3 * cfg.patch_size**2)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, E) in raster order -> images (B, 3, H, W), unclamped."""
        pix = self.to_pixels(self.run(self.code_embed(codes)))  # (B, K, P*P*3)
        return rearrange(pix, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=self.grid, p1=self.patch, p2=self.patch)


class SpatialVQ(DiscreteTokenizer):
    """The spatial VQ tokenizer. `forward` is the training loss; `tokenize` / `detokenize` speak raster-order ids."""

    prefix_order = False  # raster ids: no prefix of them is a coarse image (DDT's AR ids are)
    token_order = "raster"

    def __init__(self, cfg: SpatialVQConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.encoder = SpatialVQEncoder(cfg, self.grid)
        self.quantizer = TokenQuantizer(cfg.quantizer)
        self.codebook_size = self.quantizer.codebook_size
        self.decoder = SpatialVQDecoder(cfg, self.grid)
        for part in (self.encoder, self.decoder):
            init_vit_weights(part)

    @property
    def num_tokens(self) -> int:
        """K = grid^2: one token per patch."""
        return self.grid * self.grid

    def forward(self, images: torch.Tensor, rng: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training losses on images (B, 3, H, W): {"loss", "mse", "commit"} and the ids (B, K) (raster order).

        Deterministic: `rng` is taken for the tokenizer-task contract (DDT draws t and noise from it)."""
        del rng
        q = self.quantizer(self.encoder(images))  # codes (B, K, E), ids (B, K)
        recon = self.decoder(q.codes)  # (B, 3, H, W)
        mse = F.mse_loss(recon.float(), images.float())
        return {"loss": mse + q.loss, "mse": mse.detach(), "commit": q.loss.detach(), "ids": q.ids.detach()}

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> ids (B, K) long in raster order; never updates the codebook."""
        was = self.training
        self.eval()
        ids = self.quantizer(self.encoder(images)).ids  # (B, K)
        self.train(was)
        return ids

    @torch.no_grad()
    def detokenize(self, ids: torch.Tensor, rng: torch.Generator | None = None, **_: Any) -> torch.Tensor:
        """Ids (B, K) in raster order -> images (B, 3, H, W); deterministic (`rng` and options do not apply)."""
        del rng
        self.check_ids(ids)
        return self.decoder(self.quantizer.codes_from_ids(ids))

    def usage(self, ids: torch.Tensor) -> dict[str, float]:
        """Codebook usage of ids (any shape): perplexity, used fraction, dead codes."""
        return TokenQuantizer.usage(ids, self.codebook_size)


# preset -> SpatialVQConfig fields; vqvit_mini matches ddt_mini's codebook (K 64: train the DDT at num_tokens=64)
PRESETS: dict[str, dict[str, Any]] = {
    "vqvit_tiny": {"image_size": 32, "patch_size": 8, "encoder_size": "tiny", "decoder_size": "tiny",
                   "quantizer": {"codebook_size": 64, "code_dim": 8}},  # K 16, as ddt_tiny
    "vqvit_mini": {"image_size": 32, "patch_size": 4, "encoder_size": "mini", "decoder_size": "mini",
                   "quantizer": {"codebook_size": 1024, "code_dim": 8}},  # K 64
}


def spatial_vq_config(name: str, **overrides) -> SpatialVQConfig:
    """The SpatialVQConfig of a registered preset with field overrides (`quantizer` as a dict of its fields)."""
    if name not in PRESETS:
        raise KeyError(f"unknown vqvit preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    fields = {**PRESETS[name], **overrides}
    if not isinstance(overrides.get("quantizer"), QuantizerConfig):
        fields["quantizer"] = QuantizerConfig(**{**PRESETS[name].get("quantizer", {}),
                                                 **(overrides.get("quantizer") or {})})
    return SpatialVQConfig(**fields)


register_family(Family(
    "tokenizer", "vqvit", "spatial VQ baseline: a ViT autoencoder with a VQ bottleneck, one token per patch "
    "(raster order)", recipe="quickstart_ddt", paper="baseline of arXiv 2504.14666 (language-likeness)",
    config=SpatialVQConfig, extra={"trainable": True, "tokens": "discrete"},
))


def _register(name: str) -> None:
    register("tokenizer", name, family="vqvit")(lambda **overrides: SpatialVQ(spatial_vq_config(name, **overrides)))


for _name in PRESETS:
    _register(_name)
