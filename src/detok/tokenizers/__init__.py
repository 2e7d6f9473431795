"""Tokenizers: the interface, l-DeTok and outside autoencoders (importing this registers the presets)."""

from detok.tokenizers import external  # noqa: F401  (registers mar-kl16, sd-vae)
from detok.tokenizers.base import DiagonalGaussian, Tokenizer
from detok.tokenizers.detok import PRESETS, DeTok, DetokConfig, detok_config

__all__ = ["DeTok", "DetokConfig", "DiagonalGaussian", "PRESETS", "Tokenizer", "detok_config"]
