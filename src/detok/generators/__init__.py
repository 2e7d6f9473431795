"""Generators on tokenizer latents (importing this module registers every family, in table order)."""

from detok.generators import dit, sit, lightningdit, mar, ar, ddt_ar  # noqa: F401, I001  (registration, in this order)
from detok.generators.base import Generator

__all__ = ["Generator"]
