"""DDT: discrete diffusion-timestep tokens (DDT-LLaMA arXiv 2504.14666; Selftok arXiv 2505.07538).

An image (pixels, or a frozen continuous tokenizer's normalised latents: the "input space") becomes K
discrete tokens whose order follows diffusion time:

- encoder: a ViT over the input's patches plus K learnable query tokens (each its own identity
  embedding), joint bidirectional attention, only the K query outputs kept and projected to `code_dim`;
- quantizer: `detok.nn.quantize.TokenQuantizer` (VQ with an EMA cosine codebook, or FSQ);
- decoder: a diffusion transformer trained by flow matching (x_t = (1 - t) x0 + t eps, velocity target
  eps - x0, t ~ U(0, 1)) with joint attention over the noisy input's patches and the token embeddings;
  an attention mask hides every code index >= `visible_count(t)` (detok.processes.timestep_tokens), and all
  tokens are hidden with probability `token_drop` (classifier-free guidance);
- decoding: Euler steps from t = 1 to 0 in which the visible set shrinks as t falls.

Conventions (code order, AR order, which end of t is noise) are those of `detok.processes.timestep_tokens`.
Ids leave and enter this class in AR order (coarse first), the order language models use.

Axis letters: B batch, C input channels, H/W input height/width, P patch size, N = (H/P)*(W/P) patches,
K query tokens, D width, E code dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from detok.config import option
from detok.nn.dit_blocks import AdaLNBlock, FinalLayer, TimestepEmbedder, sincos_pos_embed_2d
from detok.nn.quantize import QuantizerConfig, TokenQuantizer
from detok.nn.sizes import SIZES, size_of
from detok.nn.transformer import RMS_EPS, Block
from detok.processes.timestep_tokens import (
    SCHEDULES,
    Schedule,
    ar_order,
    code_order,
    prefix_mask,
    visible_count,
)
from detok.registry import Family, register, register_family
from detok.tokenizers.base import DiscreteTokenizer

TIME_SCALE = 1000.0  # the decoder embeds 1000 t, as DiT / Selftok embed integer-scale timesteps


@dataclass
class DDTConfig:
    """Architecture, token schedule and decoding of a DDT tokenizer; defaults are a Selftok-like ViT-B at 256 px."""

    image_size: int = 256
    patch_size: int = option(16, "patch of the input space (pixels, or the base tokenizer's latent grid)", min=1)
    base_tokenizer: str = option("", "a continuous tokenizer run to work on (its normalised latents); '' = pixels")
    num_tokens: int = option(512, "K, tokens per image", min=1)
    encoder_size: str = field(default="base", metadata={"help": "one of " + ", ".join(SIZES)})
    decoder_size: str = "base"
    encoder_heads: int = option(0, "0 = the size's", min=0)
    decoder_heads: int = option(0, "0 = the size's", min=0)
    mlp_ratio: float = 4.0
    quantizer: QuantizerConfig = option(factory=QuantizerConfig)
    schedule: Schedule = option("uniform", "token schedule k(t): uniform floor(tK) (default), piecewise (the released "
                                "512-token stages scaled to K), all (control: every token at every t)")
    continuous_steps: int = option(0, "train the first N steps on the encoder's unquantized (l2-normalised) outputs, "
                                   "then k-means-init the codebook on them (Selftok's `continuous` option)", min=0)
    token_drop: float = option(0.1, "probability that all tokens are hidden from the decoder (CFG)", min=0, max=1)
    sample_steps: int = option(50, "Euler steps of decoding (released: 50)", min=1)
    cfg_scale: float = option(1.0, "decoding guidance scale (released pipeline: 1 = none)", min=0)


class DDTEncoder(nn.Module):
    """Patches + K queries -> ViT with joint attention -> the K query outputs projected to code_dim."""

    def __init__(self, cfg: DDTConfig, channels: int, grid: int) -> None:
        super().__init__()
        width, depth, heads = size_of(cfg.encoder_size)
        heads = cfg.encoder_heads or heads
        self.patch = cfg.patch_size
        self.patch_embed = nn.Linear(channels * cfg.patch_size**2, width)
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(1, grid * grid, width))
        self.queries = nn.Parameter(width**-0.5 * torch.randn(1, cfg.num_tokens, width))  # one identity per token
        self.blocks = nn.ModuleList(Block(width, heads, cfg.mlp_ratio) for _ in range(depth))
        self.ln_post = nn.RMSNorm(width, eps=RMS_EPS)
        self.to_code = nn.Linear(width, cfg.quantizer.code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> h (B, K, E): continuous query outputs, before quantization."""
        patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=self.patch, p2=self.patch)  # (B, N, P*P*C)
        n = patches.shape[1]
        tokens = self.patch_embed(patches) + self.positional_embedding  # (B, N, D)
        seq = torch.cat([tokens, self.queries.expand(x.shape[0], -1, -1)], dim=1)  # (B, N + K, D)
        for blk in self.blocks:
            seq = blk(seq)
        return self.to_code(self.ln_post(seq[:, n:]))  # (B, K, E)


class DDTDecoder(nn.Module):
    """Velocity v(x_t, t | visible tokens): adaLN-Zero DiT over [patches of x_t; token embeddings], key mask."""

    def __init__(self, cfg: DDTConfig, channels: int, grid: int) -> None:
        super().__init__()
        width, depth, heads = size_of(cfg.decoder_size)
        heads = cfg.decoder_heads or heads
        self.patch, self.grid, self.channels = cfg.patch_size, grid, channels
        self.x_embed = nn.Linear(channels * cfg.patch_size**2, width)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, grid)[None], persistent=False)  # (1, N, D)
        self.token_embed = nn.Linear(cfg.quantizer.code_dim, width)
        self.token_pos = nn.Parameter(width**-0.5 * torch.randn(1, cfg.num_tokens, width))
        self.t_embedder = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(AdaLNBlock(width, heads, cfg.mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(width, channels * cfg.patch_size**2)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's init: xavier linears, zero adaLN modulations and output (each block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, codes: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """x_t (B, C, H, W), t (B,) in [0, 1], codes (B, K, E), visible (B, K) bool -> velocity (B, C, H, W)."""
        b = xt.shape[0]
        patches = rearrange(xt, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=self.patch, p2=self.patch)  # (B, N, P*P*C)
        n = patches.shape[1]
        x = self.x_embed(patches) + self.pos_embed.to(patches.dtype)  # (B, N, D)
        tok = self.token_embed(codes) + self.token_pos  # (B, K, D)
        seq = torch.cat([x, tok], dim=1)  # (B, N + K, D)
        keys = torch.cat([visible.new_ones(b, n), visible], dim=1)  # (B, N + K): patches always attendable
        attn_mask = keys[:, None, None, :]  # (B, 1, 1, N + K)
        c = self.t_embedder(t * TIME_SCALE)  # (B, D)
        for blk in self.blocks:
            seq = blk(seq, c, attn_mask=attn_mask)
        out = self.final_layer(seq[:, :n], c)  # (B, N, P*P*C)
        return rearrange(out, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=self.grid, p1=self.patch, p2=self.patch)


class DDT(DiscreteTokenizer):
    """The DDT tokenizer. `forward` is the training loss; `tokenize` / `detokenize` speak AR-order ids."""

    def __init__(self, cfg: DDTConfig) -> None:
        super().__init__()
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"unknown token schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        self.cfg = cfg
        self.base = self._load_base(cfg.base_tokenizer, cfg.image_size)
        if self.base is None:
            channels, side = 3, cfg.image_size
        else:
            channels, side = self.base.latent_channels, self.base.latent_grid
        if side % cfg.patch_size:
            raise ValueError(f"input side {side} is not a multiple of patch_size {cfg.patch_size}")
        grid = side // cfg.patch_size
        self.input_shape = (channels, side, side)
        self.num_tokens = cfg.num_tokens
        self.encoder = DDTEncoder(cfg, channels, grid)
        self.quantizer = TokenQuantizer(cfg.quantizer)
        self.codebook_size = self.quantizer.codebook_size
        self.decoder = DDTDecoder(cfg, channels, grid)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # training forwards seen (saved)

    @staticmethod
    def _load_base(path: str, image_size: int):
        """The frozen continuous tokenizer DDT works on (its weights are saved with DDT's), or None for pixels."""
        if not path:
            return None
        from detok.tokenizers.load import (
            load_tokenizer,  # a run folder; imported here: load.py imports this file
        )

        base = load_tokenizer(path).eval().requires_grad_(False)
        if getattr(base, "discrete", False):
            raise ValueError(f"base_tokenizer {path} is discrete; DDT works on pixels or continuous latents")
        size = getattr(getattr(base, "cfg", None), "image_size", image_size)
        if size != image_size:
            raise ValueError(f"base_tokenizer {path} takes {size} px images, the DDT config says {image_size}")
        return base

    # -- input space ---------------------------------------------------------------------------------
    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> the input space (B, C, H', W'): pixels, or normalised base latents."""
        if self.base is None:
            return images
        with torch.no_grad():
            return self.base.normalize(self.base.encode(images))

    def from_input(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_input`: pixels as they are, or the base tokenizer's decoding of denormalised latents."""
        if self.base is None:
            return x
        return self.base.decode(self.base.denormalize(x))

    def train(self, mode: bool = True) -> DDT:
        super().train(mode)
        if self.base is not None:
            self.base.eval()  # frozen: never in train mode (no corruption, fixed statistics)
        return self

    # -- training --------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, rng: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training losses on images (B, 3, H, W): {"loss", "flow", "commit"} and the ids (B, K) (code order)."""
        x0 = self.to_input(images)  # (B, C, H, W)
        b, dev = x0.shape[0], x0.device
        h = self.encoder(x0)  # (B, K, E)
        if self.training:
            self.train_steps += 1
        warmup = self.cfg.continuous_steps > 0 and int(self.train_steps) <= self.cfg.continuous_steps  # (host sync)
        if self.training and warmup:
            # warm-up without quantization: the decoder learns to read the tokens before the codebook is made
            codes, ids, commit = F.normalize(h, dim=-1), h.new_zeros(h.shape[:2], dtype=torch.long), h.new_zeros(())
        else:
            q = self.quantizer(h)  # codes (B, K, E), ids (B, K)
            codes, ids, commit = q.codes, q.ids, q.loss
        t = torch.rand(b, generator=rng, device=dev)  # (B,) t ~ U(0, 1), t = 1 noise
        eps = torch.randn(x0.shape, generator=rng, device=dev, dtype=x0.dtype)
        tb = t.to(x0.dtype)[:, None, None, None]  # (B, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * eps
        visible = self.visible(t)  # (B, K)
        drop = torch.rand(b, generator=rng, device=dev) < self.cfg.token_drop  # (B,) CFG: hide every token
        visible = visible & ~drop[:, None]
        v = self.decoder(xt, t, codes, visible)
        flow = F.mse_loss(v.float(), (eps - x0).float())
        return {"loss": flow + commit, "flow": flow.detach(), "commit": commit.detach(), "ids": ids.detach()}

    def visible(self, t: torch.Tensor) -> torch.Tensor:
        """(B, K) bool: the code indices the decoder may see at times t (B,)."""
        count = visible_count(t, self.num_tokens, self.cfg.schedule)  # (B,)
        return torch.arange(self.num_tokens, device=t.device)[None] < count[:, None]

    # -- tokens ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> ids (B, K) long in AR order (coarse first); never updates the codebook."""
        was = self.training
        self.eval()
        ids = self.quantizer(self.encoder(self.to_input(images))).ids  # (B, K) code order
        self.train(was)
        return ar_order(ids)

    @torch.no_grad()
    def detokenize(
        self,
        ids: torch.Tensor,
        rng: torch.Generator | None = None,
        *,
        known: int | None = None,
        given: torch.Tensor | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Ids (B, K) in AR order -> images (B, 3, H, W), by `steps` Euler steps from t = 1 to 0.

        known: decode from the first `known` AR tokens only (the coarse ones); the others are hidden at every t,
        so `known = 0` is the unconditional decoder. given: instead of `known`, a (K,) bool mask over AR
        positions of the tokens decoded from (e.g. the last j: the fine tokens without the coarse ones).
        cfg_scale: guidance against the all-hidden prediction.
        """
        self.check_ids(ids)
        k = self.num_tokens
        if given is not None and known is not None:
            raise ValueError("pass either known (a prefix length) or given (a mask over AR positions), not both")
        if given is not None and tuple(given.shape) != (k,):
            raise ValueError(f"given must be a (K,) = ({k},) mask over AR positions, got shape {tuple(given.shape)}")
        known = k if known is None else known
        steps = steps or self.cfg.sample_steps
        scale = self.cfg.cfg_scale if cfg_scale is None else cfg_scale
        codes = self.quantizer.codes_from_ids(code_order(ids))  # (B, K, E)
        b, dev = ids.shape[0], ids.device
        allowed = (prefix_mask(k, known, dev) if given is None else code_order(given.to(dev).bool()))[None]  # (1, K)
        x = torch.randn((b, *self.input_shape), generator=rng, device=dev, dtype=codes.dtype)  # x_1 = eps
        times = torch.linspace(1.0, 0.0, steps + 1, device=dev)
        for i in tqdm(range(steps), desc="decode", disable=not progress):
            t = times[i].expand(b)  # (B,)
            visible = self.visible(t) & allowed  # (B, K)
            v = self.decoder(x, t, codes, visible)
            if scale != 1.0:
                v_null = self.decoder(x, t, codes, torch.zeros_like(visible))
                v = v_null + scale * (v - v_null)
            x = x - (times[i] - times[i + 1]) * v  # Euler step towards t = 0
        return self.from_input(x)

    def usage(self, ids: torch.Tensor) -> dict[str, float]:
        """Codebook usage of ids (any shape): perplexity, used fraction, dead codes."""
        return TokenQuantizer.usage(ids, self.codebook_size)


# preset -> DDTConfig fields; the CPU sizes at 32 px, the paper-like ones at 256 px
PRESETS: dict[str, dict[str, Any]] = {
    "ddt_tiny": {"image_size": 32, "patch_size": 8, "num_tokens": 16, "encoder_size": "tiny", "decoder_size": "tiny",
                 "sample_steps": 10, "quantizer": {"codebook_size": 64, "code_dim": 8}},
    "ddt_mini": {"image_size": 32, "patch_size": 4, "num_tokens": 32, "encoder_size": "mini", "decoder_size": "mini",
                 "sample_steps": 25, "quantizer": {"codebook_size": 1024, "code_dim": 8}},
    "ddt_s": {"image_size": 256, "patch_size": 16, "num_tokens": 256, "encoder_size": "small",
              "decoder_size": "small", "quantizer": {"codebook_size": 8192, "code_dim": 16}},
    "ddt_b": {"image_size": 256, "patch_size": 16, "num_tokens": 512, "encoder_size": "base", "decoder_size": "base",
              "quantizer": {"codebook_size": 32768, "code_dim": 16}},
}


def ddt_config(name: str, **overrides) -> DDTConfig:
    """The DDTConfig of a registered preset with field overrides (`quantizer` as a dict of its fields)."""
    if name not in PRESETS:
        raise KeyError(f"unknown DDT preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    fields = {**PRESETS[name], **overrides}
    quant = {**PRESETS[name].get("quantizer", {}), **(overrides.get("quantizer") or {})}
    if isinstance(overrides.get("quantizer"), QuantizerConfig):
        fields["quantizer"] = overrides["quantizer"]
    else:
        fields["quantizer"] = QuantizerConfig(**quant)
    return DDTConfig(**fields)


register_family(Family(
    "tokenizer", "ddt", "DDT: discrete diffusion-timestep tokens (coarse-to-fine ids for language models)",
    recipe="quickstart_ddt", paper="arXiv 2504.14666, arXiv 2505.07538", config=DDTConfig,
    extra={"trainable": True, "tokens": "discrete"},
))


def _register(name: str) -> None:
    register("tokenizer", name, family="ddt")(lambda **overrides: DDT(ddt_config(name, **overrides)))


for _name in PRESETS:
    _register(_name)

