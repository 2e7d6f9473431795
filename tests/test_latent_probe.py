"""benchmarks/latent_probe.py: the probe reads a class that the latents carry, and only that."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from latent_probe import HELD_OUT, train_probe  # noqa: E402


def _latents(n: int = 1000, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise latents (n, 4, 4, 4) with the class written as +3 on one channel of one corner token."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    z = torch.randn(n, 4, 4, 4, generator=g)
    z[torch.arange(n), y, 0, 0] += 3.0
    return z, y


def test_the_probe_reads_a_class_the_latents_carry():
    z, y = _latents()
    _, acc = train_probe(z, y, 4, steps=200)
    assert acc["held_out"] > 0.8 and acc["train"] > 0.8


def test_the_probe_is_at_chance_on_labels_the_latents_do_not_carry():
    z, y = _latents()
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    _, acc = train_probe(z, shuffled, 4, steps=200)
    n_test = round(HELD_OUT * len(y))
    assert abs(acc["held_out"] - 0.25) < 3 * (0.25 * 0.75 / n_test) ** 0.5 + 0.05
