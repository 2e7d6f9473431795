"""LightningDiT: a modernised DiT backbone (RMSNorm, SwiGLU, 2-D RoPE) trained by flow matching.

"Reconstruction vs. Generation: Taming Optimization Dilemma in Latent Diffusion Models",
Yao et al., arXiv 2501.01423.

l-DeTok setting: velocity prediction, logit-normal t (t = 1 is data), Euler ODE with timestep
shift 0.3, CFG on all channels inside an interval (pure conditional prediction for t < 0.1, near
noise). The position embedding is sin-cos initialised and trainable (upstream comments say
"freeze" but never freeze it). Upstream l-DeTok computes LightningDiT's cosine-similarity loss but
never adds it: `use_cosine_loss=False` reproduces that, True adds it as LightningDiT itself does.

Axis letters: B batch, C latent channels, H/W latent height/width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from detok.generators.dit import BackboneConfig, DiTFamily, DiTNet, ModelFn, register_presets
from detok.processes.flow import FlowTransport
from detok.registry import Family, Sampling, register_family


@dataclass
class LightningDiTConfig(BackboneConfig):
    """LightningDiT on tokenizer latents; defaults are l-DeTok's LightningDiT-B."""

    qk_norm: bool = field(
        default=False, metadata={"help": "RMSNorm on q and k per head (upstream --qk_norm)"}
    )
    use_cosine_loss: bool = field(
        default=False,
        metadata={
            "help": "add the velocity cosine loss (LightningDiT); upstream l-DeTok computes it, never adds it"
        },
    )
    t_mean: float = 0.0  # logit-normal training t: sigmoid(N(t_mean, t_std))
    t_std: float = 1.0
    timestep_shift: float = field(
        default=0.3, metadata={"help": "Euler grid s t / (1 + (s - 1) t), s = shift"}
    )
    cfg_interval_start: float = field(
        default=0.1, metadata={"help": "guide only for t >= this (t = 1 is data); conditional below"}
    )
    sample_steps: int = field(
        default=100, metadata={"help": "Euler time points, steps - 1 steps (upstream CLI default 100)"}
    )


class LightningDiTNet(DiTNet):
    """DiTNet with RMSNorm, SwiGLU, 2-D RoPE, optional QK-norm and a trainable sin-cos position embedding."""

    def __init__(self, cfg: LightningDiTConfig) -> None:
        super().__init__(cfg, norm="rms", mlp="swiglu", qk_norm=cfg.qk_norm, rope=True, learn_pos=True)


class LightningDiT(DiTFamily):
    """LightningDiT: `LightningDiTNet` + flow matching with logit-normal t; shifted Euler sampling."""

    sampling = Sampling(steps="Euler time points on the shifted grid (steps - 1 model calls)", default_steps="100")

    def __init__(self, cfg: LightningDiTConfig) -> None:
        if cfg.learn_sigma:
            raise ValueError("LightningDiT predicts a velocity: learn_sigma must be False")
        super().__init__(cfg.latent_shape, cfg.num_classes, cfg.label_dropout)
        self.cfg = cfg
        self.net = LightningDiTNet(cfg)
        self.transport = FlowTransport(t_sampling="logit_normal", t_mean=cfg.t_mean, t_std=cfg.t_std)

    def loss(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean velocity MSE (+ cosine loss if `use_cosine_loss`) over latents (B, C, H, W)."""
        y = self.drop_labels(labels, rng)
        out = self.transport.training_losses(self.conditional_fn(y), latents, rng=rng)
        loss = (out["loss"] + out["cos_loss"]) if self.cfg.use_cosine_loss else out["loss"]
        return {
            "loss": loss.mean(),
            "mse": out["loss"].mean().detach(),
            "cos_loss": out["cos_loss"].mean().detach(),
        }

    def _sample(
        self, n: int, labels: torch.Tensor | None, *, cfg_scale: float, steps: int | str | None,
        head_steps: None, rng: torch.Generator | None, progress: bool,
    ) -> torch.Tensor:
        """n latents (n, C, H, W) by Euler on the shifted grid; CFG only for t >= cfg_interval_start."""
        num = int(steps or self.cfg.sample_steps)

        def sampler(fn: ModelFn, noise: torch.Tensor) -> torch.Tensor:
            shift = self.cfg.timestep_shift
            return self.transport.sample_ode(
                fn, noise, steps=num, method="euler", shift=shift, progress=progress
            )

        return self.run_sampler(
            sampler, n, labels, cfg_scale, rng, interval=(self.cfg.cfg_interval_start, 1.0)
        )


register_family(Family(
    "generator", "lightningdit", "LightningDiT: DiT with RMSNorm, SwiGLU, RoPE; flow matching, shifted Euler",
    recipe="quickstart_lightningdit", sampling=LightningDiT.sampling, config=LightningDiTConfig, paper="arXiv 2501.01423",
))
register_presets("lightningdit", LightningDiT, LightningDiTConfig)
