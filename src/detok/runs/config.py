"""Run configs: everything one verb needs, as typed dataclasses saved with the run and rebuilt from it.

`tokenizer_config` / `generator_config` resolve a run's config the way the CLI does: the dataclass defaults
(the paper's recipe), then the model preset, then YAML presets, then `key=value` overrides; names are
checked against the registry before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from detok import registry
from detok.config import (
    ConfigError,
    deep_update,
    from_dict,
    load_yaml,
    merge,
    option,
    parse_override,
    to_dict,
)
from detok.data.build import DataConfig
from detok.engine.trainer import OptimConfig, TrainConfig
from detok.losses.tokenizer_loss import TokenizerLossConfig
from detok.tokenizers.ddt import PRESETS as DDT_PRESETS
from detok.tokenizers.ddt import DDTConfig, ddt_config
from detok.tokenizers.detok import PRESETS, DetokConfig
from detok.tokenizers.spatial_vq import PRESETS as VQ_PRESETS
from detok.tokenizers.spatial_vq import SpatialVQConfig, spatial_vq_config


@dataclass
class ProbeConfig:
    """The generation probe of tokenizer training (off by default): see `detok.runs.probe`."""

    every_epochs: float = option(0.0, "probe every this many epochs (0 = off)", min=0)
    generator: str = option("sit", "generator family whose small recipe the probe trains (registry)")
    steps: int = option(150, "generator training steps per probe", min=1)
    images: int = option(4096, "training images encoded for the probe generator", min=1)
    n_samples: int = option(512, "samples scored per probe", min=2)
    cfg_scale: float = option(0.0, "guidance scale (0 = the recipe's sample.cfg_scale)", min=0, aliases=("cfg",))
    feature_net: str = option("auto", "FID features: auto (domain for small data), domain, inception")
    keep: bool = option(False, "keep each probe's generator run folder (default: only its numbers)")


@dataclass
class TokenizerRunConfig:
    """Everything `detok train tokenizer` needs; defaults are the paper's detok_BB 200-epoch recipe."""

    model: str = option("detok_bb", "tokenizer preset the `tokenizer` section started from")
    tokenizer: DetokConfig = option(factory=DetokConfig)
    loss: TokenizerLossConfig = option(factory=TokenizerLossConfig)
    data: DataConfig = option(factory=DataConfig)
    optim: OptimConfig = option(factory=OptimConfig)
    train: TrainConfig = option(factory=TrainConfig)
    disc_start_epoch: float = option(100.0, "GAN on from this epoch (paper: 100 of 200)", min=0)
    decoder_only: bool = option(False, "freeze the encoder (decoder fine-tuning)")
    corruption_anneal: float = option(
        0.0, "fraction of the last training steps over which the corruption fades linearly to none (noise level "
             "tau and mask ratio scaled by 1 -> 0); 0 = off (the paper: full corruption to the end)", min=0, max=1)
    init_from: str = option("", "initialise weights (EMA) from a detok checkpoint")
    stats_images: int = option(0, "images for latent statistics at the end; 0 = all", min=0)
    stats_of: Literal["mean", "sample"] = option(
        "mean", "latent statistics of posterior 'mean's (upstream) or of posterior 'sample's (what generators see)")
    probe: ProbeConfig = option(factory=ProbeConfig)  # generation-FID estimate during training (off)


def _ddt_optim() -> OptimConfig:
    return OptimConfig(lr=5e-4, weight_decay=0.0, betas=(0.9, 0.99), warmup_epochs=1.0, grad_clip=1.0)


def _ddt_train() -> TrainConfig:
    return TrainConfig(out_dir="runs/ddt", global_batch_size=256, epochs=100.0, ema_decay=0.999)


@dataclass
class DDTRunConfig:
    """Everything `detok train tokenizer --model ddt_*` needs (a DDT tokenizer: see detok.tokenizers.ddt)."""

    model: str = option("ddt_b", "DDT preset the `tokenizer` section started from")
    tokenizer: DDTConfig = option(factory=DDTConfig)
    data: DataConfig = option(factory=DataConfig)
    optim: OptimConfig = option(factory=_ddt_optim)
    train: TrainConfig = option(factory=_ddt_train)
    usage_every: int = option(50, "log codebook usage (perplexity, used fraction, dead codes) every this many steps",
                              min=0)


def _vq_train() -> TrainConfig:
    return TrainConfig(out_dir="runs/vqvit", global_batch_size=256, epochs=100.0, ema_decay=0.999)


@dataclass
class SpatialVQRunConfig:
    """`detok train tokenizer --model vqvit_*`: the spatial VQ baseline, trained on DDT's recipe (see
    detok.tokenizers.spatial_vq); a DDT recipe's DDT-only tokenizer fields are left out of its YAML presets."""

    model: str = option("vqvit_mini", "vqvit preset the `tokenizer` section started from")
    tokenizer: SpatialVQConfig = option(factory=SpatialVQConfig)
    data: DataConfig = option(factory=DataConfig)
    optim: OptimConfig = option(factory=_ddt_optim)
    train: TrainConfig = option(factory=_vq_train)
    usage_every: int = option(50, "log codebook usage (perplexity, used fraction, dead codes) every this many steps",
                              min=0)


@dataclass
class SampleConfig:
    """Sampling settings of the end-of-training grid (and the defaults of `detok sample`)."""

    cfg_scale: float = option(1.0, "classifier-free guidance scale (1 = none)", min=0, aliases=("cfg",))
    steps: str = option("", "sampler steps (what they count: the family's sampling, see --help); empty = default")
    head_steps: str = option("", "per-token diffusion head steps (MAR, RasterAR, RandomAR); empty = default")
    per_class: int = option(4, "grid samples per class (one class per row; 0 = no grid)", min=0)
    seed: int = option(0, "sampling seed")


def _generator_optim() -> OptimConfig:
    return OptimConfig(lr=2e-4, weight_decay=0.0, warmup_epochs=0.0, grad_clip=0.0, schedule="constant")


def _generator_train() -> TrainConfig:
    return TrainConfig(out_dir="runs/generator", global_batch_size=1024, epochs=400.0, ema_decay=0.9999)


@dataclass
class GeneratorRunConfig:
    """Everything `detok train generator` needs (upstream l-DeTok generator recipe by default)."""

    model: str = option("sit_b", "generator name in the registry (a family member, e.g. sit_b, mar_tiny)")
    generator: dict[str, Any] = option(factory=dict, help="overrides of the generator's config fields")
    tokenizer: str = option("", "tokenizer run / checkpoint folder (EMA weights)")
    cache: str = option("", "latent cache from `detok encode`; empty = encode on the fly")
    posterior: Literal["sample", "mean"] = option(
        "sample", "what the generator learns: posterior 'sample's (upstream) or the posterior 'mean's")
    data: DataConfig = option(factory=DataConfig)
    optim: OptimConfig = option(factory=_generator_optim)
    train: TrainConfig = option(factory=_generator_train)
    sample: SampleConfig = option(factory=SampleConfig)


def _apply(data: dict[str, Any], presets: list[str], overrides: list[str]) -> dict[str, Any]:
    for preset in presets:
        deep_update(data, load_yaml(preset))
    for text in overrides:
        path, value = parse_override(text)
        merge(data, path, value)
    return data


def tokenizer_config(model: str | None = None, presets: list[str] | None = None,
                     overrides: list[str] | None = None) -> TokenizerRunConfig | DDTRunConfig | SpatialVQRunConfig:
    """Defaults, then the tokenizer preset `model`, then YAML presets, then `key=value` overrides."""
    from_yaml: dict[str, Any] = {}
    for preset in presets or []:
        deep_update(from_yaml, load_yaml(preset))
    name = registry.canonical("tokenizer", model or from_yaml.get("model") or TokenizerRunConfig.model)
    if name in DDT_PRESETS or name in VQ_PRESETS:
        return ddt_run_config(name, from_yaml, overrides)
    if name not in PRESETS:
        trainable = [n for n in registry.names("tokenizer") if n in PRESETS or n in DDT_PRESETS or n in VQ_PRESETS]
        raise ConfigError(f"unknown tokenizer {name!r}; choose one of {', '.join(trainable)}")
    data: dict[str, Any] = to_dict(TokenizerRunConfig())
    deep_update(data["tokenizer"], dict(PRESETS[name]))
    deep_update(data, from_yaml)
    data["model"] = name
    return from_dict(TokenizerRunConfig, _apply(data, [], list(overrides or [])))


def ddt_run_config(name: str, from_yaml: dict[str, Any],
                   overrides: list[str] | None) -> DDTRunConfig | SpatialVQRunConfig:
    """A discrete tokenizer run (DDT, or the spatial VQ baseline `vqvit_*`): defaults, the preset `name`, YAML
    presets (`from_yaml`), then overrides.

    The baseline trains on DDT's recipes (quickstart_ddt), so the tokenizer fields of a YAML preset that only DDT
    has (token schedule, decoding) are left out for it; the same fields given as overrides are still errors.
    """
    if name in VQ_PRESETS:
        run_cls, section = SpatialVQRunConfig, to_dict(spatial_vq_config(name))
        from_yaml = dict(from_yaml)
        ddt_only = {f.name for f in fields(DDTConfig)} - {f.name for f in fields(SpatialVQConfig)}
        from_yaml["tokenizer"] = {k: v for k, v in (from_yaml.get("tokenizer") or {}).items() if k not in ddt_only}
    else:
        run_cls, section = DDTRunConfig, to_dict(ddt_config(name))
    data: dict[str, Any] = to_dict(run_cls())
    data["tokenizer"] = section
    deep_update(data, from_yaml)
    data["model"] = name
    return from_dict(run_cls, _apply(data, [], list(overrides or [])))


def generator_recipe(family_name: str) -> dict[str, Any]:
    """The small CPU run recipe a generator family declares (its preset YAML or mapping), as a mapping."""
    fam = registry.family("generator", family_name)
    if isinstance(fam.recipe, dict):
        return dict(fam.recipe)
    if not fam.recipe:
        raise ConfigError(f"generator family {family_name} declares no recipe")
    return load_yaml(fam.recipe)


def generator_config(presets: list[str] | None = None, overrides: list[str] | None = None, *,
                     family: str | None = None) -> GeneratorRunConfig:
    """Defaults, then the family's recipe (if `family`), then YAML presets, then overrides; the model is checked."""
    data = to_dict(GeneratorRunConfig())
    if family is not None:
        deep_update(data, generator_recipe(family))
    cfg = from_dict(GeneratorRunConfig, _apply(data, list(presets or []), list(overrides or [])))
    check_generator_name(cfg.model)
    return cfg


def check_generator_name(name: str) -> str:
    """`name` if it is a registered generator, else a ConfigError listing the families and their members."""
    if name in registry.names("generator"):
        return name
    fams = "; ".join(f"{f.name}: {', '.join(registry.members('generator', f.name))}"
                     for f in registry.families("generator"))
    raise ConfigError(f"unknown generator {name!r}; registered: {fams}")


def generator_families(spec: str) -> list[str]:
    """A comma list of generator family names ('all' = every family), validated against the registry."""
    known = [f.name for f in registry.families("generator")]
    names = known if spec.strip() == "all" else [g.strip() for g in spec.split(",") if g.strip()]
    unknown = [g for g in names if g not in known]
    if unknown:
        raise ConfigError(f"unknown generator famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                          f"choose from {', '.join(known)} or 'all'")
    return names
