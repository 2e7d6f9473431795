"""detok: denoising visual tokenizers (l-DeTok) and the generators trained on their latents.

    import detok
    tok = detok.load_tokenizer("runs/quickstart/tokenizer")
    gen = detok.load_generator("runs/quickstart/sit")
    images = detok.sample(gen, tok, labels=[0, 1, 2], cfg_scale=2.0, seed=0)
    detok.save_grid(images, "samples.png", labels=[0, 1, 2])

The names are imported lazily (`import detok` stays cheap, as the CLI needs); see `detok.runs.api`.
The verbs that write run folders (train, encode, evaluate, ...) are in `detok.runs`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = ("load_tokenizer", "load_generator", "sample", "encode", "decode", "save_grid")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("detok.runs.api"), name)
    raise AttributeError(f"module 'detok' has no attribute {name!r}")
