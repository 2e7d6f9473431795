"""Conversion runs: a released upstream l-DeTok tokenizer or MAR checkpoint -> a detok checkpoint folder.

What the weights do not show is never guessed: attention heads (invisible in tensor shapes) are taken
from the size only for the sizes upstream's code builds and releases, and must be given (`heads`)
for any other shape; a MAR's latent channels are taken as the released 16 only when its token width
is 16 (16 channels, patch 1). Latent statistics (upstream keeps them outside the checkpoint, in
`stats.pkl`) are read without executing pickled code: see `read_stats`.

Parameter names are the `detok convert` options (`heads` is `--heads`), so errors name the option.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detok.config import to_dict
from detok.io import save_checkpoint

# What a legacy (non-zip) torch.save file starts with; such a file is read by torch.load, not by us.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MEAN_NAMES = ("mean", "mu", "channel_mean", "latent_mean")
_STD_NAMES = ("std", "sigma", "channel_std", "latent_std")


def _storage_from_bytes(data: bytes) -> Any:
    """What `torch.storage._load_from_bytes` rebuilds (a tensor storage), read with weights_only=True.

    torch's own function loads the bytes with weights_only=False, that is, it runs any pickled code in
    them; the bytes are a legacy torch.save of one storage, which the weights-only loader reads.
    map_location="cpu": upstream computed its statistics on GPUs.
    """
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(_weights_only_reason(e)) from None


def _weights_only_reason(e: Exception) -> str:
    """The informative part of an unpickling refusal, on one line (torch's own spans a paragraph)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = lines[0] if lines else type(e).__name__
    return reason.split(" Please use ")[0].split(" Check the documentation")[0].rstrip(".")


class _StatsUnpickler(pickle.Unpickler):
    """Unpickle plain containers, numpy arrays and torch tensors only: a statistics pickle may not run code.

    Tensors pickled with `pickle.dump` are `torch._utils._rebuild_tensor_v2(storage, ...)` of a storage
    from `torch.storage._load_from_bytes(bytes)`; the latter is replaced by `_storage_from_bytes`.
    """

    ALLOWED: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("collections", "OrderedDict"): OrderedDict,
    }
    NUMPY = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        if (module, name) in self.NUMPY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _load_stats_file(p: Path) -> Any:
    """The raw content of a statistics file, by format; pickled code is refused, never run."""
    if p.suffix == ".npz":
        return dict(np.load(p, allow_pickle=False))
    if p.suffix == ".json":
        return json.loads(p.read_text())
    try:
        if zipfile.is_zipfile(p) or p.suffix in (".pt", ".pth"):  # torch.save (zip or legacy)
            return torch.load(p, map_location="cpu", weights_only=True)
        with open(p, "rb") as f:
            raw = _StatsUnpickler(f).load()
        if isinstance(raw, int) and raw == _TORCH_LEGACY_MAGIC:  # a legacy torch.save under another suffix
            return torch.load(p, map_location="cpu", weights_only=True)
        return raw
    except (pickle.UnpicklingError, AttributeError, TypeError, EOFError) as e:
        reason = _weights_only_reason(e) if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"--stats {p}: not a safe statistics file ({reason}); it may hold only tensors, "
                         "arrays and plain containers") from None


def _is_entry(raw: Any) -> bool:
    """Whether `raw` holds statistics itself (rather than naming entries that do)."""
    if not isinstance(raw, dict):
        return False
    names = {str(k).lower() for k in raw}
    return "channel" in names or (bool(names & set(_MEAN_NAMES)) and bool(names & set(_STD_NAMES)))


def read_stats(path: str | Path, key: str = "", channels: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel latent (mean, std), each (channels,), from a statistics file.

    Formats: .npz / .json / .pt with `mean` and `std` entries, or upstream's `stats.pkl`:
    `{key: {"single": (mean, std), "channel": (mean[2C], std[2C])}}` (torch tensors, written by
    pickle or torch.save), whose first C channel entries are the posterior means' statistics.
    `key` picks an entry of a file that holds several (upstream's `--stats_key`); a file holding one
    entry needs none. Pickles are read with an allow-list (tensors, arrays, containers): anything else
    is refused with a ValueError before it runs.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--stats {p}: no such file")
    raw = _load_stats_file(p)
    where = f"--stats {p}"
    if key:
        if not isinstance(raw, dict) or key not in raw:
            have = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
            raise KeyError(f"{where} has no entry --stats-key {key!r}; it has {have}")
        raw, where = raw[key], f"{where} [{key}]"
    elif isinstance(raw, dict) and not _is_entry(raw) and raw and all(isinstance(v, dict) for v in raw.values()):
        if len(raw) > 1:
            raise KeyError(f"{where} holds several entries; choose one with --stats-key: {sorted(map(str, raw))}")
        (only, raw), = raw.items()
        where = f"{where} [{only}]"
    if not _is_entry(raw):
        found = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise KeyError(f"{where}: expected 'mean' and 'std' entries (or upstream's 'channel'), found {found}")
    names = {str(k).lower(): k for k in raw}
    if "channel" in names:
        pair = raw[names["channel"]]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{where}: 'channel' must be (mean, std), got {type(pair).__name__}")
        mean_v, std_v = pair
    else:
        mean_v = raw[names[next(k for k in _MEAN_NAMES if k in names)]]
        std_v = raw[names[next(k for k in _STD_NAMES if k in names)]]
    out = []
    for what, v in (("mean", mean_v), ("std", std_v)):
        t = torch.as_tensor(np.asarray(v.detach().cpu() if torch.is_tensor(v) else v), dtype=torch.float32)
        t = t.flatten()
        if t.numel() < channels:
            raise ValueError(f"{where}: {what} has {t.numel()} channels, the tokenizer has {channels}")
        out.append(t[:channels])  # upstream: first C of the 2C posterior moments = the means
    return out[0], out[1]


def parse_heads(heads: int | str | tuple[int, ...] | list[int] | None) -> tuple[int, ...] | None:
    """`--heads`: None, one number, or "E,D" (also a sequence) -> a tuple of positive ints."""
    if heads is None or heads == "":
        return None
    if isinstance(heads, int):
        values: list[Any] = [heads]
    elif isinstance(heads, str):
        values = [v.strip() for v in heads.split(",")]
    else:
        values = list(heads)
    try:
        out = tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"--heads {heads!r}: expected one number or E,D (encoder, decoder)") from None
    if not 1 <= len(out) <= 2 or min(out) < 1:
        raise ValueError(f"--heads {heads!r}: expected one positive number or E,D (encoder, decoder)")
    return out


def _load_source(source: Path) -> dict[str, Any]:
    from detok.generators.upstream_mar import load_checkpoint

    if not source.is_file():
        raise FileNotFoundError(f"no upstream checkpoint at {source}")
    try:
        ckpt = load_checkpoint(source)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{source}: not a safe torch checkpoint ({_weights_only_reason(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        have = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise KeyError(f"{source}: not an upstream checkpoint (expected a 'model' state dict; found {have})")
    return ckpt


def _weights(state: dict[str, torch.Tensor], ckpt: dict[str, Any], raw: bool) -> dict[str, torch.Tensor]:
    """The state dict whose shapes describe the model: `model`, with the EMA parameters over it."""
    if raw or not ckpt.get("model_ema"):
        return state  # the loaders raise their own error on a missing EMA
    return {**state, **ckpt["model_ema"]}


def convert(
    source: str | Path,
    out: str | Path,
    *,
    raw: bool = False,
    stats: str | Path = "",
    stats_key: str = "",
    tokenizer: str = "",
    rope_layout: str = "upstream",
    heads: int | str | tuple[int, ...] | None = None,
    latent_channels: int | None = None,
) -> dict[str, Any]:
    """Convert upstream checkpoint `source` (tokenizer or MAR, told apart by its keys) into run folder `out`.

    - raw: the `model` weights instead of `model_ema`.
    - stats / stats_key: tokenizer latent statistics (`read_stats`); without them run `detok encode`.
    - tokenizer: MAR only, the detok tokenizer its latents come from (saved for `detok sample`).
    - rope_layout: tokenizer only; "upstream" reproduces the released weights' outputs.
    - heads: attention heads; tokenizer "E,D" or one number for both, MAR one number. Required unless
      the shapes are a size upstream releases (otherwise the count is not knowable from the weights).
    - latent_channels: MAR only; required unless its token width is the released 16 (16 channels, patch 1).
    Returns the summary (what was written, from what).
    """
    src = Path(source)
    ckpt = _load_source(src)
    head_counts = parse_heads(heads)
    if latent_channels is not None and latent_channels < 1:
        raise ValueError(f"--latent-channels must be positive, got {latent_channels}")
    if any(k.startswith("diffloss.") for k in ckpt["model"]):
        if stats or stats_key:
            raise ValueError(f"{src} is a MAR: --stats / --stats-key apply to tokenizers only")
        return _convert_mar(src, Path(out), ckpt, raw, tokenizer, head_counts, latent_channels)
    if tokenizer or latent_channels is not None:
        raise ValueError(f"{src} is a tokenizer: --tokenizer / --latent-channels apply to MAR checkpoints only")
    return _convert_tokenizer(src, Path(out), ckpt, raw, stats, stats_key, rope_layout, head_counts)


def _convert_tokenizer(
    src: Path, out: Path, ckpt: dict[str, Any], raw: bool, stats: str | Path, stats_key: str,
    rope_layout: str, heads: tuple[int, ...] | None,
) -> dict[str, Any]:
    """An upstream l-DeTok tokenizer -> a detok tokenizer checkpoint (TokenizerRunConfig with model 'converted')."""
    from detok.tokenizers.upstream import (
        RELEASED_SIZES,
        SIZES,
        load_upstream_tokenizer,
        part_shapes,
        released_heads,
    )

    try:
        from detok.runs.config import TokenizerRunConfig
    except ImportError:
        from detok.engine.tasks import TokenizerRunConfig

    state = _weights(dict(ckpt["model"]), ckpt, raw)
    pair: tuple[int, int]
    if heads is None:
        known = released_heads(state)
        if known is None:
            shapes = part_shapes(state)
            released = ", ".join(f"{n} {SIZES[n][0]}x{SIZES[n][1]}" for n in RELEASED_SIZES)
            raise ValueError(
                f"{src}: encoder {shapes['encoder'][0]}x{shapes['encoder'][1]}, decoder "
                f"{shapes['decoder'][0]}x{shapes['decoder'][1]} (width x depth) is not a size upstream "
                f"releases ({released}), so its attention heads cannot be read off the weights; "
                "pass --heads E,D (or one number for both)"
            )
        pair = known
    else:
        pair = (heads[0], heads[-1])
        for (part, (width, _)), h in zip(part_shapes(state).items(), pair):
            if width % h or (width // h) % 4:
                raise ValueError(f"--heads {','.join(map(str, heads))}: the {part} (width {width}) cannot have "
                                 f"{h} heads (the head dim must be a whole multiple of 4, for 2-D RoPE)")
    model = load_upstream_tokenizer(ckpt, use_ema=not raw, heads=pair)
    if rope_layout != "upstream":
        model.set_rope_layout(rope_layout)
    if stats:
        model.set_stats(*read_stats(stats, stats_key, model.latent_channels))
    elif stats_key:
        raise ValueError("--stats-key needs --stats (the statistics file it picks an entry of)")
    cfg = TokenizerRunConfig(tokenizer=model.cfg)
    cfg.model = "converted"
    path = save_checkpoint(
        out, 0, kind="tokenizer",
        weights={"model": model.state_dict()},
        ema={"model": {n: p for n, p in model.named_parameters()}},
        config={**to_dict(cfg), "converted_from": str(src)},
        keep=0,
    )
    return {
        "source": str(src), "checkpoint": str(path), "weights": "raw" if raw else "ema",
        "rope_layout": rope_layout, "stats": str(stats) or "none (run `detok encode` to compute them)",
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "encoder_size": model.cfg.encoder_size, "decoder_size": model.cfg.decoder_size,
        "heads": f"{pair[0]},{pair[1]}" + ("" if heads else " (released size)"),
    }


def _mar_name(cfg: Any) -> tuple[str, bool]:
    """(registry preset to rebuild from, whether its architecture equals `cfg`'s).

    The saved `generator` section holds every MARConfig field, so `load_generator` rebuilds `cfg`
    exactly from any MAR preset; the name only says which preset the architecture is (or is nearest).
    """
    from detok.generators.mar import PRESETS, mar_config

    arch = ("patch_size", "width", "encoder_depth", "decoder_depth", "heads", "mlp_ratio", "buffer_size",
            "diffloss_d", "diffloss_w")
    for name in PRESETS:
        preset = mar_config(name, cfg.latent_shape, cfg.num_classes)
        if all(getattr(preset, f) == getattr(cfg, f) for f in arch):
            return name, True
    same_width = [n for n in PRESETS if mar_config(n).width == cfg.width]
    return (same_width[0] if same_width else "mar_b"), False


def _convert_mar(
    src: Path, out: Path, ckpt: dict[str, Any], raw: bool, tokenizer: str, heads: tuple[int, ...] | None,
    latent_channels: int | None,
) -> dict[str, Any]:
    """An upstream MAR (l-DeTok release or LTH14/mar) -> a detok generator checkpoint with its full config."""
    from detok.generators.upstream_mar import (
        RELEASED_HEADS,
        RELEASED_LATENT_CHANNELS,
        load_upstream_mar,
        released_heads,
        shape_key,
        token_width,
    )

    state = _weights(dict(ckpt["model"]), ckpt, raw)
    if heads is not None and len(heads) != 1:
        raise ValueError(f"--heads {','.join(map(str, heads))}: a MAR takes one number (its blocks share it)")
    n_heads = heads[0] if heads else released_heads(state)
    if n_heads is None:
        width, enc, dec = shape_key(state)
        released = ", ".join(f"{w}/{e}+{d}" for w, e, d in RELEASED_HEADS)
        raise ValueError(
            f"{src}: a MAR of width {width} with {enc} + {dec} blocks is not a size upstream releases "
            f"(width/blocks {released}), so its attention heads cannot be read off the weights; pass --heads N"
        )
    tw = token_width(state)
    if latent_channels is None:
        if tw != RELEASED_LATENT_CHANNELS:
            options = [f"{c} (patch {p})" for p in range(1, 9) for c in [tw // (p * p)] if c * p * p == tw]
            raise ValueError(
                f"{src}: MAR tokens have {tw} channels = latent channels x patch area, which is ambiguous "
                f"({' or '.join(options)}); pass --latent-channels C"
            )
        latent_channels = RELEASED_LATENT_CHANNELS
    elif tw % latent_channels:
        raise ValueError(f"--latent-channels {latent_channels}: MAR tokens have {tw} channels, not a multiple")
    model = load_upstream_mar(ckpt, use_ema=not raw, latent_channels=latent_channels, heads=n_heads)
    cfg = to_dict(model.cfg)
    latent_shape, num_classes = cfg.pop("latent_shape"), cfg.pop("num_classes")
    name, exact = _mar_name(model.cfg)
    config = {
        "model": name, "generator": cfg, "latent_shape": latent_shape, "num_classes": num_classes,
        "tokenizer": tokenizer, "converted_from": str(src), "sample": {"cfg_scale": 1.0},
    }
    path = save_checkpoint(
        out, 0, kind="generator", weights={"model": model.state_dict()},
        ema={"model": {n: p for n, p in model.named_parameters()}}, config=config, keep=0,
    )
    c = model.cfg
    return {
        "source": str(src), "checkpoint": str(path), "kind": "generator",
        "model": name if exact else f"{name} preset with the checkpoint's architecture (saved in full)",
        "architecture": f"width {c.width}, {c.encoder_depth} + {c.decoder_depth} blocks, {c.heads} heads, "
                        f"head {c.diffloss_d} x {c.diffloss_w}, latents {list(latent_shape)}",
        "weights": "raw" if raw else "ema", "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokenizer": tokenizer or "none: pass --tokenizer to `detok sample`",
    }
