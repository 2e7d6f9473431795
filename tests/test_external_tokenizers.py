"""Outside autoencoders as tokenizers: MAR's KL-16 (native, upstream key layout) and diffusers' AutoencoderKL."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from detok.registry import build
from detok.tokenizers.external import (
    MAR_KL16_SCALE,
    SD_VAE_SCALE,
    KL16Config,
    KL16Tokenizer,
    save_external_tokenizer,
)
from detok.tokenizers.load import load_tokenizer, parse_spec

# A small KL-16-shaped net: 3 levels (stride 4), attention in the last encoder level, as upstream's level 4.
SMALL = dict(image_size=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), embed_dim=4)


def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def upstream_kl_layout(ch: int, ch_mult, n_blocks: int, attn_levels, z: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an LDM / MAR `AutoencoderKL` state dict, written from the architecture facts alone."""
    out: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k):
        out[f"{name}.weight"], out[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        out[f"{name}.weight"], out[f"{name}.bias"] = (c,), (c,)

    def res(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    def mid(part, c):
        res(f"{part}.mid.block_1", c, c), attn(f"{part}.mid.attn_1", c), res(f"{part}.mid.block_2", c, c)

    widths, last = [ch * m for m in ch_mult], len(ch_mult) - 1
    conv("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, w in enumerate(widths):
        for j in range(n_blocks):
            res(f"encoder.down.{i}.block.{j}", cin, w)
            cin = w
            if i in attn_levels:
                attn(f"encoder.down.{i}.attn.{j}", w)
        if i < last:
            conv(f"encoder.down.{i}.downsample.conv", w, w, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", cin), conv("encoder.conv_out", cin, 2 * z, 3)
    conv("decoder.conv_in", z, widths[-1], 3)
    mid("decoder", widths[-1])
    cin = widths[-1]
    for i in reversed(range(len(widths))):
        for j in range(n_blocks + 1):
            res(f"decoder.up.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, 3, 3)
    conv("quant_conv", 2 * z, 2 * z, 1), conv("post_quant_conv", z, z, 1)
    return out


def _fake_upstream_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in layout.items()}


# -- MAR KL-16 -------------------------------------------------------------------------------------------
def test_kl16_paper_key_layout_matches_upstream_facts():
    with torch.device("meta"):
        tok = KL16Tokenizer()
    mine = {k: tuple(v.shape) for k, v in tok.vae.state_dict().items()}
    assert mine == upstream_kl_layout(128, (1, 1, 2, 2, 4), 2, (4,), 16)
    assert "encoder.down.4.attn.1.q.weight" in mine and "decoder.mid.attn_1.q.weight" in mine
    assert not any(re.match(r"decoder\.up\.\d+\.attn", k) for k in mine)  # decoder: mid-block attention only
    assert tok.latent_shape == (16, 16, 16)


def test_kl16_small_round_trip_shapes_and_default_stats():
    tok = build("tokenizer", "mar_kl16", **SMALL).eval()
    x = _images()
    with torch.no_grad():
        moments = tok.encode_moments(x)
        z = tok.encode(x)
        y = tok.decode(z)
    assert moments.shape == (2, 8, 8, 8) and z.shape == (2, *tok.latent_shape) == (2, 4, 8, 8)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(tok.normalize(z), z * MAR_KL16_SCALE)  # MAR's scaled latents before recomputing
    torch.testing.assert_close(tok.denormalize(tok.normalize(z)), z)


@pytest.mark.slow
def test_kl16_paper_size_shapes():
    tok = KL16Tokenizer().eval()
    with torch.no_grad():
        x = _images(1, 256)
        moments = tok.encode_moments(x)
        y = tok.decode(moments[:, :16])
    assert moments.shape == (1, 32, 16, 16) and y.shape == (1, 3, 256, 256)


def test_kl16_upstream_checkpoint_loads_strict_by_name(tmp_path):
    layout = upstream_kl_layout(32, (1, 2, 2), 1, (2,), 4)
    state = _fake_upstream_state(layout)
    path = tmp_path / "kl16.ckpt"
    torch.save({"model": state}, path)
    tok = load_tokenizer(f"mar_kl16:{path}", image_size=32)
    assert isinstance(tok, KL16Tokenizer) and not tok.training
    assert tok.cfg.ch_mult == (1, 2, 2) and tok.cfg.attn_levels == (2,) and tok.cfg.embed_dim == 4
    loaded = tok.vae.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert tok.checkpoint_path == str(path)
    # a bare path is recognised by its keys; LDM training keys under `loss.` are dropped
    torch.save({"model": {**state, "loss.discriminator.main.0.weight": torch.zeros(1)}}, tmp_path / "with_loss.ckpt")
    again = load_tokenizer(tmp_path / "with_loss.ckpt", image_size=32)
    assert again.fingerprint() == tok.fingerprint()
    # a missing weight is an error, not a silent random init
    del state["decoder.conv_out.bias"]
    torch.save({"model": state}, tmp_path / "broken.ckpt")
    with pytest.raises(RuntimeError, match="decoder.conv_out.bias"):
        load_tokenizer(f"mar_kl16:{tmp_path / 'broken.ckpt'}", image_size=32)


def test_kl16_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="kl16.ckpt"):
        load_tokenizer(f"mar_kl16:{tmp_path / 'nope.ckpt'}")
    torch.save({"model": {"something.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(KeyError, match="not an LDM"):
        load_tokenizer(f"mar_kl16:{tmp_path / 'other.ckpt'}")
    with pytest.raises(ValueError, match="multiple of the stride"):
        KL16Tokenizer(KL16Config(**{**SMALL, "image_size": 30}))


def test_parse_spec():
    assert parse_spec("mar_kl16:/a/kl16.ckpt") == ("mar_kl16", "/a/kl16.ckpt")
    assert parse_spec("sd_vae:rel/folder") == ("sd_vae", "rel/folder")
    assert parse_spec("runs/tok") is None and parse_spec("other:/x") is None and parse_spec("sd_vae:") is None


def test_kebab_case_specs_and_names_are_deprecated_aliases():
    """The pre-0.2 spellings still work for one release, each with a DeprecationWarning naming the new one."""
    with pytest.warns(DeprecationWarning, match="mar_kl16"):
        assert parse_spec("mar-kl16:/a/kl16.ckpt") == ("mar_kl16", "/a/kl16.ckpt")
    with pytest.warns(DeprecationWarning, match="sd_vae"):
        assert parse_spec("sd-vae:rel/folder") == ("sd_vae", "rel/folder")
    with pytest.warns(DeprecationWarning, match="'mar_kl16'"):
        tok = build("tokenizer", "mar-kl16", **SMALL)
    assert type(tok).__name__ == "KL16Tokenizer"


def test_saved_external_tokenizer_keeps_stats_and_feeds_detok_encode(tmp_path):
    import argparse

    from detok.cli import encode
    from detok.tokenizers.latents import LatentCache

    torch.manual_seed(0)
    tok = KL16Tokenizer(KL16Config(**SMALL)).eval()
    tok.set_stats(torch.linspace(-1, 1, 4), torch.linspace(1, 2, 4))
    run = tmp_path / "kl16"
    save_external_tokenizer(tok, run, data={"name": "shapes", "shapes_size": 40})
    back = load_tokenizer(run)
    assert isinstance(back, KL16Tokenizer) and back.cfg == tok.cfg
    assert back.fingerprint() == tok.fingerprint() and torch.equal(back.latent_std, tok.latent_std)
    x = _images()
    with torch.no_grad():
        assert torch.equal(back.decode(back.encode(x)), tok.decode(tok.encode(x)))
    cache = tmp_path / "cache"
    parser = argparse.ArgumentParser()
    encode.add_parser(parser.add_subparsers())  # the `detok encode` verb alone (no other CLI imports)
    args = parser.parse_args(["encode", str(run), "--out", str(cache), "--split", "val", "--num-workers", "0"])
    assert args.func(args)["count"] == 4
    LatentCache(cache).check(back)  # same weights and statistics: a generator run may train on it


# -- diffusers AutoencoderKL -------------------------------------------------------------------------------
TINY_DIFFUSERS = dict(
    block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=4, norm_num_groups=32,
)


def _tiny_vae(**extra):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(**{**TINY_DIFFUSERS, **extra}).eval()


def test_diffusers_folder_loads_and_matches_diffusers_exactly(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    x = _images()
    for source in (tmp_path / "vae", f"sd_vae:{tmp_path / 'vae'}", f"diffusers:{tmp_path / 'vae'}"):
        tok = load_tokenizer(source, image_size=32)
        assert tok.latent_shape == (4, 16, 16) and tok.cfg.image_size == 32
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            moments = tok.encode_moments(x)
            assert torch.equal(moments, torch.cat([post.mean, post.logvar], 1))
            assert torch.equal(tok.encode(x), post.mean)
            assert torch.equal(tok.decode(post.mean), vae.decode(post.mean).sample)
        torch.testing.assert_close(tok.latent_std, torch.full((4,), 1 / SD_VAE_SCALE))
        torch.testing.assert_close(tok.normalize(post.mean), post.mean * SD_VAE_SCALE)


def test_diffusers_shift_and_scale_become_default_stats(tmp_path):
    vae = _tiny_vae(scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path, image_size=32)
    assert torch.allclose(tok.latent_mean, torch.full((4,), 0.1)) and torch.allclose(tok.latent_std, torch.full((4,), 2.0))


def test_diffusers_checkpoint_round_trip(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    tok = load_tokenizer(tmp_path / "vae", image_size=32)
    tok.set_stats(torch.zeros(4), torch.full((4,), 3.0))
    save_external_tokenizer(tok, tmp_path / "run")
    back = load_tokenizer(tmp_path / "run")
    assert back.fingerprint() == tok.fingerprint() and torch.equal(back.latent_std, tok.latent_std)
    x = _images()
    with torch.no_grad():
        assert torch.equal(back.encode_moments(x), tok.encode_moments(x))


def test_diffusers_errors(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_tokenizer(f"sd_vae:{tmp_path / 'missing'}")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install diffusers"):
        load_tokenizer(tmp_path / "vae")


def test_sd_vae_registry_default_is_sd_architecture():
    pytest.importorskip("diffusers")
    with torch.device("meta"):
        tok = build("tokenizer", "sd_vae")
    assert tok.latent_shape == (4, 32, 32)
    assert abs(sum(p.numel() for p in tok.parameters()) / 1e6 - 83.65) < 0.05  # SD-VAE: 83.65M parameters


@pytest.mark.slow
def test_sd_vae_paper_size_shapes():
    pytest.importorskip("diffusers")
    tok = build("tokenizer", "sd_vae").eval()
    with torch.no_grad():
        moments = tok.encode_moments(_images(1, 256))
        y = tok.decode(moments[:, :4])
    assert moments.shape == (1, 8, 32, 32) and y.shape == (1, 3, 256, 256)


# -- cross-check: our KL-16 blocks equal diffusers' independent implementation of the same LDM net ----------
_TO_DIFFUSERS = [
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"\.mid\.block_1\.", ".mid_block.resnets.0."),
    (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn_1\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn_1\.(q|k|v)\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn_1\.proj_out\.", ".mid_block.attentions.0.to_out.0."),
    (r"nin_shortcut", "conv_shortcut"),
    (r"norm_out", "conv_norm_out"),
]


def _ldm_to_diffusers(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.", key)
        if m:  # upstream stores up levels by resolution index; diffusers in execution order
            part = "resnets" if m.group(2) == "block" else "upsamplers.0"
            key = f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.{part}." + key[m.end():]
        for pattern, repl in _TO_DIFFUSERS:
            key = re.sub(pattern, repl, key)
        if ".attentions.0.to_" in key and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv (C, C, 1, 1) -> linear (C, C)
        out[key] = value
    return out


def test_kl16_blocks_match_diffusers_numerically():
    diffusers = pytest.importorskip("diffusers")
    cfg = KL16Config(**{**SMALL, "attn_levels": ()})  # diffusers' down blocks have no attention
    torch.manual_seed(0)
    tok = KL16Tokenizer(cfg).eval()
    for p in tok.parameters():  # non-trivial norms and biases
        p.data.add_(torch.randn_like(p) * 0.02)
    ref = diffusers.AutoencoderKL(
        block_out_channels=[cfg.ch * m for m in cfg.ch_mult], down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.embed_dim, norm_num_groups=32,
    ).eval()
    ref.load_state_dict(_ldm_to_diffusers(tok.vae.state_dict(), 3), strict=True)
    x = _images()
    with torch.no_grad():
        post = ref.encode(x).latent_dist
        torch.testing.assert_close(tok.encode_moments(x), torch.cat([post.mean, post.logvar], 1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tok.decode(post.mean), ref.decode(post.mean).sample, rtol=1e-4, atol=1e-5)


def test_diffusers_folder_with_pickled_weights_is_refused_in_one_line(tmp_path):
    """A `.bin` (pickle) diffusers folder is never unpickled: one CheckpointError naming the folder and file."""
    from detok.io import CheckpointError

    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)
    assert not list((tmp_path / "vae").glob("*.safetensors")) and list((tmp_path / "vae").glob("*.bin"))
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.bin.*safetensors only") as e:
        load_tokenizer(tmp_path / "vae", image_size=32)
    assert "\n" not in str(e.value)
