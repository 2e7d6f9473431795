"""The model contract, one test per property parametrised over every `*_tiny` member of the registry (timm's
pattern): a new family gets these checks by registering itself, with no list here to update.

Generators: finite loss, every trainable parameter gets a gradient, seeded sampling is deterministic (and
depends on the seed), the guided path at scale 1 reproduces the conditional one, sampling arguments are
checked against the family's declared Sampling, save -> load round trip through a checkpoint.
Tokenizers: finite loss with gradients everywhere, encode / decode deterministic, round trip.
"""

from __future__ import annotations

import pytest
import torch

from detok import registry
from detok.generators.base import Generator
from detok.generators.load import load_generator
from detok.io import save_checkpoint

LATENT = (4, 4, 4)  # (C, h, w): 16 tokens at patch 1
CLASSES = 5

def _continuous(kind: str, name: str) -> bool:
    """Families over continuous latents; the discrete-token ones (DDT, ddt_ar) have their own contract tests
    (tests/test_ddt.py, tests/test_ddt_ar.py)."""
    return registry.family_of(kind, name).extra.get("tokens", "continuous") == "continuous"


GENERATORS = [n for n in registry.tiny_members("generator") if _continuous("generator", n)]
TOKENIZERS = [n for n in registry.tiny_members("tokenizer")
              if registry.family_of("tokenizer", n).extra.get("trainable", False) and _continuous("tokenizer", n)]
FAST_SAMPLING = {"dit": {"steps": "4"}, "sit": {"steps": 4, "sampler": "euler"}, "lightningdit": {"steps": 4},
                 "mar": {"steps": 4, "head_steps": 4}, "rasterar": {"head_steps": 4}, "randomar": {"head_steps": 4}}


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str) -> Generator:
    torch.manual_seed(0)
    gen = registry.build("generator", name, latent_shape=LATENT, num_classes=CLASSES)
    with torch.no_grad():  # zero-initialised (adaLN-Zero, output) weights would block gradients and signal
        g = rng(1)
        for p in gen.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return gen


def sample_kwargs(name: str) -> dict:
    fam = registry.family_of("generator", name).name
    kw = dict(FAST_SAMPLING.get(fam, {}))
    kw.pop("sampler", None)
    return kw


def test_registry_lists_a_tiny_member_of_every_family():
    for kind in ("generator", "tokenizer"):
        for fam in registry.families(kind):
            if fam.extra.get("trainable", True):
                assert any(m.endswith("_tiny") for m in registry.members(kind, fam.name)), fam.name
    assert len(GENERATORS) >= 6 and TOKENIZERS


def test_every_member_belongs_to_a_family_with_sampling_declared():
    for name in registry.names("generator"):
        fam = registry.family_of("generator", name)
        assert fam.sampling is not None and fam.sampling.steps and fam.config is not None, name


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_loss_is_finite_and_reaches_every_parameter(name):
    gen = build(name).train()
    x = torch.randn(4, *LATENT, generator=rng(2))
    y = torch.randint(0, CLASSES, (4,), generator=rng(3))
    y[0] = gen.null_label  # a dropped label, as label dropout makes them: the null-class path gets gradients too
    out = gen.loss(x, y, rng(4))
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    dead = [n for n, p in gen.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f"{name}: no gradient reaches {dead[:6]}"


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_sampling_is_seeded(name):
    gen = build(name).eval()
    if registry.family_of("generator", name).name == "sit":
        gen.cfg.sampler = "euler"  # the adaptive dopri5 on random weights takes many steps
    y = torch.tensor([0, 3])
    kw = sample_kwargs(name)
    a = gen.sample(2, y, cfg_scale=2.0, rng=rng(5), **kw)
    b = gen.sample(2, y, cfg_scale=2.0, rng=rng(5), **kw)
    c = gen.sample(2, y, cfg_scale=2.0, rng=rng(6), **kw)
    assert a.shape == (2, *LATENT) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", GENERATORS)
def test_guided_path_at_scale_one_is_the_conditional_prediction(name):
    """cfg_scale = 1 takes the conditional path; the doubled-batch guided path just above 1 must agree with it."""
    gen = build(name).eval()
    y = torch.tensor([1, 4])
    if hasattr(gen, "guided_fn"):  # DiT family: a stochastic sampler draws noise for the whole (doubled) batch,
        x = torch.randn(2, *LATENT, generator=rng(7))  # so compare the guided model function itself
        t = torch.tensor([0.3, 0.7]) if not name.startswith("dit") else torch.tensor([300, 700])
        with torch.no_grad():
            cond = gen.conditional_fn(y)(x, t)
            guided = gen.guided_fn(y, 1.0)(torch.cat([x, x]), torch.cat([t, t]))[:2]
        torch.testing.assert_close(guided, cond, atol=1e-5, rtol=1e-5)
        return
    if registry.family_of("generator", name).name == "sit":
        gen.cfg.sampler = "euler"
    kw = sample_kwargs(name)
    cond = gen.sample(2, y, cfg_scale=1.0, rng=rng(7), **kw)
    guided = gen.sample(2, y, cfg_scale=1.0 + 1e-7, rng=rng(7), **kw)
    torch.testing.assert_close(guided, cond, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", GENERATORS)
def test_sampling_arguments_follow_the_family_declaration(name):
    gen = build(name).eval()
    sampling = type(gen).sampling
    assert sampling is registry.family_of("generator", name).sampling
    if not sampling.head_steps:
        with pytest.raises(ValueError, match="head_steps"):
            gen.sample(1, torch.tensor([0]), head_steps=2)
    if sampling.fixed_steps:
        with pytest.raises(ValueError, match="head_steps"):
            gen.sample(1, torch.tensor([0]), steps=2)
    with pytest.warns(DeprecationWarning, match="cfg_scale"):  # the pre-0.2 spelling, for one release
        old = gen.sample(1, torch.tensor([0]), cfg=1.0, rng=rng(8), **sample_kwargs(name))
    assert torch.equal(old, gen.sample(1, torch.tensor([0]), cfg_scale=1.0, rng=rng(8), **sample_kwargs(name)))


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_checkpoint_round_trip(name, tmp_path):
    gen = build(name).eval()
    config = {"model": name, "generator": {}, "latent_shape": list(LATENT), "num_classes": CLASSES}
    save_checkpoint(tmp_path, 1, kind="generator", weights={"model": gen.state_dict()},
                    ema={"model": dict(gen.named_parameters())}, config=config)
    back, cfg = load_generator(tmp_path)
    assert cfg["model"] == name and type(back) is type(gen)
    for (k, v), (k2, v2) in zip(gen.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    x, y = torch.randn(2, *LATENT, generator=rng(9)), torch.tensor([0, 1])
    assert torch.equal(gen.loss(x, y, rng(10))["loss"], back.loss(x, y, rng(10))["loss"])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_tokenizer_contract(name, tmp_path):
    from detok.losses.tokenizer_loss import TokenizerLoss, TokenizerLossConfig
    from detok.tokenizers.load import load_tokenizer

    torch.manual_seed(0)
    tok = registry.build("tokenizer", name, image_size=32)
    x = torch.rand(2, 3, 32, 32, generator=rng(11)) * 2 - 1
    recon, kl, _ = tok.train()(x, rng=rng(12))
    loss = TokenizerLoss(TokenizerLossConfig(perceptual_pretrained=False, convnext_weight=0.0), rng=rng(13))
    out = loss.generator_loss(x, recon, kl, gan_active=False)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    dead = [n for n, p in tok.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead in ([], ["mask_token"]) or all("mask" in d for d in dead), dead  # m = 0 draws leave it unused
    tok.eval()
    with torch.no_grad():
        z = tok.encode(x)
        assert torch.equal(z, tok.encode(x)) and tuple(z.shape[1:]) == tuple(tok.latent_shape)
        s1, s2 = tok.encode(x, sample=True, rng=rng(14)), tok.encode(x, sample=True, rng=rng(14))
        assert torch.equal(s1, s2) and not torch.equal(s1, z)
        save_checkpoint(tmp_path, 1, kind="tokenizer", weights={"model": tok.state_dict()},
                        config={"model": name, "tokenizer": tok.cfg.__dict__})
        back = load_tokenizer(tmp_path)
        assert torch.equal(back.decode(back.encode(x)), tok.decode(tok.encode(x)))
