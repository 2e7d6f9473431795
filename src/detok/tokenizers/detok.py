"""l-DeTok: a ViT autoencoder trained to reconstruct clean images from corrupted latents.

"Latent Denoising Makes Good (Visual) Tokenizers", Yang et al., arXiv 2507.15856.

Training-time corruption (off in eval mode):
- random-ratio masking: m = max(0, U(mask_low, M)); the encoder sees the visible patches only and
  the decoder fills dropped positions with a learnable mask token;
- latent noise on the visible latents: interpolative z' = (1 - tau) z + tau * gamma * eps (default)
  or additive z' = z + tau * gamma * eps, tau per sample from U(0, 1) or logit-normal.

Not in the paper: `decoder_noise_cond` tells the decoder the noise level tau of its input (an embedding of tau
added to every token; tau = 0 at inference), one mitigation of the train / inference mismatch.

Axis letters: B batch, N = n*n tokens (row-major grid), L visible tokens, D width, C latent channels,
P patch size, d head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from detok.nn.dit_blocks import TimestepEmbedder
from detok.nn.rope import RopeLayout, rope_table
from detok.nn.sizes import SIZE_SUFFIXES, SIZES, size_of
from detok.nn.transformer import RMS_EPS, Block, init_vit_weights
from detok.registry import Family, register, register_family
from detok.tokenizers.base import DiagonalGaussian, Tokenizer

# Encoder / decoder sizes are the rows of detok.nn.sizes.SIZES (upstream SIZE_DICT plus CPU-sized tiny / mini);
# `SIZES` stays importable from here (detok.tokenizers.upstream, runs.convert).


@dataclass
class DetokConfig:
    """Architecture and training-time corruption of l-DeTok; defaults are the paper's detok_BB."""

    encoder_size: str = field(default="base", metadata={"help": "one of " + ", ".join(SIZES)})
    decoder_size: str = "base"
    encoder_heads: int = field(default=0, metadata={"help": "encoder attention heads; 0 = the size's (SIZES)"})
    decoder_heads: int = field(default=0, metadata={"help": "decoder attention heads; 0 = the size's (SIZES)"})
    image_size: int = 256
    patch_size: int = 16
    latent_dim: int = 16
    mlp_ratio: float = 4.0
    rope_layout: RopeLayout = field(
        default="rotation", metadata={"help": "'upstream' reproduces the released table layout (not a rotation)"}
    )
    noise: Literal["interpolative", "additive", "none"] = "interpolative"
    gamma: float = field(default=3.0, metadata={"help": "noise scale; paper 3.0 (upstream CLI default 0)"})
    tau: Literal["uniform", "logit_normal"] = "uniform"
    tau_mean: float = 0.8  # logit-normal location (paper v2)
    tau_std: float = 1.0
    mask_ratio: float = field(default=0.7, metadata={"help": "M in m = max(0, U(mask_low, M)); 0 disables"})
    mask_low: float = -0.1
    mask_per_sample: bool = field(
        default=False, metadata={"help": "draw m per sample; upstream draws one m per batch (per rank)"}
    )
    decoder_noise_cond: bool = field(
        default=False,
        metadata={"help": "tell the decoder the noise level tau (0 at inference); not in the paper, off = paper"},
    )


class _ViT(nn.Module):
    """Shared trunk: learnable positions, RMSNorm, blocks with 2-D RoPE, RMSNorm.

    Built at the named `size` of `SIZES`, with `heads` attention heads (0: the size's own count).
    """

    def __init__(self, cfg: DetokConfig, size: str, heads: int = 0) -> None:
        super().__init__()
        width, depth, size_heads = size_of(size)
        heads = heads or size_heads
        grid = cfg.image_size // cfg.patch_size
        self.width, self.grid, self.heads = width, grid, heads
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(1, grid * grid, width))
        self.ln_pre = nn.RMSNorm(width, eps=RMS_EPS)
        self.blocks = nn.ModuleList(Block(width, heads, cfg.mlp_ratio) for _ in range(depth))
        self.ln_post = nn.RMSNorm(width, eps=RMS_EPS)
        self.set_rope_layout(cfg.rope_layout)

    def set_rope_layout(self, layout: RopeLayout) -> None:
        """(Re)build the RoPE tables; they are derived, so not saved in checkpoints."""
        width = self.positional_embedding.shape[-1]
        # Derived, never saved, and kept out of buffers so that DDP broadcasts and dtype casts leave it alone.
        self._rope_cpu = rope_table(self.grid, width // self.heads, layout)
        self._rope_dev: dict[torch.device, torch.Tensor] = {}

    def run(self, x: torch.Tensor, keep_idx: torch.Tensor | None, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Blocks over x (B, L, D) whose tokens sit at grid positions keep_idx (B, L) (None: all N, in order)."""
        rope = self._rope_dev.get(x.device)  # (N, .)
        if rope is None:
            rope = self._rope_dev[x.device] = self._rope_cpu.to(x.device)
        if keep_idx is not None:
            rope = rope[keep_idx][:, None]  # (B, 1, L, .)
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x, rope, attn_mask)
        return self.ln_post(x)


class DetokEncoder(_ViT):
    """Patchify, add positions, keep visible tokens, transformer, project to posterior moments (2C)."""

    def __init__(self, cfg: DetokConfig) -> None:
        super().__init__(cfg, cfg.encoder_size, cfg.encoder_heads)
        width = self.width
        self.patch_embed = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size)
        self.latent_head = nn.Linear(width, 2 * cfg.latent_dim)

    def forward(
        self, images: torch.Tensor, keep_idx: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images (B, 3, H, W) -> moments (B, L, 2C) of the kept tokens (all N when keep_idx is None)."""
        x = rearrange(self.patch_embed(images), "b d h w -> b (h w) d") + self.positional_embedding  # (B, N, D)
        if keep_idx is not None:
            x = x.gather(1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))  # (B, L, D)
        return self.latent_head(self.run(x, keep_idx, attn_mask))  # (B, L, 2C)


class DetokDecoder(_ViT):
    """Embed latents, fill masked positions with a mask token, transformer, unpatchify, 3x3 conv."""

    def __init__(self, cfg: DetokConfig) -> None:
        super().__init__(cfg, cfg.decoder_size, cfg.decoder_heads)
        width = self.width
        self.patch = cfg.patch_size
        self.decoder_embed = nn.Linear(cfg.latent_dim, width)
        self.mask_token = nn.Parameter(width**-0.5 * torch.randn(1, 1, width))
        self.to_pixels = nn.Linear(width, cfg.patch_size**2 * 3)  # upstream: 1x1 conv `ffn.1`
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)
        # tau in [0, 1] is embedded at the DiT timestep scale (x 1000) so the sinusoid's frequencies resolve it
        self.noise_embed = TimestepEmbedder(width) if cfg.decoder_noise_cond else None

    def forward(
        self,
        z: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        tau: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z (B, L, C) at positions keep_idx (B, L), mask (B, N) True = dropped, noise levels tau (B,) (None: 0;
        read only with `decoder_noise_cond`) -> images (B, 3, H, W)."""
        x = self.decoder_embed(z)  # (B, L, D)
        if keep_idx is not None:
            b, _, width = x.shape
            full = x.new_zeros(b, self.grid * self.grid, width)  # (B, N, D)
            full = full.scatter(1, keep_idx[..., None].expand(-1, -1, width), x)
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), full)  # (B, N, D)
        if self.noise_embed is not None:
            tau = z.new_zeros(z.shape[0]) if tau is None else tau  # (B,)
            x = x + self.noise_embed(1000 * tau)[:, None].to(x.dtype)  # (B, N, D) + (B, 1, D)
        x = self.run(x + self.positional_embedding, None, None)  # (B, N, D)
        pix = self.to_pixels(x)  # (B, N, P*P*3)
        img = rearrange(pix, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=self.grid, p1=self.patch, p2=self.patch)
        return self.conv_out(img)


@dataclass
class Corruption:
    """What the training-time corruption drew for one batch (for logging and tests)."""

    mask: torch.Tensor | None  # (B, N) bool, True = dropped; None = no masking
    mask_ratio: torch.Tensor  # (B,) drawn ratios m
    tau: torch.Tensor  # (B,) noise levels (zeros when noise is off)
    mean_std: torch.Tensor | None = None  # () std of the posterior means over the batch (the latents' scale)


class DeTok(Tokenizer):
    """l-DeTok tokenizer. `forward` trains (corruption in train mode); `encode`/`decode` never corrupt."""

    def __init__(self, cfg: DetokConfig) -> None:
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        super().__init__(cfg.latent_dim, cfg.image_size // cfg.patch_size)
        self.cfg = cfg
        self.encoder = DetokEncoder(cfg)
        self.decoder = DetokDecoder(cfg)
        for part in (self.encoder, self.decoder):
            init_vit_weights(part)
        if self.decoder.noise_embed is not None:  # starts as the paper's decoder: the embedding adds zero
            nn.init.zeros_(self.decoder.noise_embed.mlp[-1].weight)

    # -- corruption --------------------------------------------------------------------------------
    def draw_mask(self, batch: int, device: torch.device, rng: torch.Generator | None = None, strength: float = 1.0):
        """Random-ratio masking: (keep_idx (B, L), mask (B, N), attn_mask or None, ratios (B,)) or Nones.

        `strength` in [0, 1] scales the drawn ratios (the corruption anneal; 1 = the recipe's)."""
        cfg, n_tok = self.cfg, self.latent_grid**2
        draws = batch if cfg.mask_per_sample else 1
        u = torch.rand(draws, generator=rng, device=device, dtype=torch.float64)
        ratio = (cfg.mask_low + (cfg.mask_ratio - cfg.mask_low) * u).clamp_min(0.0).expand(batch)  # (B,)
        if strength != 1.0:
            ratio = ratio * strength
        if cfg.mask_ratio <= 0:
            return None, None, None, ratio.float()
        len_keep = torch.ceil(n_tok * (1.0 - ratio)).long().clamp(1, n_tok)  # (B,)
        order = torch.rand(batch, n_tok, generator=rng, device=device).argsort(dim=1)  # (B, N)
        if bool((len_keep == n_tok).all()):
            return None, None, None, ratio.float()
        keep = int(len_keep.max())
        keep_idx = order[:, :keep]  # (B, L)
        valid = torch.arange(keep, device=device)[None] < len_keep[:, None]  # (B, L)
        mask = torch.ones(batch, n_tok, dtype=torch.bool, device=device).scatter(1, keep_idx, ~valid)  # (B, N)
        attn_mask = None if bool(valid.all()) else valid[:, None, None, :]  # (B, 1, 1, L) keys to attend
        return keep_idx, mask, attn_mask, ratio.float()

    def draw_tau(self, batch: int, device: torch.device, rng: torch.Generator | None = None) -> torch.Tensor:
        """Noise levels tau (B,) from U(0, 1) or logit-normal(tau_mean, tau_std)."""
        if self.cfg.tau == "uniform":
            return torch.rand(batch, generator=rng, device=device)
        g = torch.randn(batch, generator=rng, device=device)
        return torch.sigmoid(self.cfg.tau_mean + self.cfg.tau_std * g)

    def add_noise(self, z: torch.Tensor, tau: torch.Tensor, rng: torch.Generator | None = None):
        """z (B, L, C) -> interpolative (1 - tau) z + tau gamma eps, or additive z + tau gamma eps."""
        eps = self.cfg.gamma * torch.randn(z.shape, generator=rng, device=z.device, dtype=z.dtype)
        t = tau.to(z.dtype)[:, None, None]  # (B, 1, 1)
        if self.cfg.noise == "interpolative":
            return (1 - t) * z + t * eps
        return z + t * eps

    # -- training forward --------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, rng: torch.Generator | None = None, strength: float = 1.0):
        """Reconstruct images (B, 3, H, W) -> (recon, kl (scalar, batch mean), Corruption).

        Train mode: mask, sample the posterior, add latent noise. Eval mode: posterior mean, no corruption.
        `strength` in [0, 1] scales the drawn mask ratios and noise levels tau (1 = the recipe's; the
        training engine lowers it when `corruption_anneal` is on).
        """
        b, dev = images.shape[0], images.device
        corrupt = self.training
        keep_idx = mask = attn_mask = None
        ratio = torch.zeros(b, device=dev)
        if corrupt:
            keep_idx, mask, attn_mask, ratio = self.draw_mask(b, dev, rng, strength)
        post = DiagonalGaussian(self.encoder(images, keep_idx, attn_mask), dim=-1)  # over (B, L, 2C)
        kl = self._kl(post, attn_mask)
        z = post.sample(rng) if corrupt else post.mean  # (B, L, C)
        tau = torch.zeros(b, device=dev)
        if corrupt and self.cfg.noise != "none" and self.cfg.gamma > 0:
            tau = self.draw_tau(b, dev, rng) * strength  # (B,)
            z = self.add_noise(z, tau, rng)
        recon = self.decoder(z, keep_idx, mask, tau)
        return recon, kl, Corruption(mask, ratio, tau, post.mean.detach().float().std())

    @staticmethod
    def _kl(post: DiagonalGaussian, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Batch-mean KL summed over the (valid) visible tokens and channels."""
        kl = 0.5 * (post.mean.pow(2) + post.logvar.exp() - 1.0 - post.logvar)  # (B, L, C)
        if attn_mask is not None:
            kl = kl * attn_mask[:, 0, 0, :, None]  # drop padded slots of per-sample masking
        return kl.flatten(1).sum(1).mean()

    # -- Tokenizer interface -----------------------------------------------------------------------
    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> moments (B, 2C, h, w), no masking, no noise, in any mode."""
        tokens = self.encoder(images)  # (B, N, 2C)
        return rearrange(tokens, "b (h w) c -> b c h w", h=self.latent_grid)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, h, w) -> images (B, 3, H, W), unclamped."""
        return self.decoder(rearrange(latents, "b c h w -> b (h w) c"))

    def set_rope_layout(self, layout: RopeLayout) -> None:
        """Switch both RoPE tables (e.g. to 'upstream' for converted checkpoints)."""
        self.cfg.rope_layout = layout
        self.encoder.set_rope_layout(layout)
        self.decoder.set_rope_layout(layout)

    def freeze_encoder(self) -> None:
        """Decoder-only fine-tuning: the encoder stops learning (its latents become fixed)."""
        self.encoder.requires_grad_(False)


# preset name -> DetokConfig fields (upstream detok_{SS,SB,...,XLXL}, plus CPU-sized tiny / mini)
PRESETS: dict[str, dict] = {
    f"detok_{e}{d}": {"encoder_size": SIZE_SUFFIXES[e], "decoder_size": SIZE_SUFFIXES[d]}
    for e, d in [("s", "s"), ("s", "b"), ("b", "s"), ("b", "b"), ("b", "l"), ("l", "b"), ("l", "l"), ("xl", "xl")]
}
PRESETS["detok_tiny"] = {"encoder_size": "tiny", "decoder_size": "tiny", "image_size": 32, "patch_size": 8}
PRESETS["detok_mini"] = {"encoder_size": "mini", "decoder_size": "mini", "image_size": 32, "patch_size": 4}


def detok_config(name: str, **overrides) -> DetokConfig:
    """The DetokConfig of a registered preset with field overrides (no model built)."""
    if name not in PRESETS:
        raise KeyError(f"unknown tokenizer preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return DetokConfig(**{**PRESETS[name], **overrides})


register_family(Family(
    "tokenizer", "detok", "l-DeTok: ViT autoencoder trained to reconstruct clean images from noised, masked latents",
    recipe="quickstart_shapes", paper="arXiv 2507.15856", config=DetokConfig,
    extra={"trainable": True},
))


def _register(name: str) -> None:
    register("tokenizer", name, family="detok")(lambda **overrides: DeTok(detok_config(name, **overrides)))


for _name in PRESETS:
    _register(_name)
