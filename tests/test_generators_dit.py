"""DiT family (DiT, SiT, LightningDiT): tiny presets from the registry, adaLN-Zero, sampling, guidance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import detok.generators.dit  # noqa: F401  (fills the registry)
import detok.generators.lightningdit  # noqa: F401
import detok.generators.sit  # noqa: F401
from detok.config import ConfigError
from detok.generators.dit import DiTConfig, DiTFamily
from detok.generators.lightningdit import LightningDiTConfig
from detok.generators.sit import SiTConfig
from detok.nn.dit_blocks import patchify, sincos_pos_embed_2d, unpatchify
from detok.registry import build, family_of, names, tiny_members

TINY = [n for n in tiny_members("generator") if family_of("generator", n).name in ("dit", "sit", "lightningdit")]
SHAPE = (4, 4, 4)  # (C, H, W)
CLASSES = 10
OUTPUT_LAYER = {"net.final_layer.linear.weight", "net.final_layer.linear.bias"}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny nets gain nothing from intra-op threads; on a busy 2-core machine two threads cost ~50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(name: str, **overrides) -> DiTFamily:
    torch.manual_seed(0)
    return build("generator", name, latent_shape=SHAPE, num_classes=CLASSES, **overrides)


def _batch(b: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *SHAPE, generator=g), torch.randint(0, CLASSES, (b,), generator=g)


def _times(name: str, b: int) -> torch.Tensor:
    """DDPM step indices for DiT, flow times in [0, 1] for the flow models."""
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 1000, (b,), generator=g) if name.startswith("dit") else torch.rand(b, generator=g)


def _wake(gen: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised (adaLN-Zero) weights small random values so that outputs depend on t and y."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return gen


def test_registry_has_every_preset_and_rejects_unknown_keys():
    for family in ("dit", "sit", "lightningdit"):
        for size in ("b", "l", "xl", "tiny"):
            assert f"{family}_{size}" in names("generator")
    gen = _gen("dit_tiny", sample_steps="25", cfg_legacy_3ch=True)
    assert isinstance(gen.cfg, DiTConfig) and gen.cfg.sample_steps == "25" and gen.cfg.cfg_legacy_3ch
    assert gen.cfg.latent_shape == SHAPE and gen.cfg.num_classes == CLASSES
    assert isinstance(_gen("sit_tiny").cfg, SiTConfig) and isinstance(
        _gen("lightningdit_tiny").cfg, LightningDiTConfig
    )
    with pytest.raises(ConfigError):
        _gen("sit_tiny", no_such_field=1)


@pytest.mark.parametrize("name", TINY)
def test_forward_shape_finite_and_zero_at_init(name):
    gen = _gen(name)
    x, y = _batch()
    out = gen.net(x, _times(name, 8), y)
    out_c = 2 * SHAPE[0] if name.startswith("dit") else SHAPE[0]  # learned sigma: [eps | v]
    assert out.shape == (8, out_c, *SHAPE[1:])
    assert torch.isfinite(out).all()
    assert not out.any()  # adaLN-Zero: the output layer starts at zero
    out = _wake(gen).net(x, _times(name, 8), y)
    assert torch.isfinite(out).all() and out.abs().mean() > 0


@pytest.mark.parametrize(
    ("name", "overrides"), [(n, {}) for n in TINY] + [("lightningdit_tiny", {"qk_norm": True})]
)
def test_backward_reaches_every_parameter(name, overrides):
    """adaLN-Zero: at step 0 only the output layer has a non-zero gradient; after two steps, everything does.

    Step 0: the output layer's weight is 0, so no gradient flows back into the trunk, and the zero
    modulation outputs block the conditioning. Step 1 moves the output layer; then the gates and
    modulations get gradients; after step 2 the gates are non-zero and every parameter is reached.
    """
    gen = _gen(name, **overrides).train()
    x, y = _batch()
    params = {n: p for n, p in gen.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=1e-3)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        out = gen.loss(x, y, rng=torch.Generator().manual_seed(step))
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        assert all(not v.requires_grad for k, v in out.items() if k != "loss")
        out["loss"].backward()
        assert all(p.grad is not None for p in params.values())
        if step == 0:
            assert {n for n, p in params.items() if p.grad.any()} == OUTPUT_LAYER
        opt.step()
    opt.zero_grad(set_to_none=True)
    gen.loss(x, y, rng=torch.Generator().manual_seed(9))["loss"].backward()
    for n, p in params.items():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", TINY)
def test_fixed_batch_overfits(name):
    gen = _gen(name, label_dropout=0.0).train()
    x, y = _batch()
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = gen.loss(x, y, rng=torch.Generator().manual_seed(0))[
            "loss"
        ]  # same t and noise each step
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


SAMPLE_STEPS = {"dit_tiny": "10", "sit_tiny": 5, "lightningdit_tiny": 10}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_sample_shape_and_seeded_determinism(name, cfg):
    gen = _wake(_gen(name)).eval()
    y = torch.tensor([0, 1, 2])

    def draw(seed: int, labels: torch.Tensor | None = y) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return gen.sample(3, labels, cfg_scale=cfg, steps=SAMPLE_STEPS[name], rng=g)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (3, *SHAPE) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert draw(0, None).shape == (3, *SHAPE)  # unconditional: null labels


def test_sit_sde_sampler_is_seeded():
    gen = _wake(_gen("sit_tiny", sampler="sde")).eval()
    y = torch.tensor([0, 1])
    a, b = (gen.sample(2, y, steps=8, rng=torch.Generator().manual_seed(0)) for _ in range(2))
    c = gen.sample(2, y, steps=8, rng=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("name", TINY)
def test_cfg_scale_one_equals_conditional(name):
    gen = _wake(_gen(name)).eval()
    x, y = _batch(4)
    t = _times(name, 4)
    cond = gen.net(x, t, y)
    guided = gen.guided_fn(y, 1.0)(torch.cat([x, torch.randn_like(x)]), torch.cat([t, t]))  # (2n, ...)
    torch.testing.assert_close(guided[:4], cond, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("legacy", [False, True])
def test_cfg_legacy_flag_guides_only_three_channels(legacy):
    gen = _wake(_gen("dit_tiny", cfg_legacy_3ch=legacy)).eval()
    x, y = _batch(4)
    t = _times("dit_tiny", 4)
    cond = gen.net(x, t, y)  # (n, 2C, H, W) = [eps | v]
    guided = gen.guided_fn(y, 4.0)(torch.cat([x, x]), torch.cat([t, t]))[:4]
    changed = [bool((guided[:, k] - cond[:, k]).abs().max() > 1e-4) for k in range(2 * SHAPE[0])]
    eps_changed = [True, True, True, not legacy]  # legacy: the 4th latent channel keeps the conditional eps
    assert changed == eps_changed + [False] * SHAPE[0]  # the learned sigma half is never guided


def test_lightningdit_cfg_interval_is_conditional_near_noise():
    gen = _wake(_gen("lightningdit_tiny")).eval()
    x, y = _batch(4)
    fn = gen.guided_fn(y, 4.0, interval=(gen.cfg.cfg_interval_start, 1.0))
    for time, guided_expected in [(0.05, False), (0.5, True)]:
        t = torch.full((4,), time)
        guided = fn(torch.cat([x, x]), torch.cat([t, t]))[:4]
        assert (not torch.allclose(guided, gen.net(x, t, y), atol=1e-5)) == guided_expected, time


def test_lightningdit_cosine_loss_option():
    x, y = _batch()
    upstream = _wake(_gen("lightningdit_tiny")).loss(x, y, rng=torch.Generator().manual_seed(0))
    added = _wake(_gen("lightningdit_tiny", use_cosine_loss=True)).loss(
        x, y, rng=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(upstream["loss"], upstream["mse"])  # upstream l-DeTok: computed, not added
    torch.testing.assert_close(added["loss"], added["mse"] + added["cos_loss"])
    torch.testing.assert_close(added["mse"], upstream["mse"])


def test_position_embeddings_fixed_for_dit_trainable_for_lightningdit():
    dit, light = _gen("dit_tiny"), _gen("lightningdit_tiny")
    assert "net.pos_embed" not in dict(dit.named_parameters()) and "net.pos_embed" not in dit.state_dict()
    assert light.net.pos_embed.requires_grad
    expect = sincos_pos_embed_2d(64, 4)[None]
    torch.testing.assert_close(dit.net.pos_embed, expect)
    torch.testing.assert_close(light.net.pos_embed.detach(), expect)


def test_sincos_pos_embed_matches_mae_layout():
    emb = sincos_pos_embed_2d(8, 3)  # (N, D): first half encodes the column, second half the row
    col, row = 2, 1
    tok = emb[row * 3 + col]
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expect = torch.cat([(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()])
    torch.testing.assert_close(tok, expect.float())


def test_patchify_linear_equals_conv_and_unpatchify_inverts():
    x = torch.randn(2, 4, 8, 8)
    conv = nn.Conv2d(4, 16, 2, stride=2)
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.flatten(1))
        lin.bias.copy_(conv.bias)
    tokens = lin(patchify(x, 2))  # (B, N, D)
    torch.testing.assert_close(tokens, conv(x).flatten(2).transpose(1, 2))
    # unpatchify reads (p q c); patchify writes (c p q): compare through the channel-last view
    p = patchify(x, 2).unflatten(-1, (4, 2, 2)).permute(0, 1, 3, 4, 2).flatten(2)  # (B, N, P*P*C)
    torch.testing.assert_close(unpatchify(p, 2, 4), x)


def test_patch_size_two():
    gen = _gen("dit_tiny", patch_size=2)
    x, y = _batch(2)
    assert gen.net(x, _times("dit_tiny", 2), y).shape == (2, 2 * SHAPE[0], *SHAPE[1:])


def test_base_parameter_counts():
    """B/1 on 16x16x16 latents with 1000 classes: DiT-B about 130M trainable parameters (l-DeTok reference)."""
    counts = {}
    for name in ("dit_b", "sit_b", "lightningdit_b"):
        with torch.device("meta"):
            gen = build("generator", name)
        counts[name] = sum(p.numel() for p in gen.parameters() if p.requires_grad)
    assert 129.5e6 < counts["dit_b"] < 131e6, counts
    assert counts["dit_b"] - counts["sit_b"] == 768 * 16 + 16  # learned sigma: only the output layer grows
    assert 129.5e6 < counts["lightningdit_b"] < 131.5e6, counts  # + trainable positions and RMSNorm gains
