"""l-DeTok: registry-driven tiny presets, exact corruption formulas, RoPE, posterior, upstream parity."""

from __future__ import annotations

import math

import pytest
import torch

from detok.nn.rope import apply_rope, rope_angles
from detok.registry import build, family_of, names
from detok.tokenizers import DeTok, DiagonalGaussian, detok_config
from detok.tokenizers.upstream import convert_state_dict, load_upstream_tokenizer

# l-DeTok's tiny presets (the discrete-token families have their own tests: test_ddt.py, test_spatial_vq.py)
TINY = [n for n in names("tokenizer")
        if n.endswith("_tiny") and family_of("tokenizer", n).extra.get("tokens", "continuous") == "continuous"]


def _images(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward_every_param_gets_grad(name):
    torch.manual_seed(0)
    model = build("tokenizer", name, mask_low=0.1)  # m >= 0.1: masking (and the mask token) always in play
    x = _images(size=model.cfg.image_size)
    recon, kl, corr = model.train()(x, rng=torch.Generator().manual_seed(1))
    assert recon.shape == x.shape and torch.isfinite(recon).all() and torch.isfinite(kl)
    (recon.square().mean() + kl).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    z = model.eval().encode(x)
    assert z.shape == (x.shape[0], *model.latent_shape)
    assert model.decode(z).shape == x.shape


def test_detok_bb_parameter_count_matches_upstream():
    with torch.device("meta"):
        model = build("tokenizer", "detok_bb")
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 171.7) < 0.05


def _capture_decoder_input(model: DeTok) -> dict:
    seen = {}
    model.decoder.decoder_embed.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].detach()))
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("enc_in", a[0].detach()))
    return seen


@pytest.mark.parametrize("noise", ["interpolative", "additive"])
def test_latent_noise_formula_exact(noise):
    model = DeTok(detok_config("detok_tiny", mask_ratio=0.0, gamma=3.0, noise=noise)).train()
    seen = _capture_decoder_input(model)
    x = _images()
    model(x, rng=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.rand(1, generator=g, dtype=torch.float64)  # the (unused) mask-ratio draw
    post = DiagonalGaussian(model.encoder(x), dim=-1)
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
    tau = torch.rand(4, generator=g)[:, None, None]
    eps = 3.0 * torch.randn(z.shape, generator=g)
    expected = (1 - tau) * z + tau * eps if noise == "interpolative" else z + tau * eps
    torch.testing.assert_close(seen["z"], expected, rtol=1e-5, atol=1e-5)


def test_masking_drops_patches_before_the_encoder():
    model = DeTok(detok_config("detok_tiny", gamma=0.0, mask_ratio=0.7)).train()
    seen = _capture_decoder_input(model)
    x, n_tok = _images(), model.latent_grid**2
    for seed in range(6):
        _, _, corr = model(x, rng=torch.Generator().manual_seed(seed))
        u = torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).item()
        m = max(0.0, -0.1 + 0.8 * u)
        keep = math.ceil(n_tok * (1 - m))
        assert corr.mask_ratio[0].item() == pytest.approx(m, abs=1e-6)
        if keep == n_tok:
            assert corr.mask is None and seen["enc_in"].shape[1] == n_tok
            continue
        assert seen["enc_in"].shape[1] == keep, "the encoder must see the visible patches only"
        assert seen["z"].shape[1] == keep
        assert (corr.mask.sum(1) == n_tok - keep).all()


def test_mask_ratio_distribution():
    model = DeTok(detok_config("detok_tiny", mask_ratio=0.7))
    g = torch.Generator().manual_seed(0)
    ratios = torch.stack([model.draw_mask(1, torch.device("cpu"), g)[3][0] for _ in range(4000)])
    assert (ratios == 0).float().mean().item() == pytest.approx(0.1 / 0.8, abs=0.02)
    assert ratios.mean().item() == pytest.approx(0.7**2 / 2 / 0.8, abs=0.02)  # E[max(0, U(-0.1, 0.7))]
    assert ratios.max().item() <= 0.7


def test_per_sample_masking_equals_one_sample_at_a_time():
    model = DeTok(detok_config("detok_tiny", mask_per_sample=True, mask_low=0.0, mask_ratio=0.9)).eval()
    x = _images(b=6)
    keep_idx, mask, attn_mask, ratio = model.draw_mask(6, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert ratio.unique().numel() > 1 and attn_mask is not None
    out = model.encoder(x, keep_idx, attn_mask)  # (B, L, 2C), padded slots are ignored as keys
    valid = attn_mask[:, 0, 0]
    for b in range(6):
        k = int(valid[b].sum())
        alone = model.encoder(x[b : b + 1], keep_idx[b : b + 1, :k])
        torch.testing.assert_close(out[b, :k], alone[0], rtol=1e-4, atol=1e-5)


def test_eval_mode_applies_no_corruption():
    model = DeTok(detok_config("detok_tiny")).eval()
    x = _images()
    r1, _, c1 = model(x, rng=torch.Generator().manual_seed(0))
    r2, _, _ = model(x, rng=torch.Generator().manual_seed(1))
    assert c1.mask is None and (c1.tau == 0).all() and (c1.mask_ratio == 0).all()
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(r1, model.decode(model.encode(x)))


def _score(layout: str, qpos: int, kpos: int, grid: int = 4, d: int = 16) -> torch.Tensor:
    theta = rope_angles(grid, d, layout)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)
    rq = apply_rope(q, theta[qpos].cos(), theta[qpos].sin())
    rk = apply_rope(k, theta[kpos].cos(), theta[kpos].sin())
    return rq @ rk


def test_rope_is_a_rotation_depending_only_on_relative_offsets():
    # token (r, c) sits at index 4 r + c; shift both tokens by (+1, +1) -> index + 5
    for a, b in [(0, 5), (1, 6), (4, 2)]:
        torch.testing.assert_close(_score("rotation", a, b), _score("rotation", a + 5, b + 5), rtol=1e-5, atol=1e-5)
    theta = rope_angles(4, 16, "rotation")
    x = torch.randn(16)
    torch.testing.assert_close(apply_rope(x, theta[7].cos(), theta[7].sin()).norm(), x.norm())


def test_upstream_rope_layout_is_not_relative():
    diffs = [(_score("upstream", a, b) - _score("upstream", a + 5, b + 5)).abs() for a, b in [(0, 5), (1, 6)]]
    assert max(diffs) > 1e-3


def test_normalize_denormalize_round_trip():
    model = DeTok(detok_config("detok_tiny"))
    model.set_stats(torch.randn(16), torch.rand(16) + 0.5)
    z = torch.randn(3, *model.latent_shape)
    torch.testing.assert_close(model.denormalize(model.normalize(z)), z)
    zn = model.normalize(z)
    torch.testing.assert_close(zn[:, 3], (z[:, 3] - model.latent_mean[3]) / model.latent_std[3])
    with pytest.raises(ValueError):
        model.set_stats(torch.zeros(16), torch.zeros(16))


def test_posterior_kl_matches_closed_form():
    moments = torch.randn(2, 8, 3, 3)
    post = DiagonalGaussian(moments)
    q = torch.distributions.Normal(post.mean, post.std)
    p = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    torch.testing.assert_close(post.kl(), torch.distributions.kl_divergence(q, p).flatten(1).sum(1))
    assert DiagonalGaussian(torch.cat([torch.zeros(1, 4), torch.full((1, 4), -100.0)], 1)).logvar.min() == -30


def test_upstream_checkpoint_reproduces_upstream_outputs(upstream_fixture):
    fx = upstream_fixture["detok_tiny"]
    model = load_upstream_tokenizer(fx["checkpoint"])
    assert model.cfg.rope_layout == "upstream"
    with torch.no_grad():
        moments = model.encoder(fx["input"])  # (B, N, 2C)
        torch.testing.assert_close(moments[..., :16], fx["latent_mean"], rtol=0, atol=1e-5)
        torch.testing.assert_close(moments[..., 16:].clamp(-30, 20), fx["latent_logvar"], rtol=0, atol=1e-5)
        torch.testing.assert_close(model.decode(model.encode(fx["input"])), fx["decoded"], rtol=0, atol=1e-5)
        model.set_rope_layout("rotation")  # the flag matters: a true rotation changes the outputs
        assert (model.decode(model.encode(fx["input"])) - fx["decoded"]).abs().max() > 1e-4  # 10x the tolerance


def test_convert_state_dict_renames():
    out = convert_state_dict(
        {"encoder.transformer.3.attn.qkv.weight": torch.zeros(1), "decoder.ffn.1.weight": torch.zeros(5, 4, 1, 1)}
    )
    assert set(out) == {"encoder.blocks.3.attn.qkv.weight", "decoder.to_pixels.weight"}
    assert out["decoder.to_pixels.weight"].shape == (5, 4)


def test_rope_table_fast_path_equals_the_general_formula():
    from detok.nn.rope import apply_rope_table, rope_table

    x = torch.randn(2, 3, 16, 32)
    for layout in ("rotation", "upstream"):
        theta = rope_angles(4, 32, layout)
        torch.testing.assert_close(
            apply_rope_table(x, rope_table(4, 32, layout)), apply_rope(x, theta.cos(), theta.sin()), rtol=1e-5, atol=1e-5
        )


def test_corruption_strength_scales_the_same_draws_and_zero_means_none():
    """`strength` multiplies the drawn mask ratios and noise levels; at 0 the training forward corrupts
    nothing: no mask, tau 0, the decoder sees the posterior sample."""
    model = DeTok(detok_config("detok_tiny", mask_per_sample=True, mask_low=0.2, mask_ratio=0.9)).train()
    x = _images()
    _, _, full = model(x, rng=torch.Generator().manual_seed(5))
    _, _, half = model(x, rng=torch.Generator().manual_seed(5), strength=0.5)
    torch.testing.assert_close(half.mask_ratio, full.mask_ratio * 0.5)  # the ratio is the first draw
    assert (full.tau > 0).all() and (full.mask_ratio > 0).all()
    noise_only = DeTok(detok_config("detok_tiny", mask_ratio=0.0)).train()  # same draws before tau at any strength
    _, _, full = noise_only(x, rng=torch.Generator().manual_seed(5))
    _, _, half = noise_only(x, rng=torch.Generator().manual_seed(5), strength=0.5)
    torch.testing.assert_close(half.tau, full.tau * 0.5)
    recon, _, none = model(x, rng=torch.Generator().manual_seed(5), strength=0.0)
    assert none.mask is None and (none.tau == 0).all() and (none.mask_ratio == 0).all()


def test_corruption_anneal_fades_the_last_fraction_of_training_linearly_to_zero(tmp_path):
    """train_tokenizer with corruption_anneal=0.5 over 8 steps: full strength for steps 0-3, then 0.75, 0.5,
    0.25, 0 (logged per step), while the default run logs no strength and corrupts to the end."""
    import json

    from detok.runs import tokenizer_config, train_tokenizer

    common = ["tokenizer.image_size=16", "data.name=shapes", "data.image_size=16", "data.shapes_size=64",
              "data.num_workers=0", "train.global_batch_size=4", "train.max_steps=8", "train.log_every=1",
              "train.ckpt_every=100", "train.progress=false", "stats_images=8", "loss.perceptual_weight=0"]
    train_tokenizer(tokenizer_config("detok_tiny", [], [*common, f"train.out_dir={tmp_path / 'a'}",
                                                        "corruption_anneal=0.5"]), recon_images=0)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    strength = [r["corruption_strength"] for r in rows if "corruption_strength" in r]
    assert strength == pytest.approx([1, 1, 1, 1, 0.75, 0.5, 0.25, 0.0])
    assert rows[-1]["tau"] == 0 and rows[-1]["mask_ratio"] == 0
    train_tokenizer(tokenizer_config("detok_tiny", [], [*common, f"train.out_dir={tmp_path / 'b'}"]), recon_images=0)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert not any("corruption_strength" in r for r in rows) and any(r.get("tau", 0) > 0 for r in rows)


def test_decoder_told_the_noise_level_starts_as_the_paper_and_reads_the_drawn_tau():
    """`decoder_noise_cond`: at init (zero last layer) the decoder equals the paper's with the same weights; once
    the embedding is non-zero its output depends on tau; inference decodes as tau = 0, and the training forward
    hands the decoder exactly the tau it drew (the one it reports)."""
    paper = DeTok(detok_config("detok_tiny", mask_ratio=0.0))
    told = DeTok(detok_config("detok_tiny", mask_ratio=0.0, decoder_noise_cond=True))
    missing, unexpected = told.load_state_dict(paper.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("decoder.noise_embed.") for k in missing)
    x = _images()
    z = paper.eval().encode(x)
    torch.testing.assert_close(told.eval().decode(z), paper.decode(z), rtol=0, atol=0)
    torch.nn.init.normal_(told.decoder.noise_embed.mlp[-1].weight, std=0.5)
    tokens = z.flatten(2).transpose(1, 2)  # (B, N, C)
    zero, half = (told.decoder(tokens, tau=torch.full((4,), t)) for t in (0.0, 0.5))
    torch.testing.assert_close(told.decode(z), zero, rtol=0, atol=0)
    assert (half - zero).abs().mean() > 1e-3
    seen = []
    told.decoder.noise_embed.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    _, _, corr = told.train()(x, rng=torch.Generator().manual_seed(3))
    assert (corr.tau > 0).all()
    torch.testing.assert_close(seen[-1], 1000 * corr.tau)
