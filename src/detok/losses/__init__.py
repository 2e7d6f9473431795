"""Tokenizer losses: pixel reconstruction, KL, perceptual (LPIPS-VGG16, ConvNeXt-S logits), PatchGAN hinge."""

from detok.losses.gan import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from detok.losses.perceptual import LPIPS, ConvNeXtLogitLoss, find_lpips_heads
from detok.losses.tokenizer_loss import TokenizerLoss, TokenizerLossConfig
from detok.losses.weights import find_weights, search_dirs

__all__ = [
    "LPIPS",
    "ConvNeXtLogitLoss",
    "PatchDiscriminator",
    "TokenizerLoss",
    "TokenizerLossConfig",
    "find_lpips_heads",
    "find_weights",
    "hinge_d_loss",
    "hinge_g_loss",
    "search_dirs",
]
