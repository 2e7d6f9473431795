"""Generators on tokenizer latents (importing this module registers every family)."""

from detok.generators import ar, dit, lightningdit, mar, sit  # noqa: F401  (registration)
from detok.generators.base import Generator

__all__ = ["Generator"]
