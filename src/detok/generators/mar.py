"""MAR: masked autoregressive generation with a per-token diffusion head.

"Autoregressive Image Generation without Vector Quantization" (Li et al., arXiv 2406.11838), as used by
l-DeTok (arXiv 2507.15856). An MAE encoder sees the known tokens plus `buffer_size` class-embedding
slots; an MAE decoder fills the masked positions with conditions z; `DiffLoss` models each token given
its z. Parameter names equal upstream's (LTH14/mar, l-DeTok), so released weights load by name.

Axis letters: B batch, C latent channels, H/W latent grid, N tokens (= H * W / P^2), T token channels
(= C * P^2), D width, K kept tokens (buffer + unmasked), S buffer slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from detok.config import from_dict
from detok.generators.base import LABEL_DROPOUT, Generator
from detok.generators.diffloss import DiffLoss
from detok.nn.dit_blocks import patchify, unpatchify_cpq
from detok.nn.linear import Linear
from detok.nn.random import draw_device
from detok.nn.sizes import MAR_SIZES, SIZE_SUFFIXES
from detok.processes.guidance import linear_cfg
from detok.registry import Family, Sampling, register, register_family

LN_EPS = 1e-6  # LayerNorm epsilon of MAR's blocks and norms


# ---------------------------------------------------------------------------------------------------
# Blocks (timm ViT layout: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)
# ---------------------------------------------------------------------------------------------------


class MARAttention(nn.Module):
    """MAR's (timm's) multi-head self-attention: qkv bias, attention and output dropout, no RoPE."""

    def __init__(self, width: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.attn_drop = attn_drop
        self.qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D)."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, width: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, width)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class MARBlock(nn.Module):
    """MAR's pre-norm ViT block (LayerNorm eps 1e-6, GELU MLP): x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float, mlp_drop: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = MARAttention(width, heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio), mlp_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------------------------------------------
# Randomness helpers (torch only, every draw from the caller's generator, on its device: `draw_device`)
# ---------------------------------------------------------------------------------------------------


def truncated_normal(
    n: int,
    low: float,
    high: float,
    mean: float,
    std: float,
    rng: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n draws (float64) of N(mean, std^2) truncated to [low, high], by the inverse CDF."""
    lo = torch.special.ndtr(torch.tensor((low - mean) / std, dtype=torch.float64))
    hi = torch.special.ndtr(torch.tensor((high - mean) / std, dtype=torch.float64))
    u = torch.rand(n, generator=rng, dtype=torch.float64, device=draw_device(rng, device))
    u = (lo + (hi - lo) * u.cpu()).to(device)
    return (mean + std * torch.special.ndtri(u)).clamp(low, high)


def random_orders(
    batch: int,
    length: int,
    rng: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One uniformly random permutation of range(length) per sample: (batch, length) int64."""
    keys = torch.rand(batch, length, generator=rng, device=draw_device(rng, device))
    return torch.argsort(keys, dim=1).to(device)


def mask_by_order(orders: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Bool mask (B, N): True at the first `num_masked` positions of each order."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :num_masked], True)


# ---------------------------------------------------------------------------------------------------
# What MAR and RasterAR / RandomAR share: latent patch tokens and the per-token DiffLoss head
# ---------------------------------------------------------------------------------------------------


def diffloss_clip_field() -> Any:
    """The config field of both families' head clamp (DiffLoss.clip_xstart)."""
    return field(default=0.0, metadata={
        "help": "clamp the head's predicted x0 to +-this while sampling (normalised latent units; 0: free, as "
                "upstream). CPU-budget heads need it: their respaced samples blow up without (DiffLoss)"})


class TokenHeadConfig(Protocol):
    """The config fields `LatentTokenGenerator` reads (MARConfig and ar.ARConfig have them all)."""

    latent_shape: tuple[int, int, int]
    num_classes: int
    label_dropout: float
    patch_size: int
    width: int
    diffloss_d: int
    diffloss_w: int
    diffusion_batch_mul: int
    num_sampling_steps: int | str
    diffloss_clip: float
    temperature: float
    cfg_schedule: Literal["linear", "constant"]


class LatentTokenGenerator(Generator):
    """A Generator over the latent as row-major patch tokens (B, N, T) with a per-token `DiffLoss` head.

    Sets `grid` (h, w) of tokens, `seq_len` N and `token_dim` T = C * P^2 from the config; the subclass
    builds its network, then the head with `make_head` (the order of construction fixes the seeded init).
    """

    def __init__(self, cfg: TokenHeadConfig) -> None:
        super().__init__(cfg.latent_shape, cfg.num_classes, cfg.label_dropout)
        self.cfg = cfg
        c, h, w = cfg.latent_shape
        p = cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"latent grid {h}x{w} is not divisible by patch size {p}")
        self.grid = (h // p, w // p)
        self.seq_len = self.grid[0] * self.grid[1]
        self.token_dim = c * p * p

    def make_head(self) -> DiffLoss:
        """The per-token DiffLoss head: tokens of `token_dim` conditioned on backbone outputs of `width`."""
        cfg = self.cfg
        return DiffLoss(self.token_dim, cfg.width, cfg.diffloss_d, cfg.diffloss_w,
                        cfg.num_sampling_steps, cfg.diffusion_batch_mul, clip_xstart=cfg.diffloss_clip)  # fmt: skip

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, T), row-major tokens with channels laid out (c p q) as upstream."""
        return patchify(latents, self.cfg.patch_size)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, T) -> (B, C, H, W)."""
        return unpatchify_cpq(tokens, self.cfg.patch_size, self.grid[0])

    def sampling_setup(
        self,
        n: int,
        labels: torch.Tensor | None,
        device: torch.device,
        temperature: float | None,
        cfg_schedule: Literal["linear", "constant"] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, float, str]:
        """(labels (n,) on `device` (None: null), null labels (n,), temperature, CFG schedule).

        temperature and cfg_schedule default (None) to the config's.
        """
        null = torch.full((n,), self.null_label, dtype=torch.long, device=device)
        labels = null if labels is None else labels.to(device)
        temperature = self.cfg.temperature if temperature is None else temperature
        return labels, null, temperature, cfg_schedule or self.cfg.cfg_schedule


# ---------------------------------------------------------------------------------------------------
# Config and model
# ---------------------------------------------------------------------------------------------------


@dataclass
class MARConfig:
    """MAR architecture, training masking and sampling defaults; the defaults are MAR-B (800-epoch head)."""

    latent_shape: tuple[int, int, int] = (16, 16, 16)  # (C, H, W) of the tokenizer latent
    num_classes: int = 1000
    patch_size: int = 1
    width: int = 768
    encoder_depth: int = 12
    decoder_depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    buffer_size: int = field(default=64, metadata={"help": "class-embedding slots in front of the tokens"})
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    mlp_dropout: float = field(default=0.0, metadata={"help": "l-DeTok --no_dropout_in_mlp (LTH14/mar: 0.1)"})
    label_dropout: float = LABEL_DROPOUT
    mask_ratio_min: float = field(
        default=0.7, metadata={"help": "mask ratio ~ truncnorm on [min, 1], mode 1"}
    )
    mask_ratio_std: float = 0.25
    diffloss_d: int = 6
    diffloss_w: int = 1024
    diffusion_batch_mul: int = 4
    num_sampling_steps: int | str = "100"  # respacing of the head's DDPM when sampling
    diffloss_clip: float = diffloss_clip_field()
    num_iter: int = field(default=64, metadata={"help": "AR steps when sampling; the paper's eval uses 256"})
    temperature: float = 1.0
    cfg_schedule: Literal["linear", "constant"] = "linear"


class MAR(LatentTokenGenerator):
    """MAE encoder / decoder over latent tokens with class-embedding buffer slots and a DiffLoss head."""

    sampling = Sampling(steps="unmasking iterations of the cosine mask schedule", default_steps="64",
                        head_steps="DDPM steps of the per-token DiffLoss head (respacing)", default_head_steps="100")

    cfg: MARConfig

    def __init__(self, cfg: MARConfig) -> None:
        super().__init__(cfg)
        d, s, n = cfg.width, cfg.buffer_size, self.seq_len
        drops = (cfg.attn_dropout, cfg.proj_dropout, cfg.mlp_dropout)

        self.class_emb = nn.Embedding(cfg.num_classes, d)
        self.fake_latent = nn.Parameter(torch.zeros(1, d))  # the null class of classifier-free guidance
        self.z_proj = Linear(self.token_dim, d)
        self.z_proj_ln = nn.LayerNorm(d, eps=LN_EPS)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, s + n, d))
        self.encoder_blocks = nn.ModuleList(
            MARBlock(d, cfg.heads, cfg.mlp_ratio, *drops) for _ in range(cfg.encoder_depth)
        )
        self.encoder_norm = nn.LayerNorm(d, eps=LN_EPS)

        self.decoder_embed = Linear(d, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, s + n, d))
        self.decoder_blocks = nn.ModuleList(
            MARBlock(d, cfg.heads, cfg.mlp_ratio, *drops) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, n, d))

        self.diffloss = self.make_head()
        self.init_weights()

    def init_weights(self) -> None:
        """MAR's init: N(0, 0.02) embeddings, Xavier Linear, unit LayerNorm; the head keeps its own."""
        for p in (self.fake_latent, self.mask_token, self.class_emb.weight, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):  # fmt: skip
            nn.init.normal_(p, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("diffloss"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- tokens -------------------------------------------------------------------------------------

    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels (B,) -> (B, D); the null label `num_classes` maps to `fake_latent`."""
        emb = self.class_emb(labels.clamp(max=self.num_classes - 1))  # (B, D)
        null = (labels == self.null_label)[:, None]
        return torch.where(null, self.fake_latent.to(emb.dtype).expand_as(emb), emb)

    def draw_num_masked(self, rng: torch.Generator | None = None) -> int:
        """Number of masked tokens for one training batch: ceil(N * r), r ~ truncnorm(min, 1; mode 1)."""
        ratio = truncated_normal(1, self.cfg.mask_ratio_min, 1.0, 1.0, self.cfg.mask_ratio_std, rng,
                                 self.fake_latent.device)  # fmt: skip
        return min(self.seq_len, int(math.ceil(self.seq_len * ratio.item())))

    # -- network ------------------------------------------------------------------------------------

    def _kept_index(self, mask: torch.Tensor) -> torch.Tensor:
        """Ascending positions (B, K) of buffer slots and unmasked tokens; all rows must keep K."""
        b, s = mask.shape[0], self.cfg.buffer_size
        buffer = torch.zeros(b, s, dtype=torch.bool, device=mask.device)
        with_buffer = torch.cat([buffer, mask.bool()], dim=1)  # (B, S + N)
        kept = (~with_buffer).sum(1)
        if kept.numel() and not bool((kept == kept[0]).all()):
            raise ValueError("every sample must mask the same number of tokens")
        order = torch.argsort(with_buffer.to(torch.uint8), dim=1, stable=True)  # kept first, in order
        return order[:, : int(kept[0]) if kept.numel() else 0]

    def forward_encoder(self, tokens: torch.Tensor, index: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, T), kept index (B, K), class embeddings (B, D) -> encoded kept tokens (B, K, D)."""
        x = self.z_proj(tokens)  # (B, N, D)
        b, _, d = x.shape
        buffer = cond[:, None].expand(b, self.cfg.buffer_size, d)  # (B, S, D)
        x = self.z_proj_ln(torch.cat([buffer, x], dim=1) + self.encoder_pos_embed_learned)  # (B, S + N, D)
        x = x.gather(1, index[..., None].expand(-1, -1, d))  # (B, K, D)
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def forward_decoder(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Encoded kept tokens (B, K, D) -> per-token conditions z (B, N, D), mask tokens elsewhere."""
        x = self.decoder_embed(x)  # (B, K, D)
        b, _, d = x.shape
        full = self.mask_token.to(x.dtype).expand(b, self.cfg.buffer_size + self.seq_len, d)  # (B, S + N, D)
        x = full.scatter(1, index[..., None].expand(-1, -1, d), x) + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)[:, self.cfg.buffer_size :]  # (B, N, D)
        return x + self.diffusion_pos_embed_learned

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, T), mask (B, N) (True / 1 = masked), labels (B,) -> conditions z (B, N, D)."""
        index = self._kept_index(mask)
        return self.forward_decoder(self.forward_encoder(tokens, index, self.class_embedding(labels)), index)

    # -- Generator interface ------------------------------------------------------------------------

    def loss(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """DiffLoss on the masked tokens: one truncnorm mask ratio per batch, a random order per sample."""
        tokens = self.patchify(latents)  # (B, N, T)
        b, n, _ = tokens.shape
        num_masked = self.draw_num_masked(rng)
        mask = mask_by_order(random_orders(b, n, rng, tokens.device), num_masked)  # (B, N)
        z = self(tokens, mask, self.drop_labels(labels, rng))  # (B, N, D)
        loss = self.diffloss.loss(tokens.flatten(0, 1), z.flatten(0, 1), mask.flatten(), rng)
        return {"loss": loss, "mask_ratio": tokens.new_tensor(num_masked / n)}

    def _sample(
        self, n: int, labels: torch.Tensor | None, *, cfg_scale: float, steps: int | str | None,
        head_steps: int | str | None, rng: torch.Generator | None, progress: bool,
        temperature: float | None = None, cfg_schedule: Literal["linear", "constant"] | None = None,
    ) -> torch.Tensor:
        """Latents (n, C, H, W) in `steps` AR iterations (default `num_iter`) on a cosine mask schedule.

        Each iteration predicts z for all tokens, then samples, with the per-token DiffLoss (`head_steps`
        DDPM steps, default `num_sampling_steps`), the tokens that leave the mask; CFG runs a null-class
        half with scale 1 + (cfg_scale - 1) (N - masked_next) / N.
        """
        cfg = cfg_scale
        device = self.fake_latent.device
        num_iter = int(steps or self.cfg.num_iter)
        labels, null, temperature, schedule = self.sampling_setup(
            n, labels, device, temperature, cfg_schedule
        )
        length = self.seq_len
        guided = cfg != 1.0
        all_labels = torch.cat([labels, null]) if guided else labels  # (n or 2n,)

        orders = random_orders(n, length, rng, device)  # (n, N)
        mask = torch.ones(n, length, dtype=torch.bool, device=device)
        tokens = torch.zeros(n, length, self.token_dim, device=device)
        loop = range(num_iter)
        if progress:
            from tqdm.auto import tqdm

            loop = tqdm(loop, desc="MAR")
        for step in loop:
            if guided:
                z = self(torch.cat([tokens, tokens]), torch.cat([mask, mask]), all_labels)  # (2n, N, D)
            else:
                z = self(tokens, mask, all_labels)  # (n, N, D)
            # MaskGIT cosine schedule; at least one token stays masked until the last step
            remaining = int(mask[0].sum())
            mask_len = math.floor(length * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
            mask_len = max(1, min(remaining - 1, mask_len))
            mask_next = mask_by_order(orders, mask_len)
            to_pred = mask if step >= num_iter - 1 else mask & ~mask_next  # (n, N)
            mask = mask_next
            if not bool(to_pred.any()):
                continue
            scale = linear_cfg(cfg, (length - mask_len) / length) if schedule == "linear" else cfg  # Muse
            z_uncond = z[n:][to_pred] if guided else None  # (M, D)
            new = self.diffloss.sample(
                z[:n][to_pred], z_uncond, cfg_scale=scale, temperature=temperature, steps=head_steps,
                rng=rng,
            )  # fmt: skip
            tokens[to_pred] = new.to(tokens.dtype)
        return self.unpatchify(tokens)


# ---------------------------------------------------------------------------------------------------
# Presets and registration
# ---------------------------------------------------------------------------------------------------


def _sized(suffix: str, **fields: int) -> dict:
    """MARConfig fields of a preset suffix's MAR_SIZES row (that depth for encoder and decoder), + fields."""
    width, depth, heads = MAR_SIZES[SIZE_SUFFIXES[suffix]]
    return {"width": width, "encoder_depth": depth, "decoder_depth": depth, "heads": heads, **fields}


PRESETS: dict[str, dict] = {
    "mar_tiny": _sized("tiny", buffer_size=4, diffloss_d=2, diffloss_w=64),
    "mar_b": _sized("b"),  # 768 / 12 + 12 / 12, head d6 w1024 (800-epoch release; 100-epoch recipe: d3)
    "mar_l": _sized("l", diffloss_d=8, diffloss_w=1280),
    "mar_h": _sized("h", diffloss_d=12, diffloss_w=1536),
}


def mar_config(
    name: str, latent_shape: tuple[int, int, int] = (16, 16, 16), num_classes: int = 1000, **overrides
) -> MARConfig:
    """The MARConfig of a preset with overrides (no model built)."""
    if name not in PRESETS:
        raise KeyError(f"unknown MAR preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    fields = {"latent_shape": tuple(latent_shape), "num_classes": num_classes, **PRESETS[name], **overrides}
    return from_dict(MARConfig, fields)  # type-checked; unknown keys are ConfigErrors


register_family(Family(
    "generator", "mar", "MAR: masked autoregression over latent tokens with a per-token diffusion head",
    recipe="quickstart_mar", sampling=MAR.sampling, config=MARConfig, paper="arXiv 2406.11838",
))


def _register(name: str) -> None:
    def build(latent_shape: tuple[int, int, int] = (16, 16, 16), num_classes: int = 1000, **overrides) -> MAR:
        return MAR(mar_config(name, latent_shape, num_classes, **overrides))

    build.__doc__ = f"Build {name} on latents of `latent_shape` with `num_classes` classes."
    register("generator", name, family="mar")(build)


for _name in PRESETS:
    _register(_name)
