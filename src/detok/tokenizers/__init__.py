"""Tokenizers: the interface, l-DeTok and outside autoencoders (importing this registers the families)."""

from detok.tokenizers import detok, external, ddt  # noqa: F401, I001  (registration, in this order)
from detok.tokenizers.base import DiagonalGaussian, DiscreteTokenizer, Tokenizer
from detok.tokenizers.ddt import DDT
from detok.tokenizers.detok import PRESETS, DeTok, DetokConfig, detok_config

__all__ = ["DDT", "DeTok", "DiscreteTokenizer", "DetokConfig", "DiagonalGaussian", "PRESETS", "Tokenizer", "detok_config"]
