"""The Generator interface: a pure network plus a process object, trained and sampled on tokenizer latents.

Latents are the tokenizer's *normalised* latents (B, C, h, w). Labels are class indices (B,) in
[0, num_classes); index `num_classes` is the null class used for classifier-free guidance, which every
generator learns by dropping labels with probability `label_dropout` (0.1) during training.

Sampling has one signature for every family, `sample(n, labels, *, cfg_scale, steps, head_steps, rng)`:
`steps` is the sampler's outer loop (denoising steps / ODE time points / MAR iterations; fixed at one token
per step for autoregressive models) and `head_steps` the per-token diffusion head's steps; each family
declares what they count in its `sampling` (a `detok.registry.Sampling`, also shown by `--help`).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from detok.registry import Sampling

LABEL_DROPOUT = 0.1  # classifier-free guidance training (DiT / MAR / l-DeTok)


class Generator(nn.Module):
    """Base of all generators: `loss(latents, labels, rng)` and `sample(n, labels, *, cfg_scale, steps, ...)`.

    Subclasses set `sampling` (what `steps` / `head_steps` count) and implement `_sample`; `sample` checks the
    arguments against `sampling` and maps the deprecated spellings (`cfg=`, `generator=`, MAR's
    `diffusion_steps=`) with a DeprecationWarning.
    """

    sampling: ClassVar[Sampling]

    def __init__(self, latent_shape: tuple[int, int, int], num_classes: int, label_dropout: float = LABEL_DROPOUT):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        self.num_classes = num_classes
        self.label_dropout = label_dropout

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop_labels(self, labels: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """Replace each label by the null class with probability `label_dropout` (training only)."""
        if not self.training or self.label_dropout <= 0:
            return labels
        drop = torch.rand(labels.shape, generator=rng, device=labels.device) < self.label_dropout
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def loss(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Training losses on latents (B, C, h, w) with labels (B,); "loss" is the scalar to minimise."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        *,
        cfg_scale: float = 1.0,
        steps: int | str | None = None,
        head_steps: int | str | None = None,
        rng: torch.Generator | None = None,
        progress: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """n normalised latents (n, C, h, w) for `labels` (n,) (None: unconditional / null class).

        cfg_scale: classifier-free guidance scale (1 = conditional model, no guidance).
        steps: the sampler's outer steps as `self.sampling.steps` says (None: the config's default).
        head_steps: the per-token diffusion head's steps (MAR, RasterAR, RandomAR; None: the default).
        rng: the torch.Generator every random draw comes from (None: torch's global RNG).
        options: family-specific sampler options (e.g. temperature, use_kv_cache).
        """
        cfg_scale, rng, head_steps = _deprecated_sample_options(options, cfg_scale, rng, head_steps)
        if head_steps is not None and not self.sampling.head_steps:
            raise ValueError(f"{type(self).__name__} has no per-token diffusion head: head_steps does not apply "
                             f"(its steps are {self.sampling.steps})")
        if steps is not None and self.sampling.fixed_steps:
            raise ValueError(f"{type(self).__name__} samples {self.sampling.steps}: steps is not a choice; "
                             f"the per-token head's steps are head_steps")
        return self._sample(n, labels, cfg_scale=float(cfg_scale), steps=steps, head_steps=head_steps, rng=rng,
                            progress=progress, **options)

    def _sample(
        self, n: int, labels: torch.Tensor | None, *, cfg_scale: float, steps: int | str | None,
        head_steps: int | str | None, rng: torch.Generator | None, progress: bool, **options: Any,
    ) -> torch.Tensor:
        raise NotImplementedError


_DEPRECATED = {"cfg": "cfg_scale", "generator": "rng", "diffusion_steps": "head_steps"}


def _deprecated_sample_options(options: dict[str, Any], cfg_scale: float, rng, head_steps):
    """Map the pre-0.2 keyword spellings onto the current ones (warning once per call site)."""
    for old, new in _DEPRECATED.items():
        if old in options:
            warnings.warn(f"sample({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=4)
            value = options.pop(old)
            if new == "cfg_scale":
                cfg_scale = value
            elif new == "rng":
                rng = value
            else:
                head_steps = value
    return cfg_scale, rng, head_steps
