"""Load l-DeTok checkpoints released with the paper (Jiawei-Yang/DeTok layout) into detok's DeTok.

The release is a `torch.save` dict with `model` (state_dict) and `model_ema` (parameter name ->
tensor). Only key names differ from ours, plus the 1x1 output conv that we run as a Linear. The
released RoPE tables use the "upstream" layout (see detok.nn.rope), so converted models are built
with `rope_layout="upstream"` to reproduce upstream's outputs exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from detok.tokenizers.detok import SIZES, DeTok, DetokConfig

_RENAMES = [
    (re.compile(r"^(encoder|decoder)\.transformer\.(\d+)\."), r"\1.blocks.\2."),
    (re.compile(r"^encoder\.patch_embed\.0\."), "encoder.patch_embed."),
    (re.compile(r"^decoder\.ffn\.1\."), "decoder.to_pixels."),
]


def convert_state_dict(upstream: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename upstream tokenizer keys to detok's; reshape the (O, D, 1, 1) pixel head to (O, D)."""
    out = {}
    for key, value in upstream.items():
        new = key
        for pattern, repl in _RENAMES:
            new = pattern.sub(repl, new)
        if new == "decoder.to_pixels.weight" and value.ndim == 4:
            value = value[:, :, 0, 0]  # (O, D, 1, 1) -> (O, D)
        out[new] = value
    return out


def _size_of(width: int, depth: int) -> str:
    for name, (w, d, _) in SIZES.items():
        if (w, d) == (width, depth):
            return name
    raise ValueError(f"no detok size has width {width} and depth {depth}; known: {SIZES}")


def infer_config(state: dict[str, torch.Tensor], heads: dict[str, int] | None = None) -> DetokConfig:
    """DetokConfig (upstream RoPE layout, corruption as the paper) read off an upstream state dict's shapes."""
    pe = state["encoder.patch_embed.0.weight"]  # (D, 3, P, P)
    n_tok = state["encoder.positional_embedding"].shape[1]
    patch = pe.shape[-1]
    grid = int(round(n_tok**0.5))

    def depth(part: str) -> int:
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"^{part}\.transformer\.(\d+)\.", k))}
        return max(idx) + 1

    enc = _size_of(pe.shape[0], depth("encoder"))
    dec = _size_of(state["decoder.positional_embedding"].shape[-1], depth("decoder"))
    return DetokConfig(
        encoder_size=enc,
        decoder_size=dec,
        image_size=grid * patch,
        patch_size=patch,
        latent_dim=state["encoder.latent_head.weight"].shape[0] // 2,
        rope_layout="upstream",
    )


def load_upstream_tokenizer(
    path_or_ckpt: str | Path | dict, use_ema: bool = True, config: DetokConfig | None = None
) -> DeTok:
    """Build a DeTok from an upstream checkpoint file (or its loaded dict); EMA weights by default."""
    ckpt = path_or_ckpt
    if not isinstance(ckpt, dict):
        ckpt = torch.load(path_or_ckpt, map_location="cpu", weights_only=True)
    if "model" not in ckpt:
        raise KeyError(f"not an upstream l-DeTok checkpoint (keys: {sorted(ckpt)[:8]}); expected 'model'")
    state = dict(ckpt["model"])
    if use_ema:
        if "model_ema" not in ckpt:
            raise KeyError("checkpoint has no 'model_ema'; pass use_ema=False to load the raw weights")
        state.update(ckpt["model_ema"])  # EMA holds parameters only; buffers come from `model`
    cfg = config or infer_config(state)
    model = DeTok(cfg)
    missing, unexpected = model.load_state_dict(convert_state_dict(state), strict=False)
    missing = [k for k in missing if k not in ("latent_mean", "latent_std")]
    if missing or unexpected:
        raise KeyError(f"upstream checkpoint does not fit {cfg}: missing {missing}, unexpected {unexpected}")
    return model.eval()
