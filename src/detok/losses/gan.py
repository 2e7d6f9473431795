"""PatchGAN discriminator (taming's NLayerDiscriminator layout) and hinge losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KERNEL = 4
PADDING = 1
MAX_CHANNEL_MULT = 8
LEAKY_SLOPE = 0.2
INIT_STD = 0.02  # taming / pix2pix init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)


class PatchDiscriminator(nn.Module):
    """PatchGAN: `layers` stride-2 4x4 convs, one stride-1 4x4 conv, then a 1-channel 4x4 logit conv.

    Output is a logit map (B, 1, h, w) with h = H // 2**layers - 2 (floor at every stride-2 conv): 30x30 for
    256 px, 2x2 for 32 px, with the default layers=3. Inputs smaller than `min_input_size()` (24 px for
    layers=3) would give an empty map and raise. State-dict keys (`main.{i}.*`) match taming's layout.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        layers: int = 3,
        rng: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.layers = layers
        widths = [channels * min(2**i, MAX_CHANNEL_MULT) for i in range(layers + 1)]
        seq: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], KERNEL, stride=2, padding=PADDING),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        ]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1  # the last feature conv keeps the resolution (minus one)
            seq += [
                nn.Conv2d(widths[i - 1], widths[i], KERNEL, stride=stride, padding=PADDING, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            ]
        seq.append(nn.Conv2d(widths[layers], 1, KERNEL, stride=1, padding=PADDING))
        self.main = nn.Sequential(*seq)
        self.reset_parameters(rng)

    @torch.no_grad()
    def reset_parameters(self, rng: torch.Generator | None = None) -> None:
        """Conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), all biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, INIT_STD, generator=rng)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, INIT_STD, generator=rng)
                nn.init.zeros_(m.bias)

    def output_size(self, size: int) -> int:
        """Side of the logit map for an input side `size`."""
        for _ in range(self.layers):
            size = (size + 2 * PADDING - KERNEL) // 2 + 1
        return size - 2  # two stride-1 4x4 convs with padding 1 each remove one pixel

    def min_input_size(self) -> int:
        """Smallest input side that gives a non-empty logit map."""
        return 3 * 2**self.layers

    def forward(self, x: Tensor) -> Tensor:
        """Logit map (B, 1, h, w) for images (B, C, H, W)."""
        if min(self.output_size(x.shape[-2]), self.output_size(x.shape[-1])) < 1:
            raise ValueError(
                f"PatchDiscriminator(layers={self.layers}) needs inputs of at least "
                f"{self.min_input_size()} px, got {tuple(x.shape[-2:])}"
            )
        return self.main(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss 0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator hinge loss -mean D(fake)."""
    return -logits_fake.mean()
