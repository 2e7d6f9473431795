"""The l-DeTok tokenizer loss: pixel reconstruction + perceptual (LPIPS, ConvNeXt) + KL + PatchGAN hinge.

total = recon_weight * R + perceptual_weight * P + kl_weight * KL + [gan_active] disc_weight * -mean D(x_hat)
with R computed in [0, 1] pixel space and P = (lpips_weight * LPIPS + convnext_weight * ConvNeXt) /
(lpips_weight + convnext_weight), everything in float32 with autocast off (as upstream). The discriminator
is the only trainable part; the perceptual nets are frozen and kept out of `trainable_state_dict()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from detok.losses.gan import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from detok.losses.perceptual import LPIPS, ConvNeXtLogitLoss

RECON_KINDS = ("l2", "l1", "l2+l1")
PSNR_MIN_MSE = 1e-10  # caps the logged PSNR at 100 dB instead of inf for identical images
DISC_PREFIX = "discriminator."
WEIGHT_FIELDS = (
    "recon_weight",
    "kl_weight",
    "perceptual_weight",
    "lpips_weight",
    "convnext_weight",
    "disc_weight",
)


def _help(text: str, default: Any) -> Any:
    """A dataclass field with a default and a help string for `--help` listings."""
    return field(default=default, metadata={"help": text})


@dataclass
class TokenizerLossConfig:
    """Weights and perceptual / discriminator settings of the l-DeTok loss; defaults follow the paper."""

    recon: Literal["l2", "l1", "l2+l1"] = _help("pixel loss in [0, 1] space; l2+l1 averages both", "l2")
    recon_weight: float = _help("weight of the pixel loss", 1.0)
    kl_weight: float = _help("weight of the KL term (paper 1e-6)", 1e-6)
    kl_scale: Literal["sum", "latent_size"] = _help(
        "sum: kl_weight on the KL summed over latent numbers (paper); latent_size: kl_weight means the same "
        "per-number pressure at any latent size (x kl_reference_numel / latent numbers)", "sum")
    kl_reference_numel: int = _help("latent numbers at which latent_size scaling is 1 (paper 16x16x16)", 4096)
    inflation_warn: float = _help(
        "warn when the posterior means' std exceeds this x gamma (the encoder escaping the latent noise); 0 off",
        1.0)
    perceptual_weight: float = _help(
        "weight of P (paper/upstream 1.0, decoder FT 0.1); 0 builds no nets", 1.0
    )
    lpips_weight: float = _help("LPIPS share of P = (w_l LPIPS + w_c ConvNeXt) / (w_l + w_c)", 1.0)
    convnext_weight: float = _help("ConvNeXt-S logit-MSE share of P", 0.1)
    perceptual_pretrained: bool = _help("false: random-init nets of the same architecture (tests, CPU)", True)
    vgg_path: str = _help("torchvision vgg16 ImageNet state dict (vgg16-397923af.pth); empty: search", "")
    lpips_path: str = _help("LPIPS v0.1 linear heads (vgg.pth); empty: search, then the lpips package", "")
    convnext_path: str = _help("torchvision convnext_small IMAGENET1K_V1 (convnext_small-0c510722.pth)", "")
    disc_weight: float = _help(
        "GAN weight; upstream's effective 0.1 (its --discriminator_weight is dead)", 0.1
    )
    disc_layers: int = _help("PatchGAN stride-2 layers (taming n_layers)", 3)
    disc_channels: int = _help("PatchGAN base width (taming ndf)", 64)


class TokenizerLoss(nn.Module):
    """Generator and discriminator losses of l-DeTok; only `discriminator` has trainable parameters."""

    def __init__(self, cfg: TokenizerLossConfig, rng: torch.Generator | None = None,
                 latent_numel: int | None = None) -> None:
        super().__init__()
        if cfg.kl_scale == "latent_size" and not latent_numel:
            raise ValueError("kl_scale=latent_size needs the latent size (numbers per image)")
        # the KL weight in effect: the paper's rule (sum) or rescaled to mean the same at any latent size
        self.kl_weight = cfg.kl_weight * (cfg.kl_reference_numel / latent_numel if cfg.kl_scale == "latent_size"
                                          else 1.0)
        if cfg.recon not in RECON_KINDS:
            raise ValueError(f"recon must be one of {RECON_KINDS}, got {cfg.recon!r}")
        for name in WEIGHT_FIELDS:
            if getattr(cfg, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
        use_perceptual = cfg.perceptual_weight > 0
        if use_perceptual and cfg.lpips_weight + cfg.convnext_weight <= 0:
            raise ValueError("perceptual_weight > 0 needs lpips_weight + convnext_weight > 0")
        self.cfg = cfg
        self.lpips: LPIPS | None = None
        self.convnext: ConvNeXtLogitLoss | None = None
        if use_perceptual and cfg.lpips_weight > 0:
            self.lpips = LPIPS(cfg.perceptual_pretrained, cfg.vgg_path, cfg.lpips_path, rng=rng)
        if use_perceptual and cfg.convnext_weight > 0:
            self.convnext = ConvNeXtLogitLoss(cfg.perceptual_pretrained, cfg.convnext_path)
        self.discriminator = PatchDiscriminator(3, cfg.disc_channels, cfg.disc_layers, rng=rng)

    def perceptual(self, images: Tensor, recon: Tensor) -> Tensor:
        """P = weighted average of batch-mean LPIPS and ConvNeXt logit MSE (0 when no net is built)."""
        total = images.new_zeros(())
        if self.lpips is not None:
            total = total + self.cfg.lpips_weight * self.lpips(images, recon).mean()
        if self.convnext is not None:
            total = total + self.cfg.convnext_weight * self.convnext(images, recon)
        if self.lpips is None and self.convnext is None:
            return total
        return total / (self.cfg.lpips_weight + self.cfg.convnext_weight)

    def _fake_logits_frozen(self, recon: Tensor) -> Tensor:
        """D(recon) with D's parameters detached: grads reach `recon` only, D's .grad stays untouched."""
        params = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (recon,), strict=False)

    def generator_loss(
        self, images: Tensor, recon: Tensor, kl: Tensor | float, gan_active: bool
    ) -> dict[str, Tensor]:
        """Total tokenizer loss ("loss", differentiable) and its detached, unweighted parts."""
        cfg = self.cfg
        with torch.autocast(device_type=images.device.type, enabled=False):
            x, xr = images.float(), recon.float()
            kl_t = torch.as_tensor(kl, device=x.device).float()
            x01, xr01 = x * 0.5 + 0.5, xr * 0.5 + 0.5  # upstream's [0, 1] pixel space
            mse = F.mse_loss(xr01, x01)
            if cfg.recon == "l2":
                rec = mse
            elif cfg.recon == "l1":
                rec = F.l1_loss(xr01, x01)
            else:
                rec = 0.5 * (mse + F.l1_loss(xr01, x01))
            perc = self.perceptual(x, xr)
            gan = x.new_zeros(())
            if gan_active and cfg.disc_weight > 0:
                gan = hinge_g_loss(self._fake_logits_frozen(xr))
            total = cfg.recon_weight * rec + cfg.perceptual_weight * perc + self.kl_weight * kl_t
            if gan_active:
                total = total + cfg.disc_weight * gan
            psnr = -10.0 * torch.log10(mse.detach().clamp_min(PSNR_MIN_MSE))
        return {
            "loss": total,
            "recon": rec.detach(),
            "perceptual": perc.detach(),
            "kl": kl_t.detach(),
            "gan": gan.detach(),
            "psnr": psnr,
        }

    def discriminator_loss(self, images: Tensor, recon: Tensor) -> dict[str, Tensor]:
        """Hinge loss of D on real images and detached reconstructions, plus mean logits for logging."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            logits_real = self.discriminator(images.detach().float())
            logits_fake = self.discriminator(recon.detach().float())
            loss = hinge_d_loss(logits_real, logits_fake)
        return {
            "loss": loss,
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }

    def forward(
        self,
        images: Tensor,
        recon: Tensor,
        kl: Tensor | float = 0.0,
        gan_active: bool = False,
        mode: Literal["generator", "discriminator"] = "generator",
    ) -> dict[str, Tensor]:
        """Dispatch to `generator_loss` or `discriminator_loss` (lets the module be wrapped in DDP)."""
        if mode == "generator":
            return self.generator_loss(images, recon, kl, gan_active)
        if mode == "discriminator":
            return self.discriminator_loss(images, recon)
        raise ValueError(f"mode must be 'generator' or 'discriminator', got {mode!r}")

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """State of the trainable part only (the discriminator), keys prefixed `discriminator.`."""
        return {DISC_PREFIX + k: v for k, v in self.discriminator.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor], strict: bool = True) -> None:
        """Load what `trainable_state_dict()` saved (keys with or without the `discriminator.` prefix)."""
        if state and all(k.startswith(DISC_PREFIX) for k in state):
            state = {k[len(DISC_PREFIX) :]: v for k, v in state.items()}
        self.discriminator.load_state_dict(state, strict=strict)
