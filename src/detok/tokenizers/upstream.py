"""Load l-DeTok checkpoints released with the paper (Jiawei-Yang/DeTok layout) into detok's DeTok.

The release is a `torch.save` dict with `model` (state_dict) and `model_ema` (parameter name ->
tensor). Only key names differ from ours, plus the 1x1 output conv that we run as a Linear. The
released RoPE tables use the "upstream" layout (see detok.nn.rope), so converted models are built
with `rope_layout="upstream"` to reproduce upstream's outputs exactly.

Attention heads are invisible in the weights' shapes. Upstream's code builds only the sizes of its
SIZE_DICT (`RELEASED_SIZES`), each with a fixed head count, so those are known from (width, depth);
any other shape (detok's CPU-sized tiny / mini among them) may have been trained with any head count,
and `released_heads` says so by returning None (`detok convert` then asks for `--heads`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from detok.io import read_tensors
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


# the sizes of upstream's SIZE_DICT (models/model_utils.py), the only ones its code builds: their head
# counts (detok's SIZES agree) are what a released checkpoint of that (width, depth) was trained with
RELEASED_SIZES = ("small", "base", "large", "xl", "huge")
PARTS = ("encoder", "decoder")


def _size_of(width: int, depth: int) -> str:
    for name, (w, d, _) in SIZES.items():
        if (w, d) == (width, depth):
            return name
    known = ", ".join(f"{n} {w}x{d}" for n, (w, d, _) in SIZES.items())
    raise ValueError(f"no detok size has width {width} and depth {depth} (known width x depth: {known})")


def part_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """{"encoder": (width, depth), "decoder": (width, depth)} read off an upstream state dict."""

    def depth(part: str) -> int:
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"^{part}\.transformer\.(\d+)\.", k))}
        if not idx:
            raise KeyError(f"not an upstream l-DeTok state dict: no {part}.transformer.* keys")
        return max(idx) + 1

    try:
        widths = {"encoder": state["encoder.patch_embed.0.weight"].shape[0],  # (D, 3, P, P)
                  "decoder": state["decoder.positional_embedding"].shape[-1]}  # (1, N, D)
    except KeyError as e:
        raise KeyError(f"not an upstream l-DeTok state dict: no {e.args[0]!r}") from None
    return {part: (int(widths[part]), depth(part)) for part in PARTS}


def released_heads(state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(encoder, decoder) heads when both parts have the (width, depth) of a size upstream's code builds.

    None when either part has another shape: its heads cannot be read off the weights and must be given.
    """
    heads = []
    for width, depth in part_shapes(state).values():
        name = next((n for n in RELEASED_SIZES if SIZES[n][:2] == (width, depth)), None)
        if name is None:
            return None
        heads.append(SIZES[name][2])
    return heads[0], heads[1]


def _as_pair(heads: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """One head count for both parts, or (encoder, decoder)."""
    if isinstance(heads, int):
        return heads, heads
    if len(heads) != 2:
        raise ValueError(f"heads must be one number or (encoder, decoder), got {heads!r}")
    return int(heads[0]), int(heads[1])


def infer_config(state: dict[str, torch.Tensor], heads: int | tuple[int, int] | None = None) -> DetokConfig:
    """DetokConfig (upstream RoPE layout, corruption as the paper) read off an upstream state dict's shapes.

    `heads` (one number, or encoder and decoder) are the attention heads the checkpoint was trained with;
    None takes the head count of the detok size of that (width, depth), which is right for the sizes
    upstream's code builds (`released_heads`) and a guess for any other.
    """
    pe = state["encoder.patch_embed.0.weight"]  # (D, 3, P, P)
    n_tok = state["encoder.positional_embedding"].shape[1]
    patch = pe.shape[-1]
    grid = int(round(n_tok**0.5))
    shapes = part_shapes(state)
    sizes = {part: _size_of(*shapes[part]) for part in PARTS}
    extra: dict[str, int] = {}
    if heads is not None:
        fields = {f.name for f in dataclasses.fields(DetokConfig)}
        for part, h in zip(PARTS, _as_pair(heads)):
            width, size_heads = shapes[part][0], SIZES[sizes[part]][2]
            if h < 1 or width % h or (width // h) % 4:
                raise ValueError(f"{part} heads {h}: width {width} must split into heads of a dim divisible "
                                 "by 4 (2-D RoPE)")
            if h == size_heads:
                continue
            if f"{part}_heads" not in fields:
                raise ValueError(f"{part} heads {h} differ from size {sizes[part]!r}'s {size_heads}, and "
                                 f"DetokConfig has no {part}_heads field to build them")
            extra[f"{part}_heads"] = h
    return DetokConfig(
        encoder_size=sizes["encoder"],
        decoder_size=sizes["decoder"],
        image_size=grid * patch,
        patch_size=patch,
        latent_dim=state["encoder.latent_head.weight"].shape[0] // 2,
        rope_layout="upstream",
        **extra,
    )


def load_upstream_tokenizer(
    path_or_ckpt: str | Path | dict,
    use_ema: bool = True,
    config: DetokConfig | None = None,
    heads: int | tuple[int, int] | None = None,
) -> DeTok:
    """Build a DeTok from an upstream checkpoint file (or its loaded dict); EMA weights by default.

    `heads` as in `infer_config` (ignored when `config` is given).
    """
    ckpt = path_or_ckpt
    if not isinstance(ckpt, dict):
        ckpt = read_tensors(path_or_ckpt, "checkpoint")
    if "model" not in ckpt:
        raise KeyError(f"not an upstream l-DeTok checkpoint (keys: {sorted(ckpt)[:8]}); expected 'model'")
    state = dict(ckpt["model"])
    if use_ema:
        if "model_ema" not in ckpt:
            raise KeyError("checkpoint has no 'model_ema'; pass use_ema=False to load the raw weights")
        state.update(ckpt["model_ema"])  # EMA holds parameters only; buffers come from `model`
    cfg = config or infer_config(state, heads)
    model = DeTok(cfg)
    missing, unexpected = model.load_state_dict(convert_state_dict(state), strict=False)
    missing = [k for k in missing if k not in ("latent_mean", "latent_std")]
    if missing or unexpected:
        raise KeyError(f"upstream checkpoint does not fit {cfg}: missing {missing}, unexpected {unexpected}")
    return model.eval()
