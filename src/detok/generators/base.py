"""The Generator interface: a pure network plus a process object, trained and sampled on tokenizer latents.

Latents are the tokenizer's *normalised* latents (B, C, h, w). Labels are class indices (B,) in
[0, num_classes); index `num_classes` is the null class used for classifier-free guidance, which every
generator learns by dropping labels with probability `label_dropout` (0.1) during training.
"""

from __future__ import annotations

import torch
from torch import nn

LABEL_DROPOUT = 0.1  # classifier-free guidance training (DiT / MAR / l-DeTok)


class Generator(nn.Module):
    """Base of all generators: exactly `loss(latents, labels)` and `sample(n, labels, *, cfg, steps, generator)`."""

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
        labels: torch.Tensor | None,
        *,
        cfg: float = 1.0,
        steps: int | str | None = None,
        rng: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """n normalised latents (n, C, h, w) for `labels` (n,) (None: unconditional / null class)."""
        raise NotImplementedError
