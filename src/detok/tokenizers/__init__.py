"""Tokenizers: the interface, l-DeTok, outside autoencoders, DDT and the spatial VQ baseline (importing this
registers the families)."""

from detok.tokenizers import detok, external, ddt, spatial_vq  # noqa: F401, I001  (registration, in this order)
from detok.tokenizers.base import DiagonalGaussian, DiscreteTokenizer, Tokenizer
from detok.tokenizers.ddt import DDT
from detok.tokenizers.detok import PRESETS, DeTok, DetokConfig, detok_config
from detok.tokenizers.spatial_vq import SpatialVQ

__all__ = ["DDT", "DeTok", "DiscreteTokenizer", "DetokConfig", "DiagonalGaussian", "PRESETS", "SpatialVQ", "Tokenizer",
           "detok_config"]
