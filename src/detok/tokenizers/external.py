"""Outside autoencoders as detok tokenizers: MAR's KL-16 VAE and diffusers' AutoencoderKL (SD-VAE).

These are the l-DeTok paper's baselines ("MAR-VAE", "SD-VAE"). Both expose the `Tokenizer` interface:
`encode_moments` gives the posterior (B, 2C, h, w) (mean | log-variance), `decode` maps raw latents
back to images in [-1, 1], and per-channel statistics normalise latents for the generators.

Default statistics: upstream does not normalise these latents per channel but multiplies them by one
conventional scale, so a freshly loaded adapter carries mean 0 and std 1/scale (MAR_KL16_SCALE = 0.2325,
SD_VAE_SCALE = 0.18215, or the diffusers config's `scaling_factor` / `shift_factor`). Generators thus
see exactly upstream's latents before `detok encode --recompute-stats` replaces them with measured
per-channel statistics (keep those with `save_external_tokenizer`, so generator runs reload them).

KL-16 is implemented here rather than through diffusers' AutoencoderKL because diffusers cannot hold
it: MAR's encoder puts self-attention after each res-block of its last (16 x 16) level, and diffusers'
`DownEncoderBlock2D` has no attention. Our modules carry upstream's parameter names (`encoder.down.4.
attn.0.q.weight`, `nin_shortcut`, ...), so a released `kl16.ckpt` loads by name with strict=True and
without a key conversion, and KL-16 needs no diffusers install.

Facts on MAR's KL-16 (LTH14/mar `models/vae.py`, built as `AutoencoderKL(embed_dim=16, ch_mult=(1, 1,
2, 2, 4))`): LDM's KL autoencoder with ch 128, num_res_blocks 2, z_channels 16, double_z, GroupNorm(32,
eps 1e-6) + SiLU, no time embedding, dropout 0; encoder attention at resolution 16 (with its construction
resolution 256: the last level) and in the middle block; decoder attention only in its middle block;
1x1 `quant_conv` (2C -> 2C) and `post_quant_conv` (C -> C). `kl16.ckpt` holds this state dict under
the top-level key "model" with no other weights (upstream loads it reporting no missing or unexpected
keys). Axis letters: B batch, C channels, H x W pixels, h x w latent grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detok.config import from_dict, to_dict
from detok.io import CheckpointError
from detok.registry import Family, alias, register, register_family
from detok.tokenizers.base import Tokenizer

MAR_KL16_SCALE = 0.2325  # MAR multiplies KL-16 latents by this before the generator (and divides after)
SD_VAE_SCALE = 0.18215  # Stable Diffusion's VAE latent scale (diffusers `scaling_factor`)
KL16_CKPT_KEY = "model"  # top-level entry of MAR's kl16.ckpt holding the state dict
GROUPS, GN_EPS = 32, 1e-6  # LDM's Normalize(): GroupNorm(32, C, eps=1e-6, affine)
DROPPED_PREFIXES = ("loss.",)  # LDM training checkpoints keep LPIPS / discriminator weights under `loss.`
DIFFUSERS_HINT = "needs the `diffusers` package: pip install diffusers  (or: pip install 'detok[external]')"

# Stable Diffusion's VAE (stabilityai/sd-vae-ft-ema config.json): 4 levels, stride 8, 4 latent channels
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": SD_VAE_SCALE,
}


# -- MAR KL-16 (LDM KL autoencoder) ------------------------------------------------------------------
@dataclass
class KL16Config:
    """MAR's KL-16 VAE; defaults are the released kl16.ckpt (256 px -> 16 x 16 x 16 latents)."""

    image_size: int = 256
    embed_dim: int = 16
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = field(
        default=(4,), metadata={"help": "encoder levels with attention; upstream: resolution 16 of 256 = level 4"}
    )
    scale: float = field(default=MAR_KL16_SCALE, metadata={"help": "default stats: mean 0, std 1/scale"})


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, c, eps=GN_EPS)


class ResnetBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))); a 1x1 `nin_shortcut` when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with 1x1-conv q, k, v and output projection."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # scale C**-0.5, as upstream
        out = out[:, 0].transpose(1, 2).reshape(b, c, h, w)  # (B, 1, HW, C) -> (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 conv with stride 2 (LDM's asymmetric padding)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: res-blocks `block`, optional `attn` after each, optional `downsample` / `upsample`."""

    def __init__(self, cin: int, cout: int, n_blocks: int, attn: bool, resample: type[nn.Module] | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(n_blocks if attn else 0))
        if resample is not None:  # named as upstream: `downsample` (encoder) or `upsample` (decoder)
            setattr(self, "downsample" if resample is Downsample else "upsample", resample(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class Mid(nn.Module):
    """res-block, attention, res-block at the lowest resolution (encoder and decoder alike)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class KLEncoder(nn.Module):
    """(B, 3, H, W) -> (B, 2C, H/s, W/s), s = 2**(levels - 1)."""

    def __init__(self, cfg: KL16Config) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level(([cfg.ch] + widths)[i], w, cfg.num_res_blocks, i in cfg.attn_levels, Downsample if i < last else None)
            for i, w in enumerate(widths)
        )
        self.mid = Mid(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.embed_dim, 3, padding=1)  # double_z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class KLDecoder(nn.Module):
    """(B, C, h, w) -> (B, 3, h*s, w*s); `up[i]` is stored at index i but run from the lowest level up."""

    def __init__(self, cfg: KL16Config) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.embed_dim, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1])
        ins = widths[1:] + [widths[-1]]  # level i receives the output width of level i + 1
        self.up = nn.ModuleList(
            Level(ins[i], w, cfg.num_res_blocks + 1, False, Upsample if i > 0 else None) for i, w in enumerate(widths)
        )
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class KLAutoencoder(nn.Module):
    """Encoder + `quant_conv` / `post_quant_conv` + decoder; its state dict is upstream's, key for key."""

    def __init__(self, cfg: KL16Config) -> None:
        super().__init__()
        self.encoder, self.decoder = KLEncoder(cfg), KLDecoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)


class KL16Tokenizer(Tokenizer):
    """MAR's KL-16 VAE as a Tokenizer. Default stats (mean 0, std 1/0.2325) give MAR's scaled latents."""

    kind = "mar_kl16"

    def __init__(self, cfg: KL16Config | None = None) -> None:
        cfg = cfg or KL16Config()
        stride = 2 ** (len(cfg.ch_mult) - 1)
        if cfg.image_size % stride:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of the stride {stride}")
        if any(not 0 <= i < len(cfg.ch_mult) for i in cfg.attn_levels):
            raise ValueError(f"attn_levels {cfg.attn_levels} outside 0..{len(cfg.ch_mult) - 1}")
        super().__init__(cfg.embed_dim, cfg.image_size // stride)
        self.cfg = cfg
        self.vae = KLAutoencoder(cfg)
        self.latent_std.fill_(1.0 / cfg.scale)

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.quant_conv(self.vae.encoder(images))  # (B, 2C, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decoder(self.vae.post_quant_conv(latents))  # (B, 3, H, W)

    def export_config(self) -> dict[str, Any]:
        return to_dict(self.cfg)


def kl16_config_from_state(state: dict[str, torch.Tensor], **overrides: Any) -> KL16Config:
    """KL16Config read off an upstream-layout state dict's keys and shapes (image size from `overrides`)."""
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    ch = state["encoder.conv_in.weight"].shape[0]
    mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    attn = tuple(i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state)
    found = dict(embed_dim=state["post_quant_conv.weight"].shape[0], ch=ch, ch_mult=mult,
                 num_res_blocks=blocks, attn_levels=attn)
    return KL16Config(**{**found, **overrides})


def load_kl16(path: str | Path, **overrides: Any) -> KL16Tokenizer:
    """MAR's `kl16.ckpt` (state dict under "model", or a bare state dict) as an eval-mode KL16Tokenizer."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no MAR KL-16 checkpoint at {p} (LTH14/mar's kl16.ckpt; nothing is downloaded)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle holding code: refuse rather than execute it
        raise ValueError(f"{p} cannot be read as plain tensors (torch.load weights_only=True): {e}") from e
    return kl16_from_checkpoint(ckpt, source=str(p), **overrides)


def kl16_from_checkpoint(ckpt: dict, source: str = "", **overrides: Any) -> KL16Tokenizer:
    """KL16Tokenizer from a loaded checkpoint dict; drops `loss.*` training keys, then loads strictly."""
    if not is_kl_checkpoint(ckpt):
        raise KeyError(f"{source or 'checkpoint'} is not an LDM / MAR KL autoencoder (no encoder.conv_in.weight)")
    state = {k: v for k, v in ckpt.get(KL16_CKPT_KEY, ckpt).items() if not k.startswith(DROPPED_PREFIXES)}
    model = KL16Tokenizer(kl16_config_from_state(state, **overrides))
    model.vae.load_state_dict(state, strict=True)
    model.checkpoint_path = source
    return model.eval()


def is_kl_checkpoint(ckpt: Any) -> bool:
    """True for a loaded dict that holds an LDM KL autoencoder state dict (under "model" or bare)."""
    state = ckpt.get(KL16_CKPT_KEY, ckpt) if isinstance(ckpt, dict) else None
    return isinstance(state, dict) and "encoder.conv_in.weight" in state and "post_quant_conv.weight" in state


# -- diffusers AutoencoderKL (SD-VAE, EQ-VAE, ...) ------------------------------------------------------
def _autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError(f"SD-VAE / diffusers tokenizers {DIFFUSERS_HINT}") from e
    return AutoencoderKL


@dataclass
class DiffusersConfig:
    """A diffusers AutoencoderKL: its `config.json` entries and the image size it tokenizes."""

    image_size: int = 256
    vae: dict[str, Any] = field(default_factory=lambda: dict(SD_VAE_CONFIG))


class DiffusersTokenizer(Tokenizer):
    """diffusers' AutoencoderKL as a Tokenizer; outputs equal `vae.encode(x).latent_dist` / `vae.decode(z)`.

    Default stats are the config's conventional scaling: mean `shift_factor` (or 0), std
    1/`scaling_factor` (SD-VAE: 1/0.18215), i.e. exactly the latents diffusers pipelines feed a UNet.
    """

    kind = "diffusers"

    def __init__(self, vae: nn.Module, image_size: int = 256) -> None:
        stride = 2 ** (len(vae.config.block_out_channels) - 1)
        if image_size % stride:
            raise ValueError(f"image_size {image_size} is not a multiple of the VAE's stride {stride}")
        super().__init__(vae.config.latent_channels, image_size // stride)
        self.vae = vae
        self.cfg = DiffusersConfig(image_size, _plain(vae.config))
        self.latent_mean.fill_(vae.config.get("shift_factor") or 0.0)
        self.latent_std.fill_(1.0 / (vae.config.get("scaling_factor") or SD_VAE_SCALE))

    @classmethod
    def from_config(cls, vae_config: dict[str, Any], image_size: int = 256) -> DiffusersTokenizer:
        """Random-initialised AutoencoderKL of this config (SD-VAE's by default in `build`)."""
        return cls(_autoencoder_kl().from_config(vae_config), image_size)

    @classmethod
    def from_folder(cls, folder: str | Path, image_size: int = 256) -> DiffusersTokenizer:
        """A `save_pretrained` folder (config.json + diffusion_pytorch_model.safetensors), offline."""
        p = Path(folder)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"no diffusers AutoencoderKL folder at {p} (expected {p / 'config.json'})")
        autoencoder_kl = _autoencoder_kl()  # a clear ImportError first when diffusers is not installed
        if not list(p.glob("*.safetensors")):
            pickled = sorted(x.name for x in p.glob("*.bin"))
            raise CheckpointError(f"{p}: no safetensors weights{' (only the pickle ' + ', '.join(pickled) + ')' if pickled else ''}; "
                                  "detok reads diffusers weights as safetensors only (save_pretrained writes them)")
        vae = autoencoder_kl.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
        tok = cls(vae, image_size)
        tok.checkpoint_path = str(p)
        return tok.eval()

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        post = self.vae.encode(images).latent_dist
        return torch.cat([post.mean, post.logvar], dim=1)  # (B, 2C, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample  # (B, 3, H, W)

    def export_config(self) -> dict[str, Any]:
        return to_dict(self.cfg)


def _plain(config: Any) -> dict[str, Any]:
    """A diffusers FrozenDict config as a YAML-safe dict (tuples -> lists, private `_` keys dropped)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def is_diffusers_folder(path: str | Path) -> bool:
    """True for a folder whose config.json names `_class_name` AutoencoderKL."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == "AutoencoderKL"
    except (ValueError, AttributeError):
        return False


LEGACY_KINDS = {"mar-kl16": "mar_kl16"}


# -- detok checkpoints of external tokenizers (weights + config + statistics in one folder) ----------------
def external_from_config(kind: str, config: dict[str, Any]) -> Tokenizer:
    """An (untrained) external tokenizer rebuilt from `export_config()`; load its weights afterwards."""
    kind = LEGACY_KINDS.get(kind, kind)  # checkpoints written before 0.2 spell it mar-kl16
    if kind == KL16Tokenizer.kind:
        return KL16Tokenizer(from_dict(KL16Config, config, prefix="tokenizer."))
    if kind == DiffusersTokenizer.kind:
        cfg = from_dict(DiffusersConfig, config, prefix="tokenizer.")
        return DiffusersTokenizer.from_config(cfg.vae, cfg.image_size)
    raise KeyError(f"unknown external tokenizer kind {kind!r}; known: mar_kl16, diffusers")


def save_external_tokenizer(
    tokenizer: KL16Tokenizer | DiffusersTokenizer, run_dir: str | Path, data: dict[str, Any] | None = None
) -> Path:
    """Write a detok tokenizer checkpoint (weights, statistics, config) that `load_tokenizer(run_dir)` reloads.

    Use it after `set_stats` so `detok encode` and generator runs share the measured statistics.
    `data` (DataConfig fields) becomes the run's default dataset for `detok encode` / `reconstruct`.
    """
    from detok.io import save_checkpoint

    config = {"external": tokenizer.kind, "tokenizer": tokenizer.export_config(), "data": dict(data or {})}
    return save_checkpoint(run_dir, 0, kind="tokenizer", weights={"model": tokenizer.state_dict()}, config=config)


# -- registry: random-initialised builders (tests, benchmarks); load real weights via load_tokenizer -------
register_family(Family(
    "tokenizer", "external", "outside autoencoders used as tokenizers: MAR's KL-16 VAE, diffusers AutoencoderKL "
    "(SD-VAE); loaded from local weights (`mar_kl16:PATH`, `sd_vae:FOLDER`), not trained by detok",
    extra={"trainable": False},
))
alias("tokenizer", "mar-kl16", "mar_kl16")
alias("tokenizer", "sd-vae", "sd_vae")


@register("tokenizer", "mar_kl16", family="external")
def mar_kl16(**overrides: Any) -> KL16Tokenizer:
    """MAR's KL-16 architecture, random init; KL16Config fields as overrides."""
    return KL16Tokenizer(KL16Config(**overrides))


@register("tokenizer", "sd_vae", family="external")
def sd_vae(image_size: int = 256, **vae_overrides: Any) -> DiffusersTokenizer:
    """Stable Diffusion's VAE architecture (diffusers), random init; AutoencoderKL config fields as overrides."""
    return DiffusersTokenizer.from_config({**SD_VAE_CONFIG, **vae_overrides}, image_size)
