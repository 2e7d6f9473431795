"""RasterAR and RandomAR: decoder-only causal transformers with a per-token diffusion head.

l-DeTok's "ARDiff" baselines (arXiv 2507.15856, models/ardiff.py), in the spirit of MAR's AR variant
(arXiv 2406.11838) and RandAR (arXiv 2412.01827) for random orders. The sequence is [BOS, x_o1, ...,
x_o(N-1)] for a generation order o; input i carries the position embedding of the token it holds plus
a target-position embedding of o_i, the token it must predict ("which position comes next"). Blocks
are adaLN-Zero, conditioned per step on the class embedding plus a learnable step embedding. Training
is teacher forcing; sampling is token by token with a KV cache (upstream recomputes the prefix).

Axis letters: B batch, C latent channels, H/W latent grid, N tokens, T token channels, D width,
h heads, d head dim, S cached steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from detok.config import from_dict
from detok.generators.base import LABEL_DROPOUT
from detok.generators.mar import LatentTokenGenerator, Mlp, diffloss_clip_field, random_orders
from detok.nn.dit_blocks import make_norm, modulate
from detok.nn.linear import Linear
from detok.nn.sizes import SIZE_SUFFIXES, SIZES
from detok.processes.guidance import linear_cfg
from detok.registry import Family, Sampling, register, register_family

# Sizes: the rows of detok.nn.sizes.SIZES, upstream's SIZE_DICT shared with the tokenizer and DiT (large is
# 24 layers here, unlike MAR-L's 16 + 16); `SIZES` stays importable from here.


# ---------------------------------------------------------------------------------------------------
# Blocks with a KV cache
# ---------------------------------------------------------------------------------------------------


class LayerCache:
    """Keys and values (B, h, S, d) of one attention layer for the steps seen so far."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys / values (B, h, n, d); return all of them (B, h, S + n, d)."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class KVCache:
    """One LayerCache per block; pass the same object to every incremental `transformer` call."""

    def __init__(self, depth: int) -> None:
        self.layers = [LayerCache() for _ in range(depth)]

    @property
    def length(self) -> int:
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]


class CausalAttention(nn.Module):
    """Causal multi-head self-attention on SDPA; with a cache, new queries attend to all cached steps."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, n, D) -> (B, n, D)."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        past = 0 if cache is None or cache.k is None else cache.k.shape[2]
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, h, past + n, d)
        n = q.shape[2]
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif n == 1:
            out = F.scaled_dot_product_attention(q, k, v)  # one new step sees every earlier one
        else:
            allowed = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class CausalAdaLNBlock(nn.Module):
    """adaLN-Zero block on causal, KV-cached attention, with per-token conditions (B, n, D).

    Unlike the DiT block (`detok.nn.dit_blocks.AdaLNBlock`, one condition per sample), every step has its
    own shift, scale and gate for attention and MLP; the MLP is MAR's GELU `Mlp`.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = make_norm("layer", width)
        self.attn = CausalAttention(width, heads)
        self.norm2 = make_norm("layer", width)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, n, D), conditions c (B, n, D) -> (B, n, D)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), cache)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalNorm(nn.Module):
    """Modulated LayerNorm producing the per-token conditions of the diffusion head."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = make_norm("layer", width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x (B, n, D)
        return modulate(self.norm(x), shift, scale)


# ---------------------------------------------------------------------------------------------------
# Config and model
# ---------------------------------------------------------------------------------------------------


@dataclass
class ARConfig:
    """RasterAR / RandomAR architecture and sampling defaults; the defaults are RasterAR-B."""

    latent_shape: tuple[int, int, int] = (16, 16, 16)  # (C, H, W) of the tokenizer latent
    num_classes: int = 1000
    order: Literal["raster", "random"] = field(
        default="raster", metadata={"help": "generation order; random = a permutation per sample"}
    )
    patch_size: int = 1
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    label_dropout: float = LABEL_DROPOUT
    diffloss_d: int = 3
    diffloss_w: int = 1024
    diffusion_batch_mul: int = 4
    num_sampling_steps: int | str = "100"  # respacing of the head's DDPM when sampling
    diffloss_clip: float = diffloss_clip_field()
    temperature: float = 1.0
    cfg_schedule: Literal["linear", "constant"] = "linear"


class ARDiff(LatentTokenGenerator):
    """Decoder-only causal transformer over latent tokens in raster or random order, DiffLoss head."""

    sampling = Sampling(steps="one token per step, as many steps as tokens", default_steps="tokens",
                        head_steps="DDPM steps of the per-token DiffLoss head (respacing)", default_head_steps="100",
                        fixed_steps=True)

    cfg: ARConfig

    def __init__(self, cfg: ARConfig) -> None:
        super().__init__(cfg)
        n, d = self.seq_len, cfg.width

        self.class_emb = nn.Embedding(cfg.num_classes + 1, d)  # last row: the null class
        self.step_embed = nn.Parameter(torch.zeros(1, n, d))  # per-step part of the adaLN condition
        self.z_proj = Linear(self.token_dim, d)
        self.bos_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, d))  # position of the token an input holds
        self.target_pos_embed = nn.Parameter(torch.zeros(1, n, d))  # position the input must predict
        self.blocks = nn.ModuleList(CausalAdaLNBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalNorm(d)
        self.diffloss = self.make_head()
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier Linear, N(0, 0.02) embeddings, zero adaLN modulation (blocks start as identity)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("diffloss"):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.class_emb.weight, std=0.02)
        for name in ("step_embed", "bos_token", "pos_embed", "target_pos_embed"):
            nn.init.normal_(getattr(self, name), std=0.02)
        for m in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1]]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- orders -------------------------------------------------------------------------------------

    def orders(
        self, batch: int, rng: torch.Generator | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """Generation orders (B, N): raster, or one random permutation per sample."""
        if self.cfg.order == "raster":
            return torch.arange(self.seq_len, device=device).expand(batch, -1)
        return random_orders(batch, self.seq_len, rng, device)

    # -- network ------------------------------------------------------------------------------------

    def conditions(self, labels: torch.Tensor, length: int) -> torch.Tensor:
        """adaLN conditions (B, length, D): class embedding plus the step embedding."""
        return self.class_emb(labels)[:, None] + self.step_embed[:, :length]

    def input_embeddings(self, tokens: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs (B, N, D): [BOS, tokens in order minus the last] + target positions."""
        ordered = tokens.gather(1, orders[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, N, T)
        held = self.z_proj(ordered[:, :-1]) + self.pos_embed[0][orders[:, :-1]]  # (B, N - 1, D)
        bos = self.bos_token.to(held.dtype).expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([bos, held], dim=1) + self.target_pos_embed[0][orders]

    def transformer(self, x: torch.Tensor, cond: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Inputs (B, n, D) and conditions (B, n, D) -> head conditions z (B, n, D); causal over the cache."""
        for i, block in enumerate(self.blocks):
            x = block(x, cond, None if cache is None else cache.layers[i])
        return self.final_layer(x, cond)

    def forward(self, tokens: torch.Tensor, orders: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, T), orders (B, N), labels (B,) -> z (B, N, D); z[:, i] models token orders[:, i]."""
        return self.transformer(self.input_embeddings(tokens, orders), self.conditions(labels, self.seq_len))

    # -- Generator interface ------------------------------------------------------------------------

    def loss(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced DiffLoss over all tokens in the (raster or per-sample random) order."""
        tokens = self.patchify(latents)  # (B, N, T)
        orders = self.orders(tokens.shape[0], rng, tokens.device)  # (B, N)
        z = self(tokens, orders, self.drop_labels(labels, rng))  # (B, N, D)
        target = tokens.gather(1, orders[..., None].expand(-1, -1, self.token_dim))  # (B, N, T)
        return {"loss": self.diffloss.loss(target.flatten(0, 1), z.flatten(0, 1), None, rng)}

    def _sample(
        self, n: int, labels: torch.Tensor | None, *, cfg_scale: float, steps: None,
        head_steps: int | str | None, rng: torch.Generator | None, progress: bool,
        temperature: float | None = None, cfg_schedule: Literal["linear", "constant"] | None = None,
        use_kv_cache: bool = True,
    ) -> torch.Tensor:
        """Latents (n, C, H, W), one token per step; `head_steps` = diffusion steps per token (default "100").

        CFG runs a null-class half with scale 1 + (cfg_scale - 1) * step / N. Without the KV cache every step
        recomputes the whole prefix (upstream's behaviour); both give the same latents.
        """
        cfg = cfg_scale
        device = self.bos_token.device
        labels, null, temperature, schedule = self.sampling_setup(
            n, labels, device, temperature, cfg_schedule
        )
        length = self.seq_len
        guided = cfg != 1.0
        rows = 2 * n if guided else n

        orders = self.orders(n, rng, device)  # (n, N)
        orders2 = torch.cat([orders, orders]) if guided else orders  # (rows, N)
        cond = self.conditions(torch.cat([labels, null]) if guided else labels, length)  # (rows, N, D)
        tokens = torch.zeros(n, length, self.token_dim, device=device)
        cache = KVCache(len(self.blocks)) if use_kv_cache else None
        first = self.bos_token.expand(rows, -1, -1) + self.target_pos_embed[0][orders2[:, :1]]  # (rows, 1, D)
        inputs = [first]
        batch = torch.arange(n, device=device)
        loop = range(length)
        if progress:
            from tqdm.auto import tqdm

            loop = tqdm(loop, desc=f"{self.cfg.order}AR")
        for step in loop:
            if cache is not None:
                z = self.transformer(inputs[-1], cond[:, step : step + 1], cache)[:, -1]  # (rows, D)
            else:
                z = self.transformer(torch.cat(inputs, dim=1), cond[:, : step + 1])[:, -1]  # (rows, D)
            scale = linear_cfg(cfg, step / length) if schedule == "linear" else cfg
            new = self.diffloss.sample(
                z[:n], z[n:] if guided else None, cfg_scale=scale, temperature=temperature, steps=head_steps,
                rng=rng,
            )  # fmt: skip
            tokens[batch, orders[:, step]] = new.to(tokens.dtype)
            if step + 1 < length:
                held = self.z_proj(torch.cat([new, new]) if guided else new)  # (rows, D)
                nxt = (
                    held
                    + self.pos_embed[0][orders2[:, step]]
                    + self.target_pos_embed[0][orders2[:, step + 1]]
                )
                inputs.append(nxt[:, None])  # (rows, 1, D)
        return self.unpatchify(tokens)


class RasterAR(ARDiff):
    """ARDiff generating tokens in raster (row-major) order."""

    def __init__(self, cfg: ARConfig) -> None:
        if cfg.order != "raster":
            raise ValueError(f"RasterAR needs order='raster', got {cfg.order!r} (use RandomAR)")
        super().__init__(cfg)


class RandomAR(ARDiff):
    """ARDiff generating tokens in a random order per sample (RandAR-style target positions)."""

    def __init__(self, cfg: ARConfig) -> None:
        if cfg.order != "random":
            raise ValueError(f"RandomAR needs order='random', got {cfg.order!r} (use RasterAR)")
        super().__init__(cfg)


# ---------------------------------------------------------------------------------------------------
# Presets and registration
# ---------------------------------------------------------------------------------------------------

PRESETS: dict[str, dict] = {}
for _order in ("raster", "random"):
    for _short in ("tiny", "b", "l", "xl"):
        _w, _d, _h = SIZES[SIZE_SUFFIXES[_short]]
        PRESETS[f"{_order}ar_{_short}"] = {"order": _order, "width": _w, "depth": _d, "heads": _h}
        if _short == "tiny":
            PRESETS[f"{_order}ar_{_short}"].update(diffloss_d=2, diffloss_w=64)


def ar_config(
    name: str, latent_shape: tuple[int, int, int] = (16, 16, 16), num_classes: int = 1000, **overrides
) -> ARConfig:
    """The ARConfig of a preset with overrides (no model built)."""
    if name not in PRESETS:
        raise KeyError(f"unknown AR preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    fields = {"latent_shape": tuple(latent_shape), "num_classes": num_classes, **PRESETS[name], **overrides}
    return from_dict(ARConfig, fields)  # type-checked; unknown keys are ConfigErrors


register_family(Family(
    "generator", "rasterar", "RasterAR: causal transformer over latent tokens in raster order, per-token "
    "diffusion head", recipe="quickstart_rasterar", sampling=ARDiff.sampling, config=ARConfig, paper="l-DeTok arXiv 2507.15856",
))
register_family(Family(
    "generator", "randomar", "RandomAR: causal transformer over latent tokens in a random order per sample "
    "(RandAR-style target positions), per-token diffusion head", recipe="quickstart_randomar",
    sampling=ARDiff.sampling, config=ARConfig, paper="l-DeTok arXiv 2507.15856",
))


def _register(name: str) -> None:
    cls = RasterAR if PRESETS[name]["order"] == "raster" else RandomAR

    def build(
        latent_shape: tuple[int, int, int] = (16, 16, 16), num_classes: int = 1000, **overrides
    ) -> ARDiff:
        return cls(ar_config(name, latent_shape, num_classes, **overrides))

    build.__doc__ = f"Build {name} on latents of `latent_shape` with `num_classes` classes."
    register("generator", name, family=PRESETS[name]["order"] + "ar")(build)


for _name in PRESETS:
    _register(_name)
