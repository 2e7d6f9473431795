"""A latent-size-invariant KL weight, the latents' scale logged in training, and the inflation warning."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from detok.engine.tasks import TokenizerTask
from detok.losses.tokenizer_loss import TokenizerLoss, TokenizerLossConfig
from detok.registry import build

NO_PERCEPTUAL = {"perceptual_weight": 0.0}


def _loss(latent_numel, **cfg) -> TokenizerLoss:
    return TokenizerLoss(TokenizerLossConfig(**{**NO_PERCEPTUAL, **cfg}), latent_numel=latent_numel)


def test_latent_size_kl_means_the_paper_weight_at_the_paper_size_and_scales_elsewhere():
    assert _loss(16 * 16 * 16, kl_scale="latent_size").kl_weight == pytest.approx(1e-6)  # paper size: unchanged
    assert _loss(4 * 4 * 4, kl_scale="latent_size").kl_weight == pytest.approx(6.4e-5)  # 4096 / 64 stronger
    assert _loss(4 * 4 * 4).kl_weight == 1e-6  # default: the paper's rule at any size
    x = torch.zeros(2, 3, 8, 8)
    recon = torch.full_like(x, 0.5)
    plain = _loss(64).generator_loss(x, recon, torch.tensor(10.0), gan_active=False)
    scaled = _loss(64, kl_scale="latent_size").generator_loss(x, recon, torch.tensor(10.0), gan_active=False)
    assert scaled["loss"] - plain["loss"] == pytest.approx(10.0 * (6.4e-5 - 1e-6), rel=1e-5)
    assert scaled["kl"] == plain["kl"] == 10.0  # the logged KL stays the unweighted sum
    with pytest.raises(ValueError, match="latent size"):
        TokenizerLoss(TokenizerLossConfig(**NO_PERCEPTUAL, kl_scale="latent_size"))


def _task(scale: float, inflation_warn: float = 1.0) -> TokenizerTask:
    torch.manual_seed(0)
    model = build("tokenizer", "detok_tiny", image_size=32, gamma=3.0)
    with torch.no_grad():  # the posterior means' scale follows the encoder's output projection
        head = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    loss = _loss(math.prod(model.latent_shape), inflation_warn=inflation_warn)
    return TokenizerTask(model.train(), loss, disc_start_step=10**9, hflip=False)


def test_task_logs_the_std_of_posterior_means_and_warns_once_when_latents_outgrow_gamma():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    calm = _task(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, logs = calm.step({"image": x}, 0, torch.Generator().manual_seed(2))
    with torch.no_grad():
        means = calm.model.encoder(x, None, None)[..., : calm.model.cfg.latent_dim]  # unmasked: all tokens
    assert 0 < float(logs["latent_mean_std"]) < 3.0 and float(means.std()) < 3.0
    inflated = _task(200.0)
    with pytest.warns(RuntimeWarning, match="gamma"):
        _, logs = inflated.step({"image": x}, 0, torch.Generator().manual_seed(2))
    assert float(logs["latent_mean_std"]) > 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run, not every step
        inflated.step({"image": x}, 25, torch.Generator().manual_seed(3))  # a checked step: no second warning
        _task(200.0, inflation_warn=0.0).step({"image": x}, 0, torch.Generator().manual_seed(2))  # 0 = off
