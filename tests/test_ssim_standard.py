"""SSIM is the field's SSIM: Wang et al.'s Gaussian window over the valid interior, as scikit-image computes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detok.eval.recon import SSIM_CONVENTION, ssim_per_image

skimage_metrics = pytest.importorskip(
    "skimage.metrics", reason="scikit-image is the SSIM reference (pip install scikit-image)"
)


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth 32 x 32 RGB pattern (1, 3, 32, 32) uint8, a noisy copy and a blurred-and-noisy copy (seeded)."""
    rng = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    base = torch.stack([torch.sin(xx / 5) + torch.cos(yy / 7), torch.sin((xx + yy) / 6), torch.cos(xx * yy / 150)])
    a = ((base - base.min()) / (base.max() - base.min()) * 255).round().to(torch.uint8)[None]  # (1, 3, 32, 32)
    noise = torch.randn(a.shape, generator=rng, dtype=torch.float64)
    noisy = (a.double() + 20 * noise).round().clamp(0, 255).to(torch.uint8)
    blur = torch.nn.functional.avg_pool2d(a.double(), 3, stride=1, padding=1, count_include_pad=False)
    blurred = (blur + 5 * torch.randn(a.shape, generator=rng, dtype=torch.float64)).round().clamp(0, 255)
    return a, noisy, blurred.to(torch.uint8)


def _skimage(a: torch.Tensor, b: torch.Tensor) -> float:
    """scikit-image's SSIM of one uint8 image pair (3, H, W) with Wang et al.'s parameters."""
    return float(skimage_metrics.structural_similarity(
        a.permute(1, 2, 0).numpy() / 255, b.permute(1, 2, 0).numpy() / 255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, channel_axis=-1,
    ))  # fmt: skip


def test_ssim_matches_scikit_image():
    a, noisy, blurred = _pair()
    got = ssim_per_image(torch.cat([a, a]), torch.cat([noisy, blurred]))  # one batch, no per-image loop
    assert got.dtype == torch.float64 and got.shape == (2,)
    for value, other in zip(got.tolist(), (noisy, blurred)):
        assert value == pytest.approx(_skimage(a[0], other[0]), abs=1e-6)
    assert "valid interior" in SSIM_CONVENTION and "11 / 1.5" in SSIM_CONVENTION


def test_identical_images_score_one_beside_a_different_pair():
    a, noisy, _ = _pair()
    got = ssim_per_image(torch.cat([a, a]), torch.cat([a, noisy]))
    assert got[0].item() == pytest.approx(1.0, abs=1e-12)
    assert got[1].item() == pytest.approx(_skimage(a[0], noisy[0]), abs=1e-6)


def test_differs_from_torchmetrics_full_map_average():
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, noisy, _ = _pair()
    ours = ssim_per_image(a, noisy).item()
    full_map = structural_similarity_index_measure(a.double() / 255, noisy.double() / 255, data_range=1.0,
                                                   reduction="none").item()  # padded border counted
    assert ours == pytest.approx(0.4997374046, abs=1e-8) and full_map == pytest.approx(0.4864378406, abs=1e-8)
    assert abs(ours - full_map) > 1e-2


def test_tiny_images_use_the_largest_odd_window_that_fits():
    """5 x 7 images: a 5-tap window (sigma 1.5), so the valid map is 1 x 3; checked against the formula."""
    rng = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (2, 3, 5, 7), generator=rng, dtype=torch.uint8)
    b = torch.randint(0, 256, (2, 3, 5, 7), generator=rng, dtype=torch.uint8)
    taps = np.exp(-((np.arange(5) - 2.0) ** 2) / (2 * 1.5**2))
    w = np.outer(taps, taps) / taps.sum() ** 2  # (5, 5), sums to 1
    c1, c2 = 0.01**2, 0.03**2
    want = np.zeros(2)
    for i in range(2):
        per_channel = []
        for ch in range(3):
            x, y = a[i, ch].double().numpy() / 255, b[i, ch].double().numpy() / 255
            vals = []
            for j in range(3):  # the three window positions along the width
                px, py = x[:, j : j + 5], y[:, j : j + 5]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                cov = (w * px * py).sum() - mx * my
                vals.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
            per_channel.append(np.mean(vals))
        want[i] = np.mean(per_channel)
    np.testing.assert_allclose(ssim_per_image(a, b).numpy(), want, rtol=0, atol=1e-12)


def test_bad_input_is_a_clear_error():
    a = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ssim_per_image(a.float(), a.float())
    with pytest.raises(ValueError, match="one shape"):
        ssim_per_image(a, a[..., :7])
