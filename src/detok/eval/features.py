"""The feature-network interface every generation / reconstruction metric reads images through.

A feature net maps uint8 images (B, 3, H, W) (values 0-255, any H, W: the net resizes as its recipe
says) to a dict of float tensors:

- "pool":    (B, dim) features for the Frechet distance and precision / recall (always present);
- "logits":  (B, K) class logits, when the net has a classifier (Inception Score, class accuracy);
- "spatial": (B, D) spatial features for sFID, when the net has them.

Every metric reports `recipe()` of the net beside its value, so a number always names what computed it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class FeatureNet(Protocol):
    """What `detok.eval.metrics` needs from a feature network (Inception, a domain classifier, ...)."""

    name: str  # e.g. "inception-v3-tf-2015-12-05" or "domain-cnn/fashion-mnist"
    weights_sha256: str  # sha256 (hex, first 16) of the weights that produced the features
    dim: int  # width of "pool"
    resize: str  # how images reach the net's input size, e.g. "tf-bilinear 299" or "none (32 px)"

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


def recipe(net: FeatureNet) -> dict[str, Any]:
    """The part of every metric's recipe that names its feature network."""
    return {"feature_net": net.name, "weights_sha256": net.weights_sha256, "dim": net.dim, "resize": net.resize}


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 (16 hex) over a state dict's names and float32 values, in sorted name order."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """sha256 (16 hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]
