"""Reconstruction metrics on uint8-rounded images: streaming PSNR and SSIM."""

from __future__ import annotations

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 values (rounded, clamped), as saved PNGs hold them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of two uint8 batches (B, 3, H, W) on the [0, 1] scale; identical images -> inf."""
    mse = (a.double() / 255 - b.double() / 255).pow(2).flatten(1).mean(1)  # (B,)
    return -10 * torch.log10(mse)


def ssim_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM per image (Gaussian window 11, sigma 1.5, data range 1) of two uint8 batches."""
    from torchmetrics.functional.image import (
        structural_similarity_index_measure,  # slow import: only when used
    )

    x, y = a.double() / 255, b.double() / 255
    kernel = min(11, x.shape[-1] - (1 - x.shape[-1] % 2))  # odd, no larger than the image
    return structural_similarity_index_measure(x, y, data_range=1.0, kernel_size=kernel, reduction="none")


class ReconMetrics:
    """Streaming mean PSNR / SSIM over batches of [-1, 1] images (reset / update / compute).

    float64 sums. With `distributed=True` every rank must call compute(), which sums all ranks' images;
    the default keeps the numbers local (e.g. the main process reconstructing alone after training).
    """

    def __init__(self, distributed: bool = False) -> None:
        self.distributed = distributed
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)  # images, PSNR sum, SSIM sum

    def update(self, images: torch.Tensor, recon: torch.Tensor) -> None:
        a, b = to_uint8(images).cpu(), to_uint8(recon).cpu()
        self.sums += torch.tensor(
            [a.shape[0], float(psnr_per_image(a, b).clamp_max(100.0).sum()), float(ssim_per_image(a, b).sum())],
            dtype=torch.float64,
        )

    def compute(self) -> dict[str, float]:
        from detok.dist import all_reduce_sum

        sums = all_reduce_sum(self.sums.clone()) if self.distributed else self.sums
        n, psnr, ssim = sums.tolist()
        if n == 0:
            raise ValueError("no images seen")
        return {"psnr": psnr / n, "ssim": ssim / n, "n": int(n)}
