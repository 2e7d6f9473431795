"""Typed configs: unknown keys and wrong types are errors; overrides parse as YAML; presets layer."""

from __future__ import annotations

import pytest

from detok.config import ConfigError, from_dict, parse_override, resolve, to_dict
from detok.runs.config import TokenizerRunConfig


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"tokenizer\.gama"):
        from_dict(TokenizerRunConfig, {"tokenizer": {"gama": 3.0}})


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.global_batch_size"):
        resolve(TokenizerRunConfig, [], ["train.global_batch_size=abc"])
    with pytest.raises(ConfigError, match="not one of"):
        resolve(TokenizerRunConfig, [], ["tokenizer.noise=gaussian"])


def test_overrides_are_typed_and_nested():
    cfg = resolve(TokenizerRunConfig, [], ["tokenizer.gamma=2", "optim.betas=[0.8, 0.9]", "train.epochs=1e1"])
    assert cfg.tokenizer.gamma == 2.0 and isinstance(cfg.tokenizer.gamma, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.epochs == 10.0
    assert parse_override("a.b=true") == (["a", "b"], True)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_round_trip_through_dict():
    cfg = resolve(TokenizerRunConfig, ["tokenizer_tiny"], ["tokenizer.mask_ratio=0.5"])
    assert from_dict(TokenizerRunConfig, to_dict(cfg)) == cfg


def test_missing_preset_lists_builtins():
    with pytest.raises(ConfigError, match="tokenizer_tiny"):
        resolve(TokenizerRunConfig, ["no_such_preset"], [])


def test_paper_defaults():
    cfg = TokenizerRunConfig()
    assert (cfg.tokenizer.gamma, cfg.tokenizer.mask_ratio, cfg.tokenizer.noise) == (3.0, 0.7, "interpolative")
    assert (cfg.loss.kl_weight, cfg.loss.perceptual_weight, cfg.loss.disc_weight) == (1e-6, 1.0, 0.1)
    assert (cfg.optim.betas, cfg.optim.base_lr, cfg.optim.grad_clip) == ((0.9, 0.95), 1e-4, 3.0)
    assert (cfg.train.global_batch_size, cfg.train.epochs, cfg.train.ema_decay) == (1024, 200.0, 0.999)
    assert cfg.disc_start_epoch == 100.0
