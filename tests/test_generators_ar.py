"""MAR, RasterAR and RandomAR with the per-token diffusion head: upstream parity and invariants (CPU)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from detok.generators.ar import ARDiff, KVCache, RasterAR, ar_config
from detok.generators.diffloss import DiffLoss
from detok.generators.mar import MAR, mar_config, mask_by_order, random_orders, truncated_normal
from detok.generators.upstream_mar import infer_config, load_upstream_mar
from detok.registry import build, family_of, names, tiny_members

TINY = [n for n in tiny_members("generator") if family_of("generator", n).name in ("mar", "rasterar", "randomar")]
LATENT = (16, 4, 4)  # the fixture's 4 x 4 grid of 16 channels
CLASSES = 10


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are launch-bound: one thread is as fast, and immune to cores shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, **overrides) -> MAR | ARDiff:
    """A tiny generator on the fixture's latent shape."""
    return build("generator", name, latent_shape=LATENT, num_classes=CLASSES, **overrides)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Move every parameter off its (partly zero) init so that every path carries signal."""
    g = gen(seed)
    for p in model.parameters():
        p.add_(std * torch.randn(p.shape, generator=g))


# -- upstream parity ---------------------------------------------------------------------------------


def test_mar_fixture_parity(upstream_fixture):
    fx = upstream_fixture["mar_tiny"]
    model = load_upstream_mar(fx["checkpoint"], use_ema=False)
    assert model.cfg == mar_config("mar_tiny", LATENT, CLASSES)
    # the preset built from the registry takes the checkpoint with no renaming
    tiny("mar_tiny").load_state_dict(fx["checkpoint"]["model"], strict=True)

    tokens = model.patchify(fx["latents"])
    torch.testing.assert_close(tokens, fx["tokens"], atol=0, rtol=0)
    torch.testing.assert_close(model.unpatchify(tokens), fx["latents"], atol=0, rtol=0)
    with torch.no_grad():
        z = model(tokens, fx["mask"], fx["labels"])
        out = model.diffloss.net(fx["diffloss_x_t"], fx["diffloss_t"], fx["diffloss_c"])
    torch.testing.assert_close(z, fx["decoder_output"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, fx["diffloss_net_output"], atol=1e-5, rtol=1e-5)


def test_upstream_config_inference(upstream_fixture):
    state = upstream_fixture["mar_tiny"]["checkpoint"]["model"]
    cfg = infer_config(state)
    assert (cfg.width, cfg.encoder_depth, cfg.decoder_depth, cfg.heads, cfg.buffer_size) == (64, 2, 2, 2, 4)
    assert (cfg.diffloss_d, cfg.diffloss_w, cfg.num_classes, cfg.latent_shape) == (2, 64, 10, LATENT)


def test_upstream_file_with_args_and_ema(tmp_path):
    """LTH14/mar files carry `args` (a Namespace): the safe loader accepts it; EMA weights win by default."""
    state = tiny("mar_tiny").state_dict()
    ema = {k: v + 1.0 for k, v in state.items()}
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": state, "model_ema": ema, "args": argparse.Namespace(model="mar_tiny")}, path)
    loaded = load_upstream_mar(path)
    assert not loaded.training
    torch.testing.assert_close(loaded.fake_latent, ema["fake_latent"])
    torch.testing.assert_close(load_upstream_mar(path, use_ema=False).fake_latent, state["fake_latent"])


# -- randomness helpers ------------------------------------------------------------------------------


def test_truncated_normal_matches_mar_mask_ratio():
    """truncnorm(a=-1.2, b=0, loc=1, scale=0.25): support [0.7, 1], mean 1 + 0.25 (phi(a) - phi(0)) / Z."""
    r = truncated_normal(20_000, 0.7, 1.0, 1.0, 0.25, gen(0))
    assert r.min() >= 0.7 and r.max() <= 1.0
    pdf_a, pdf_b = math.exp(-(1.2**2) / 2) / math.sqrt(2 * math.pi), 1 / math.sqrt(2 * math.pi)
    mass = 0.5 - 0.5 * math.erfc(1.2 / math.sqrt(2))  # Phi(0) - Phi(-1.2)
    assert abs(r.mean().item() - (1 + 0.25 * (pdf_a - pdf_b) / mass)) < 3e-3
    torch.testing.assert_close(truncated_normal(5, 0.7, 1.0, 1.0, 0.25, gen(1)),
                               truncated_normal(5, 0.7, 1.0, 1.0, 0.25, gen(1)))  # fmt: skip


def test_orders_and_masks():
    orders = random_orders(3, 16, gen(0))
    assert torch.equal(orders.sort(dim=1).values, torch.arange(16).expand(3, -1))
    assert not torch.equal(orders[0], orders[1])
    mask = mask_by_order(orders, 5)
    assert mask.sum(1).tolist() == [5, 5, 5]
    assert mask.gather(1, orders[:, :5]).all()


# -- every tiny generator ----------------------------------------------------------------------------


def test_registry_names():
    expected = {f"{f}_{s}" for f in ("mar",) for s in ("b", "l", "h", "tiny")}
    expected |= {f"{f}ar_{s}" for f in ("raster", "random") for s in ("b", "l", "xl", "tiny")}
    assert expected <= set(names("generator"))


@pytest.mark.parametrize("name", TINY)
def test_loss_backward_and_every_parameter_learns(name):
    """Zero-inits (upstream's) delay some gradients, so we check the 4th backward, after 3 Adam steps.

    The head's output layer and adaLN modulations start at zero (adaLN-Zero), and so do the AR blocks'.
    Backward 1 reaches only the head's output layer; 2 its adaLN and input projection; 3 the head MLP,
    its time / condition embeddings and the backbone; 4 the AR blocks' attention / MLP (behind their
    zero gates) and the AR class / step embeddings (behind the zero modulations). MAR's z_proj only
    sees unmasked tokens, and a draw of mask ratio > 15/16 masks all 16 tokens of this tiny grid.
    """
    torch.manual_seed(0)
    model = tiny(name).train()
    x = torch.randn(2, *LATENT, generator=gen(1))
    labels = torch.tensor([3, model.null_label])  # the null class learns too
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = gen(2)  # with this seed the 4th MAR draw leaves some tokens visible
    for step in range(4):
        opt.zero_grad()
        out = model.loss(x, labels, rng=g)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        if step < 3:
            opt.step()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reaches {silent}"


@pytest.mark.parametrize("name", TINY)
def test_overfits_a_fixed_batch(name):
    torch.manual_seed(0)
    model = tiny(name, label_dropout=0.0)
    x = torch.randn(2, *LATENT, generator=gen(1))
    labels = torch.tensor([1, 4])

    @torch.no_grad()
    def held_out() -> float:  # fixed timesteps / noise / masks: a deterministic estimate
        model.eval()
        value = sum(model.loss(x, labels, rng=gen(100 + s))["loss"].item() for s in range(4)) / 4
        model.train()
        return value

    before = held_out()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = gen(7)
    for _ in range(80):
        opt.zero_grad()
        model.loss(x, labels, rng=g)["loss"].backward()
        opt.step()
    after = held_out()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", TINY)
def test_sample_shape_and_determinism(name):
    model = tiny(name).eval()
    perturb(model)
    labels = torch.tensor([2, 5])
    # MAR: more AR iterations (20) than tokens (16) exercises the schedule's clamping
    kw = {"steps": 20, "head_steps": 25} if name.startswith("mar") else {"head_steps": "10"}
    a = model.sample(2, labels, cfg_scale=3.0, rng=gen(0), **kw)
    b = model.sample(2, labels, cfg_scale=3.0, rng=gen(0), **kw)
    c = model.sample(2, None, rng=gen(1), **kw)
    assert a.shape == c.shape == (2, *LATENT)
    assert torch.isfinite(a).all() and torch.isfinite(c).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a != 0).all()  # every token was generated


def test_mar_sample_reaches_every_token_in_few_steps():
    model = tiny("mar_tiny").eval()
    out = model.sample(3, torch.tensor([0, 1, 2]), cfg_scale=1.5, steps=3, rng=gen(0), head_steps=5)
    assert (out != 0).all()


# -- KV cache ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rasterar_tiny", "randomar_tiny"])
def test_kv_cache_equals_full_prefix(name):
    model = tiny(name).eval()
    perturb(model)
    tokens = torch.randn(2, 16, 16, generator=gen(3))
    orders = model.orders(2, gen(4))
    labels = torch.tensor([1, 7])
    with torch.no_grad():
        full = model(tokens, orders, labels)  # (B, N, D)
        x, cond = model.input_embeddings(tokens, orders), model.conditions(labels, 16)
        cache = KVCache(len(model.blocks))
        steps = [model.transformer(x[:, :3], cond[:, :3], cache)]  # a multi-token prefix, then one by one
        steps += [model.transformer(x[:, i : i + 1], cond[:, i : i + 1], cache) for i in range(3, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)

    kw = {"cfg_scale": 2.5, "head_steps": "10", "rng": None}
    with_cache = model.sample(2, labels, **{**kw, "rng": gen(5)}, use_kv_cache=True)
    without = model.sample(2, labels, **{**kw, "rng": gen(5)}, use_kv_cache=False)
    torch.testing.assert_close(with_cache, without, atol=1e-5, rtol=1e-5)


def test_ar_order_must_match_class():
    with pytest.raises(ValueError, match="raster"):
        RasterAR(ar_config("randomar_tiny", LATENT, CLASSES))


# -- diffusion head ----------------------------------------------------------------------------------


def test_diffloss_cfg_one_is_conditional():
    head = DiffLoss(channels=4, cond_channels=8, depth=2, width=16)
    perturb(head)
    z, z_null = torch.randn(3, 8, generator=gen(0)), torch.randn(3, 8, generator=gen(1))
    plain = head.sample(z, steps=10, rng=gen(2))
    guided = head.sample(z, z_null, cfg_scale=1.0, steps=10, rng=gen(2))
    # uncond + 1 * (cond - uncond) equals cond up to float rounding (the perturbed head's samples are ~1e2)
    torch.testing.assert_close(plain, guided, rtol=1e-5, atol=1e-5)
    assert head.sample(z[:0], steps=10).shape == (0, 4)


def test_diffloss_clip_keeps_a_respaced_sampler_of_an_untrained_head_in_range():
    """The cosine schedule's last step (abar ~ 2e-9) turns any eps error into a huge x0: the zero-initialised
    head (eps = 0) samples at std > 100 with 50 respaced steps, as a CPU-budget MAR did. Clamping x0 to +-3
    (`diffloss_clip`) keeps every sample inside +-3; clip 0 is the free sampler exactly; both families'
    configs reach the head."""
    z = torch.randn(64, 8, generator=gen(0))
    free = DiffLoss(channels=4, cond_channels=8, depth=2, width=16)
    clipped = DiffLoss(channels=4, cond_channels=8, depth=2, width=16, clip_xstart=3.0)
    clipped.load_state_dict(free.state_dict())
    a = free.sample(z, steps=50, rng=gen(1))
    assert a.std() > 100
    b = clipped.sample(z, steps=50, rng=gen(1))
    assert b.abs().max() <= 3.0 + 1e-5 and b.std() > 0.1
    torch.testing.assert_close(clipped.sample_plain(z, steps=50, rng=gen(1)), b, rtol=1e-5, atol=1e-5)
    zero = DiffLoss(channels=4, cond_channels=8, depth=2, width=16, clip_xstart=0.0)
    zero.load_state_dict(free.state_dict())
    torch.testing.assert_close(zero.sample(z, steps=50, rng=gen(1)), a, rtol=0, atol=0)
    assert build("generator", "mar_tiny", diffloss_clip=3.0).diffloss.clip_xstart == 3.0
    assert build("generator", "rasterar_tiny", diffloss_clip=3.0).diffloss.clip_xstart == 3.0
    assert build("generator", "mar_tiny").diffloss.clip_xstart == 0.0  # the default is upstream's


@pytest.mark.parametrize("chunk_elements", [1 << 23, 200])  # all steps in one product / a few steps per chunk
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_diffloss_precomputed_modulations_equal_the_plain_head(monkeypatch, chunk_elements, cfg):
    """The sampler's speed trick (every adaLN output of every step computed before the loop, in chunks)
    gives the samples of the straightforward head that recomputes everything at every step."""
    import detok.generators.diffloss as diffloss

    monkeypatch.setattr(diffloss, "PRECOMPUTE_ELEMENTS", chunk_elements)  # the chunk size, not the head
    head = DiffLoss(channels=4, cond_channels=8, depth=2, width=16)
    perturb(head)
    z, z_null = torch.randn(3, 8, generator=gen(0)), torch.randn(3, 8, generator=gen(1))
    kw = {"z_uncond": z_null, "cfg_scale": cfg} if cfg != 1.0 else {}
    fast = head.sample(z, steps=25, rng=gen(2), **kw)
    plain = head.sample_plain(z, steps=25, rng=gen(2), **kw)
    assert fast.abs().max() > 1.0  # a real trajectory, not zeros
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    # and the network's forward equals its modulated form at any (x, t, z)
    x, t = torch.randn(5, 4, generator=gen(3)), torch.tensor([0, 3, 99, 500, 999])
    c = torch.randn(5, 8, generator=gen(4))
    y = head.net.time_embed(t) + head.net.cond_embed(c)
    torch.testing.assert_close(head.net(x, t, c), head.net.denoise_modulated(x, head.net.modulations(y)))


def test_diffloss_training_path_equals_the_concatenated_modulations_with_gradients():
    """The training forward uses each adaLN output where it is made (no concatenated copy of all of them):
    the same output and the same gradient for every parameter as the concatenate-then-split form."""
    head = DiffLoss(channels=4, cond_channels=8, depth=3, width=16)
    perturb(head)
    x, c = torch.randn(6, 4, generator=gen(5)), torch.randn(6, 8, generator=gen(6))
    t = torch.tensor([0, 7, 99, 500, 998, 999])
    grads = []
    for split in (False, True):
        head.zero_grad(set_to_none=True)
        y = head.net.time_embed(t) + head.net.cond_embed(c)
        out = head.net.denoise_modulated(x, head.net.modulations(y)) if split else head.net.denoise(x, y)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in head.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    assert grads[0][1].keys() == grads[1][1].keys()
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], rtol=1e-6, atol=1e-6, msg=name)


# -- sizes -------------------------------------------------------------------------------------------


def count(name: str) -> tuple[float, float]:
    """(total, diffusion head) parameters in millions, built on the meta device."""
    with torch.device("meta"):
        model = build("generator", name)
    total = sum(p.numel() for p in model.parameters())
    return total / 1e6, sum(p.numel() for p in model.diffloss.parameters()) / 1e6


def test_parameter_counts():
    mar_b, mar_b_head = count("mar_b")  # l-DeTok README: 208M (d6 w1024)
    assert abs(mar_b - 207.9) < 0.5 and abs(mar_b_head - 35.7) < 0.3, (mar_b, mar_b_head)
    mar_l, _ = count("mar_l")  # README: 479M (d8 w1280)
    assert abs(mar_l - 478.5) < 1.5, mar_l
    ar_b, ar_b_head = count("rasterar_b")  # ~150M: 130M backbone + 20M head (d3 w1024)
    assert abs(ar_b - 150) < 2.5 and abs(ar_b_head - 20) < 0.5, (ar_b, ar_b_head)
    assert count("randomar_b") == (ar_b, ar_b_head)


@pytest.mark.parametrize("rows", [1, 2, 4, 64, 65])
def test_skinny_linear_equals_f_linear(rows):
    from detok.nn.linear import SKINNY_MIN_WEIGHT, Linear

    layer = Linear(1024, SKINNY_MIN_WEIGHT // 1024)
    x = torch.randn(rows, 1, 1024, generator=gen(rows))  # extra axis: the fast path flattens rows
    out = layer(x)
    assert out.shape == (rows, 1, layer.out_features) and out.is_contiguous()
    torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.weight, layer.bias))
    out.sum().backward()  # differentiable on either path
    assert layer.weight.grad is not None
