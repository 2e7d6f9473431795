"""Tokenizers: the interface and l-DeTok (importing this module registers the presets)."""

from detok.tokenizers.base import DiagonalGaussian, Tokenizer
from detok.tokenizers.detok import PRESETS, DeTok, DetokConfig, detok_config

__all__ = ["DeTok", "DetokConfig", "DiagonalGaussian", "PRESETS", "Tokenizer", "detok_config"]
