"""Tokenizers: the interface, l-DeTok and outside autoencoders (importing this registers the families)."""

from detok.tokenizers import detok, external  # noqa: F401, I001  (registration, in this order)
from detok.tokenizers.base import DiagonalGaussian, Tokenizer
from detok.tokenizers.detok import PRESETS, DeTok, DetokConfig, detok_config

__all__ = ["DeTok", "DetokConfig", "DiagonalGaussian", "PRESETS", "Tokenizer", "detok_config"]
