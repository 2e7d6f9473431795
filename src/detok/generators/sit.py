"""SiT: the DiT backbone trained by flow matching (linear path, velocity prediction, uniform t).

"SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant Transformers",
Ma et al., arXiv 2401.08740.

l-DeTok setting: x_t = t x1 + (1 - t) x0 with x0 noise and x1 data (t = 1 is data), t ~ U(0, 1),
sampling by the adaptive dopri5 ODE solver (atol 1e-6, rtol 1e-3) with 250 output time points,
CFG on all channels (paper: cfg 1.6).

Axis letters: B batch, C latent channels, H/W latent height/width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from detok.generators.dit import BackboneConfig, DiTFamily, DiTNet, ModelFn, register_presets
from detok.processes.flow import FlowTransport
from detok.registry import Family, Sampling, register_family

Sampler = Literal["dopri5", "heun", "euler", "sde"]


@dataclass
class SiTConfig(BackboneConfig):
    """SiT on tokenizer latents; defaults are l-DeTok's SiT-B (patch 1, uniform t, dopri5)."""

    sampler: Sampler = field(
        default="dopri5", metadata={"help": "ODE solver (dopri5 = paper, adaptive) or 'sde' (Euler-Maruyama)"}
    )
    sample_steps: int = field(
        default=250,
        metadata={"help": "time points (steps - 1 intervals); dopri5: output points only (paper 250)"},
    )
    atol: float = 1e-6  # dopri5 tolerances (upstream SiT / l-DeTok)
    rtol: float = 1e-3
    t_sampling: Literal["uniform", "logit_normal"] = field(
        default="uniform", metadata={"help": "training t: uniform (SiT paper) or sigmoid(N(t_mean, t_std))"}
    )
    t_mean: float = 0.0
    t_std: float = 1.0


class SiT(DiTFamily):
    """SiT: `DiTNet` (velocity output, C channels) + flow matching with uniform t."""

    sampling = Sampling(steps="ODE / SDE time points from noise to data (steps - 1 intervals; dopri5: output "
                        "points of the adaptive solver)", default_steps="250")

    def __init__(self, cfg: SiTConfig) -> None:
        if cfg.learn_sigma:
            raise ValueError("SiT predicts a velocity: learn_sigma must be False")
        super().__init__(cfg.latent_shape, cfg.num_classes, cfg.label_dropout)
        self.cfg = cfg
        self.net = DiTNet(cfg)
        self.transport = FlowTransport(t_sampling=cfg.t_sampling, t_mean=cfg.t_mean, t_std=cfg.t_std)

    def loss(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean velocity MSE over latents (B, C, H, W)."""
        y = self.drop_labels(labels, rng)
        out = self.transport.training_losses(self.conditional_fn(y), latents, rng=rng)
        return {"loss": out["loss"].mean()}

    def _sample(
        self, n: int, labels: torch.Tensor | None, *, cfg_scale: float, steps: int | str | None,
        head_steps: None, rng: torch.Generator | None, progress: bool,
    ) -> torch.Tensor:
        """n latents (n, C, H, W) integrated from noise (t = 0) to data (t = 1) with `cfg.sampler`."""
        num = int(steps or self.cfg.sample_steps)
        method = self.cfg.sampler

        def sampler(fn: ModelFn, noise: torch.Tensor) -> torch.Tensor:
            if method == "sde":
                return self.transport.sample_sde(fn, noise, steps=num, rng=rng, progress=progress)
            return self.transport.sample_ode(
                fn, noise, steps=num, method=method, atol=self.cfg.atol, rtol=self.cfg.rtol, progress=progress
            )

        return self.run_sampler(sampler, n, labels, cfg_scale, rng)


register_family(Family(
    "generator", "sit", "SiT: DiT backbone trained by flow matching (velocity), ODE sampling",
    recipe="quickstart_sit", sampling=SiT.sampling, config=SiTConfig, paper="arXiv 2401.08740",
))
register_presets("sit", SiT, SiTConfig)
