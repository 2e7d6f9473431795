"""Load MAR checkpoints released upstream (l-DeTok `mar_base` / `mar_large`, LTH14/mar) into detok's MAR.

The release is a `torch.save` dict with `model` (state_dict) and `model_ema` (parameter name -> tensor);
LTH14/mar files may also carry `args` (an argparse.Namespace), which is allow-listed for the safe
loader. detok's MAR uses upstream's parameter names, so conversion is a key-for-key copy; the config
is read off the tensor shapes. Attention heads are not visible in shapes: they come from the width
(detok's MAR presets) unless given; only the sizes upstream releases (`RELEASED_HEADS`) are known for
sure, and `released_heads` returns None for any other (`detok convert` then asks for `--heads`).
Latent channels C and patch p are read from the token width C * p * p, which is ambiguous unless given;
the released MARs use 16 channels with patch 1.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from detok.config import from_dict
from detok.generators.mar import MAR, MARConfig
from detok.io import read_tensors

HEADS_BY_WIDTH = {64: 2, 768: 12, 1024: 16, 1280: 16}  # mar_tiny, MAR-B, MAR-L, MAR-H
# (width, encoder depth, decoder depth) -> heads of the sizes LTH14/mar and l-DeTok build and release
# (mar_base, mar_large, mar_huge): the only shapes whose heads are known without being told
RELEASED_HEADS = {(768, 12, 12): 12, (1024, 16, 16): 16, (1280, 20, 20): 16}
RELEASED_LATENT_CHANNELS = 16  # KL-16 and l-DeTok latents, patch 1: token width 16


def load_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True (plus argparse.Namespace, which LTH14/mar saves as `args`)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return read_tensors(path, "checkpoint")


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(rf"^{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def shape_key(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(width, encoder depth, decoder depth) of an upstream MAR state dict."""
    return state["fake_latent"].shape[-1], _depth(state, "encoder_blocks"), _depth(state, "decoder_blocks")


def released_heads(state: dict[str, torch.Tensor]) -> int | None:
    """Heads of a MAR whose shape is a size upstream releases (`RELEASED_HEADS`), else None (not knowable)."""
    return RELEASED_HEADS.get(shape_key(state))


def token_width(state: dict[str, torch.Tensor]) -> int:
    """Channels of one MAR token, C * p * p (latent channels times patch area)."""
    return state["z_proj.weight"].shape[1]


def infer_config(
    state: dict[str, torch.Tensor], latent_channels: int = 16, heads: int | None = None, **overrides
) -> MARConfig:
    """MARConfig read off an upstream MAR state dict's shapes (eval defaults for the rest)."""
    width = state["fake_latent"].shape[-1]
    seq_len = state["diffusion_pos_embed_learned"].shape[1]
    token_dim = state["z_proj.weight"].shape[1]
    patch = math.isqrt(token_dim // latent_channels)
    grid = math.isqrt(seq_len)
    if patch * patch * latent_channels != token_dim or grid * grid != seq_len:
        raise ValueError(f"cannot read a square grid: {seq_len} tokens of {token_dim} channels "
                         f"with {latent_channels} latent channels")  # fmt: skip
    if heads is None:
        if width not in HEADS_BY_WIDTH:
            raise ValueError(f"no MAR preset has width {width}; pass heads=")
        heads = HEADS_BY_WIDTH[width]
    if heads < 1 or width % heads:
        raise ValueError(f"MAR width {width} is not divisible by {heads} heads")
    fields = dict(
        latent_shape=(latent_channels, grid * patch, grid * patch),
        num_classes=state["class_emb.weight"].shape[0],  # LTH14/mar always stores 1000 rows
        patch_size=patch,
        width=width,
        encoder_depth=_depth(state, "encoder_blocks"),
        decoder_depth=_depth(state, "decoder_blocks"),
        heads=heads,
        mlp_ratio=state["encoder_blocks.0.mlp.fc1.weight"].shape[0] / width,
        buffer_size=state["encoder_pos_embed_learned"].shape[1] - seq_len,
        diffloss_d=_depth(state, "diffloss.net.res_blocks"),
        diffloss_w=state["diffloss.net.input_proj.weight"].shape[0],
    )
    return from_dict(MARConfig, {**fields, **overrides})


def load_upstream_mar(
    path_or_ckpt: str | Path | dict,
    use_ema: bool = True,
    config: MARConfig | None = None,
    latent_channels: int = 16,
    heads: int | None = None,
) -> MAR:
    """Build a MAR (eval mode) from an upstream checkpoint file or its loaded dict; EMA weights by default."""
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    if "model" not in ckpt:
        raise KeyError(f"not an upstream MAR checkpoint (keys: {sorted(ckpt)[:8]}); expected 'model'")
    state = dict(ckpt["model"])
    if use_ema:
        if not ckpt.get("model_ema"):
            raise KeyError("checkpoint has no 'model_ema'; pass use_ema=False to load the raw weights")
        state.update(ckpt["model_ema"])  # EMA holds parameters only; buffers (none in MAR) from `model`
    cfg = config or infer_config(state, latent_channels, heads)
    model = MAR(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"upstream MAR checkpoint does not fit {cfg}: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()
