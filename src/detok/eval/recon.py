"""Reconstruction metrics on uint8-rounded images: streaming PSNR and SSIM (`SSIM_CONVENTION`: Wang et al.'s
Gaussian SSIM over the valid interior, as ssim.m and scikit-image report it)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 values (rounded, clamped), as saved PNGs hold them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of two uint8 batches (B, 3, H, W) on the [0, 1] scale; identical images -> inf."""
    mse = (a.double() / 255 - b.double() / 255).pow(2).flatten(1).mean(1)  # (B,)
    return -10 * torch.log10(mse)


SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
SSIM_CONVENTION = (
    "gaussian 11 / 1.5, K1 0.01, K2 0.03, data range 1, valid interior, mean over RGB "
    "(Wang et al. ssim.m, scikit-image)"
)


def _gaussian_taps(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """A normalised 1-D Gaussian window (size,) in float64, centred on its middle tap."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM per image (B,) of two uint8 batches (B, C, H, W), float64, in the field's convention.

    `SSIM_CONVENTION`: a separable Gaussian window of 11 taps, sigma 1.5, K1 = 0.01, K2 = 0.03 on the
    [0, 1] scale (data range 1), population (not sample) covariances; the SSIM map is averaged over the
    valid interior only, i.e. where the whole window lies inside the image, as Wang et al.'s ssim.m
    (`filter2(..., 'valid')`) and scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)` do, per channel, then the mean over channels. (Averaging
    the padded full map instead, as torchmetrics does, counts the border: at 32 px that is half the map.)
    Images smaller than 11 px use the largest odd window that fits, min(H, W) or one less, still sigma 1.5.
    """
    if a.dtype != torch.uint8 or b.dtype != torch.uint8 or a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"SSIM needs two uint8 batches (B, C, H, W) of one shape, got {a.dtype} {tuple(a.shape)} "
            f"and {b.dtype} {tuple(b.shape)}"
        )
    n, c, h, w = a.shape
    x, y = a.double() / 255, b.double() / 255  # (B, C, H, W) on the [0, 1] scale
    size = min(SSIM_WINDOW, min(h, w) - (1 - min(h, w) % 2))  # odd, no larger than the image
    g = _gaussian_taps(size, SSIM_SIGMA, x.device)
    moments = torch.stack([x, y, x * x, y * y, x * y]).reshape(5 * n * c, 1, h, w)  # every map its own image
    moments = F.conv2d(moments, g.view(1, 1, size, 1))  # along H, valid: (5BC, 1, H - size + 1, W)
    moments = F.conv2d(moments, g.view(1, 1, 1, size))  # along W, valid: (5BC, 1, H - size + 1, W - size + 1)
    mu_x, mu_y, xx, yy, xy = moments.reshape(5, n, c, h - size + 1, w - size + 1).unbind(0)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K * data range)^2 with data range 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)  # per channel, then over channels: (B,)


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


def bicubic_side(values: int, channels: int = 3) -> int:
    """The side s of the s x s image with at most `values` numbers (s^2 * channels <= values), >= 1."""
    return max(1, math.isqrt(values // channels))


def bicubic_baseline(images: torch.Tensor, values: int) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] kept as `values` numbers each: antialiased bicubic down-sampling to
    the largest square that fits (see `bicubic_side`), then bicubic back up to H x W, clamped to [-1, 1].

    The reference an autoencoder with a latent of `values` numbers should beat: it has the same budget and
    knows nothing about the data.
    """
    side = bicubic_side(values, images.shape[1])
    small = F.interpolate(images.float(), size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False)  # (B, C, H, W)
    return up.clamp(-1, 1)
