"""DiT: a transformer with adaLN-Zero conditioning, trained as a Gaussian diffusion model on latents.

"Scalable Diffusion Models with Transformers", Peebles & Xie, arXiv 2212.09748.
This file also holds what SiT and LightningDiT share: the backbone config, `DiTNet` and `DiTFamily`
(noise, null labels, classifier-free guidance).

l-DeTok setting: patch 1 on the 16x16x16 latent (256 tokens), 1000 linear beta steps with learned
sigma, ancestral sampling respaced to 100 steps, CFG on all channels.

Axis letters: B batch, C latent channels, H/W latent height/width, N tokens, D width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from detok.config import from_dict
from detok.generators.base import LABEL_DROPOUT, Generator
from detok.nn.dit_blocks import (
    AdaLNBlock,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    Norm,
    TimestepEmbedder,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)
from detok.nn.random import randn
from detok.nn.rope import rope_table
from detok.nn.sizes import SIZE_SUFFIXES, SIZES, size_of
from detok.processes.gaussian import GaussianDiffusion
from detok.processes.guidance import cfg_fn
from detok.registry import Family, Sampling, register, register_family

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The DiT family's sizes are the rows of detok.nn.sizes.SIZES; `SIZES` and `size_of` stay importable here.
LEGACY_CFG_CHANNELS = 3  # DiT's forward_with_cfg guides only the first 3 channels (DiT PR #12, issue #41)


@dataclass
class BackboneConfig:
    """What every model of the DiT family shares: the backbone and how labels condition it."""

    size: str = field(default="base", metadata={"help": "one of " + ", ".join(SIZES)})
    patch_size: int = field(
        default=1, metadata={"help": "patch size on the latent grid; paper 1 (256 tokens)"}
    )
    latent_shape: tuple[int, int, int] = (16, 16, 16)  # (C, H, W), set by the builder
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    learn_sigma: bool = False  # output 2C channels [eps | v] for a learned-variance diffusion
    label_dropout: float = field(default=LABEL_DROPOUT, metadata={"help": "CFG training: P(label -> null)"})
    cfg_legacy_3ch: bool = field(
        default=False, metadata={"help": "guide only the first 3 channels (upstream DiT quirk); default: all"}
    )
    grad_checkpointing: bool = False


@dataclass
class DiTConfig(BackboneConfig):
    """DiT on tokenizer latents; defaults are l-DeTok's DiT-B (patch 1, linear DDPM, learned sigma)."""

    learn_sigma: bool = True
    schedule: Literal["linear", "cosine"] = "linear"
    diffusion_steps: int = 1000
    sample_steps: int | str = field(
        default="100",
        metadata={"help": "respaced sampling steps; paper / l-DeTok builder 100 (DiT's own default is 250)"},
    )


# -- network -----------------------------------------------------------------------------------------


class DiTNet(nn.Module):
    """Pure network f(x, t, y): patchify, + positions, adaLN-Zero blocks conditioned on t + y, unpatchify.

    DiT uses LayerNorm, GELU MLP and a frozen sin-cos position buffer; LightningDiT passes RMSNorm,
    SwiGLU, RoPE and a trainable sin-cos-initialised position embedding through the keywords.
    """

    def __init__(
        self,
        cfg: BackboneConfig,
        *,
        norm: Norm = "layer",
        mlp: Mlp = "gelu",
        qk_norm: bool = False,
        rope: bool = False,
        learn_pos: bool = False,
    ) -> None:
        super().__init__()
        width, depth, heads = size_of(cfg.size)
        channels, height, wdt = cfg.latent_shape
        if height != wdt or height % cfg.patch_size:
            raise ValueError(
                f"latent {cfg.latent_shape} is not a square grid divisible by patch {cfg.patch_size}"
            )
        self.patch, self.grid = cfg.patch_size, height // cfg.patch_size
        self.in_channels = channels
        self.out_channels = 2 * channels if cfg.learn_sigma else channels
        self.grad_checkpointing = cfg.grad_checkpointing

        self.x_embedder = nn.Linear(channels * self.patch**2, width)  # = a flattened Conv2d(k=P, s=P)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(cfg.num_classes, width)
        pos = sincos_pos_embed_2d(width, self.grid)[None]  # (1, N, D)
        if learn_pos:
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer("pos_embed", pos, persistent=False)  # derived: never saved
        self.blocks = nn.ModuleList(
            AdaLNBlock(width, heads, cfg.mlp_ratio, norm=norm, mlp=mlp, qk_norm=qk_norm) for _ in range(depth)
        )
        self.final_layer = FinalLayer(width, self.patch**2 * self.out_channels, norm)
        # RoPE table: derived, kept out of buffers (DDP broadcasts and dtype casts leave it alone), built on CPU
        # even under `torch.device("meta")` and copied once per device.
        self._rope_cpu: torch.Tensor | None = None
        if rope:
            with torch.device("cpu"):
                self._rope_cpu = rope_table(self.grid, width // heads)
        self._rope_dev: dict[torch.device, torch.Tensor] = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """adaLN-Zero (DiT): xavier Linear, N(0, 0.02) embedders, zero modulation and output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # Every block starts as the identity and the output is 0: only the output layer learns at step 0.
        for layer in [blk.adaLN_modulation[-1] for blk in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def rope(self, device: torch.device) -> torch.Tensor | None:
        """The RoPE table on `device` (None without RoPE)."""
        if self._rope_cpu is None:
            return None
        table = self._rope_dev.get(device)
        if table is None:
            table = self._rope_dev[device] = self._rope_cpu.to(device)
        return table

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), t (B,) DDPM index or flow time, y (B,) labels -> (B, out_C, H, W)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        tokens = self.x_embedder(patchify(x, self.patch)) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        rope = self.rope(x.device)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                tokens = checkpoint(blk, tokens, c, rope, use_reentrant=False)
            else:
                tokens = blk(tokens, c, rope)  # (B, N, D)
        out = self.final_layer(tokens, c)  # (B, N, P*P*out_C)
        return unpatchify(out, self.patch, self.grid)  # (B, out_C, H, W)


# -- generators --------------------------------------------------------------------------------------


class DiTFamily(Generator):
    """Shared by DiT, SiT and LightningDiT: a `DiTNet` as `self.net`, noise, null labels and guidance."""

    cfg: BackboneConfig
    net: DiTNet

    def forward(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Same as `loss`, so that DDP wraps the training forward."""
        return self.loss(latents, labels, rng)

    def initial_noise(self, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal (n, C, H, W) float32 on the model's device, drawn from `rng` (on its device)."""
        return randn((n, *self.latent_shape), device=self.net.x_embedder.weight.device, rng=rng)

    def labels_or_null(self, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        """labels (n,) on the model's device, or n null labels."""
        device = self.net.x_embedder.weight.device
        if labels is None:
            return torch.full((n,), self.null_label, dtype=torch.long, device=device)
        if labels.shape != (n,):
            raise ValueError(f"expected labels of shape ({n},), got {tuple(labels.shape)}")
        return labels.to(device=device, dtype=torch.long)

    def conditional_fn(self, labels: torch.Tensor) -> ModelFn:
        """model_fn(x, t) of the network for fixed labels (n,)."""
        return lambda x, t: self.net(x, t, labels)

    def guided_fn(
        self, labels: torch.Tensor, scale: float, interval: tuple[float, float] | None = None
    ) -> ModelFn:
        """CFG model_fn(x, t) over a doubled batch x = [x_c; x_u] (2n), labels [y; null]; see `cfg_fn`."""
        doubled = torch.cat([labels, torch.full_like(labels, self.null_label)])  # (2n,)
        channels = LEGACY_CFG_CHANNELS if self.cfg.cfg_legacy_3ch else None
        guided = cfg_fn(self.net, scale, channels=channels, interval=interval)
        return lambda x, t: guided(x, t, doubled)

    def run_sampler(
        self,
        sampler: Callable[[ModelFn, torch.Tensor], torch.Tensor],
        n: int,
        labels: torch.Tensor | None,
        cfg_scale: float,
        rng: torch.Generator | None,
        interval: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Draw noise, run `sampler(model_fn, noise)`, unguided or on the doubled CFG batch -> (n, C, H, W)."""
        y = self.labels_or_null(n, labels)
        noise = self.initial_noise(n, rng)
        if cfg_scale == 1.0:
            return sampler(self.conditional_fn(y), noise)
        out = sampler(self.guided_fn(y, cfg_scale, interval), torch.cat([noise, noise]))  # (2n, C, H, W)
        return out[:n]


class DiT(DiTFamily):
    """DiT: `DiTNet` + Gaussian diffusion for training, ancestral sampling on a respaced chain."""

    sampling = Sampling(steps="ancestral DDPM steps of the respaced chain (an int, or a respacing string)",
                        default_steps="100")

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__(cfg.latent_shape, cfg.num_classes, cfg.label_dropout)
        self.cfg = cfg
        self.net = DiTNet(cfg)
        with torch.device("cpu"):  # the process keeps CPU tables, also when the net is built on "meta"
            self.diffusion = GaussianDiffusion(
                schedule=cfg.schedule, steps=cfg.diffusion_steps, learn_sigma=cfg.learn_sigma
            )
        self._respaced: dict[str, GaussianDiffusion] = {}

    def loss(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean of DDPM eps-MSE + VB (learned sigma) over latents (B, C, H, W)."""
        y = self.drop_labels(labels, rng)
        out = self.diffusion.training_losses(self.conditional_fn(y), latents, rng=rng)
        parts = {k: v.mean().detach() for k, v in out.items() if k != "loss"}
        return {"loss": out["loss"].mean(), **parts}

    def respaced(self, steps: str) -> GaussianDiffusion:
        """The diffusion respaced to `steps` (e.g. "250"), cached."""
        if steps not in self._respaced:
            with torch.device("cpu"):
                self._respaced[steps] = self.diffusion.respace(steps)
        return self._respaced[steps]

    def _sample(
        self, n: int, labels: torch.Tensor | None, *, cfg_scale: float, steps: int | str | None,
        head_steps: None, rng: torch.Generator | None, progress: bool,
    ) -> torch.Tensor:
        """n latents (n, C, H, W) by ancestral sampling over `steps` (default cfg.sample_steps) respaced steps."""
        diffusion = self.respaced(str(steps or self.cfg.sample_steps))

        def sampler(fn: ModelFn, noise: torch.Tensor) -> torch.Tensor:
            return diffusion.p_sample_loop(fn, noise, rng=rng, progress=progress)

        return self.run_sampler(sampler, n, labels, cfg_scale, rng)


# -- presets -----------------------------------------------------------------------------------------

# name suffix -> size of the registered presets (dit_b, ..., shared by SiT and LightningDiT)
PRESET_SIZES = {suffix: SIZE_SUFFIXES[suffix] for suffix in ("b", "l", "xl", "tiny", "mini")}
C = TypeVar("C", bound=BackboneConfig)


def make_config(
    cls: type[C], size: str, latent_shape: tuple[int, int, int], num_classes: int, overrides: dict
) -> C:
    """Preset size + overrides, type-checked (unknown keys raise); latent_shape / num_classes always win."""
    merged = {"size": size, **overrides, "latent_shape": tuple(latent_shape), "num_classes": num_classes}
    return from_dict(cls, merged)


def register_presets(family: str, model: Callable[[C], DiTFamily], config: type[C]) -> None:
    """Register generator `{family}_{suffix}` for every PRESET_SIZES entry: `model` at that size."""

    def builder(size: str) -> Callable[..., DiTFamily]:
        def build(
            latent_shape: tuple[int, int, int] = (16, 16, 16), num_classes: int = 1000, **overrides
        ) -> DiTFamily:
            return model(make_config(config, size, latent_shape, num_classes, overrides))

        build.__doc__ = f"Build {family} at size {size!r} on `latent_shape` latents, `num_classes` classes."
        return build

    for suffix, size in PRESET_SIZES.items():
        register("generator", f"{family}_{suffix}", family=family)(builder(size))


register_family(Family(
    "generator", "dit", "DiT: transformer on latent patches, Gaussian diffusion (DDPM, learned sigma)",
    recipe="quickstart_dit", sampling=DiT.sampling, config=DiTConfig, paper="arXiv 2212.09748",
))
register_presets("dit", DiT, DiTConfig)
