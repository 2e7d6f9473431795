"""Load a tokenizer from anything a user holds: a detok run / checkpoint, a released upstream file, or an
outside autoencoder (MAR's KL-16 VAE, a diffusers AutoencoderKL such as SD-VAE)."""

from __future__ import annotations

import warnings
from pathlib import Path

from detok.config import from_dict
from detok.io import Checkpoint, read_tensors
from detok.tokenizers.base import DiscreteTokenizer, Tokenizer
from detok.tokenizers.ddt import DDT, DDTConfig
from detok.tokenizers.ddt import PRESETS as DDT_PRESETS
from detok.tokenizers.detok import DeTok, DetokConfig
from detok.tokenizers.external import (
    DiffusersTokenizer,
    external_from_config,
    is_diffusers_folder,
    is_kl_checkpoint,
    kl16_from_checkpoint,
    load_kl16,
)
from detok.tokenizers.spatial_vq import PRESETS as VQ_PRESETS
from detok.tokenizers.spatial_vq import SpatialVQ, SpatialVQConfig
from detok.tokenizers.upstream import load_upstream_tokenizer

# `KIND:PATH` spec prefixes for outside autoencoders (snake case, as registry names)
SPEC_KINDS = ("mar_kl16", "sd_vae", "diffusers")
DEPRECATED_SPEC_KINDS = {"mar-kl16": "mar_kl16", "sd-vae": "sd_vae"}  # accepted with a warning until 0.3


def parse_spec(path: str | Path) -> tuple[str, str] | None:
    """(kind, path) of a `mar_kl16:/x/kl16.ckpt`, `sd_vae:/x/folder` or `diffusers:/x/folder` spec, else None."""
    text = str(path)
    kind, sep, rest = text.partition(":")
    if sep and kind in DEPRECATED_SPEC_KINDS and rest and not Path(text).exists():
        new = DEPRECATED_SPEC_KINDS[kind]
        warnings.warn(f"tokenizer spec {kind}: is deprecated; write {new}:", DeprecationWarning, stacklevel=2)
        kind = new
    if sep and kind in SPEC_KINDS and rest and not Path(text).exists():
        return kind, rest
    return None


def load_external(kind: str, path: str | Path, image_size: int | None = None) -> Tokenizer:
    """An outside autoencoder in eval mode with its conventional scale as statistics (see tokenizers.external)."""
    size = {} if image_size is None else {"image_size": image_size}
    if kind == "mar_kl16":
        return load_kl16(path, **size)
    if kind in ("sd_vae", "diffusers"):
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"no diffusers AutoencoderKL folder at {p} (save one with `save_pretrained`)")
        return DiffusersTokenizer.from_folder(p, **size)
    raise KeyError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(SPEC_KINDS)}")


def load_tokenizer(path: str | Path, use_ema: bool = True,
                   image_size: int | None = None) -> Tokenizer | DiscreteTokenizer:
    """A tokenizer in eval mode with its latent statistics; EMA weights unless `use_ema=False`.

    `path` is one of:
    - a detok run folder (its latest checkpoint) or a checkpoint folder (l-DeTok, or an outside
      autoencoder saved with `save_external_tokenizer`, statistics included);
    - an upstream l-DeTok `.pth` file (converted on the fly; run `detok convert` once to keep its
      statistics), or MAR's `kl16.ckpt` (recognised by its keys);
    - a diffusers AutoencoderKL folder (`config.json` naming AutoencoderKL + weights);
    - a spec `mar_kl16:/path/kl16.ckpt`, `sd_vae:/path/folder` or `diffusers:/path/folder`;
    - a DDT tokenizer run or a spatial VQ (`vqvit_*`) run (a `DiscreteTokenizer`: ids instead of latents).
    Outside autoencoders start with their conventional scale as statistics (MAR 0.2325, SD 0.18215)
    and `image_size` 256 unless given; `use_ema` does not apply to them.
    """
    spec = parse_spec(path)
    if spec is not None:
        return load_external(*spec, image_size=image_size)
    p = Path(path)
    if p.is_file():
        ckpt = read_tensors(p, "checkpoint")
        if is_kl_checkpoint(ckpt):
            return kl16_from_checkpoint(ckpt, source=str(p), **({} if image_size is None else {"image_size": image_size}))
        return load_upstream_tokenizer(ckpt if isinstance(ckpt, dict) else p, use_ema=use_ema)
    if p.is_dir() and is_diffusers_folder(p):
        return load_external("diffusers", p, image_size=image_size)
    ckpt = Checkpoint(p)
    if ckpt.kind != "tokenizer":
        raise ValueError(f"{ckpt.path} is a {ckpt.kind} checkpoint, not a tokenizer")
    if ckpt.config.get("model") in DDT_PRESETS:
        model = DDT(from_dict(DDTConfig, ckpt.config.get("tokenizer", {}), prefix="tokenizer."))
    elif ckpt.config.get("model") in VQ_PRESETS:
        model = SpatialVQ(from_dict(SpatialVQConfig, ckpt.config.get("tokenizer", {}), prefix="tokenizer."))
    elif ckpt.config.get("external"):
        model = external_from_config(ckpt.config["external"], ckpt.config.get("tokenizer", {}))
    else:
        cfg = from_dict(DetokConfig, ckpt.config.get("tokenizer", {}), prefix="tokenizer.")
        model = DeTok(cfg)
    model.load_state_dict(ckpt.module_state("model", use_ema=use_ema))
    model.checkpoint_path = str(ckpt.path)
    return model.eval()


def run_config(path: str | Path) -> dict:
    """The saved config of a detok tokenizer run / checkpoint folder; {} for files, specs and outside folders."""
    p = Path(path)
    if parse_spec(path) is not None or not p.is_dir() or is_diffusers_folder(p):
        return {}
    return Checkpoint(p).config
