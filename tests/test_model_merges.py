"""One definition per concept in the model layer: size table, noise helper, adaLN pieces, class names.

Each family used to carry its own copy (a size table in dit.py, detok.py and ar.py; a timestep embedder,
`modulate` and final layer in dit_blocks.py and diffloss.py; six "noise on the generator's device"
helpers). These tests pin the merged definitions: what they compute and that every family uses them.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "detok"

# upstream SIZE_DICT (l-DeTok / DiT) plus the CPU-sized tiny and mini; MAR's own rows (depth per stack)
UPSTREAM_SIZES = {"tiny": (64, 2, 2), "mini": (128, 4, 2), "small": (512, 8, 8), "base": (768, 12, 12),
                  "large": (1024, 24, 16), "xl": (1152, 28, 16), "huge": (1280, 32, 16)}  # fmt: skip
MAR_ROWS = {"tiny": (64, 2, 2), "base": (768, 12, 12), "large": (1024, 16, 16), "huge": (1280, 20, 16)}


def test_every_family_reads_the_one_size_table():
    """DiT / SiT / LightningDiT, the tokenizer and RasterAR / RandomAR read one table; MAR keeps its own rows."""
    import detok.generators.ar as ar
    import detok.generators.dit as dit
    import detok.generators.mar as mar
    import detok.tokenizers.detok as detok
    from detok.nn import sizes

    assert sizes.SIZES == UPSTREAM_SIZES and list(sizes.SIZES) == list(UPSTREAM_SIZES)  # order matters
    assert dit.SIZES is sizes.SIZES and detok.SIZES is sizes.SIZES and ar.SIZES is sizes.SIZES
    assert dit.size_of is sizes.size_of
    assert sizes.MAR_SIZES == MAR_ROWS  # MAR-L / MAR-H differ from SIZES' large / huge: kept apart
    for name, (width, depth, heads) in MAR_ROWS.items():
        suffix = {"tiny": "tiny", "base": "b", "large": "l", "huge": "h"}[name]
        cfg = mar.mar_config(f"mar_{suffix}")
        assert (cfg.width, cfg.encoder_depth, cfg.decoder_depth, cfg.heads) == (width, depth, depth, heads)


def test_randn_draws_on_the_generators_device_then_moves():
    """The same numbers as torch.randn on the rng's device, landing on the target device and dtype."""
    from detok.nn.random import randn, randn_like

    expected = torch.randn((3, 5), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = randn((3, 5), device="cpu", dtype=torch.float64, rng=torch.Generator().manual_seed(7))
    assert out.dtype == torch.float64 and torch.equal(out, expected)
    moved = randn((3, 5), device="meta", dtype=torch.float64, rng=torch.Generator().manual_seed(7))
    assert moved.device.type == "meta" and moved.shape == (3, 5)  # drawn on the CPU generator, then moved
    like = randn_like(torch.zeros(3, 5, dtype=torch.float64), torch.Generator().manual_seed(7))
    assert torch.equal(like, expected)
    torch.manual_seed(3)
    first = randn((4,), device="cpu")  # no rng: torch's global generator on the target device
    torch.manual_seed(3)
    assert torch.equal(first, torch.randn(4))


def test_diffusion_head_uses_the_dit_blocks_with_upstream_key_names():
    """The head's time embedder and final layer are nn.dit_blocks', on the few-rows Linear, keys as MAR's."""
    from detok.generators.diffloss import DiffLossMLP
    from detok.nn import dit_blocks
    from detok.nn.linear import Linear

    net = DiffLossMLP(channels=4, cond_channels=6, width=8, depth=1)
    assert type(net.time_embed) is dit_blocks.TimestepEmbedder
    assert type(net.final_layer) is dit_blocks.FinalLayer
    for layer in (net.time_embed.mlp[0], net.time_embed.mlp[2], net.final_layer.linear):
        assert type(layer) is Linear
    assert list(net.state_dict()) == [  # upstream SimpleMLPAdaLN, key for key
        "time_embed.mlp.0.weight", "time_embed.mlp.0.bias", "time_embed.mlp.2.weight", "time_embed.mlp.2.bias",
        "cond_embed.weight", "cond_embed.bias", "input_proj.weight", "input_proj.bias",
        "res_blocks.0.in_ln.weight", "res_blocks.0.in_ln.bias", "res_blocks.0.mlp.0.weight",
        "res_blocks.0.mlp.0.bias", "res_blocks.0.mlp.2.weight", "res_blocks.0.mlp.2.bias",
        "res_blocks.0.adaLN_modulation.1.weight", "res_blocks.0.adaLN_modulation.1.bias",
        "final_layer.linear.weight", "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias",
    ]  # fmt: skip


def test_modulate_shares_a_per_sample_condition_and_applies_a_per_token_one():
    """(B, D) shift / scale apply to every token of x (B, N, D); conditions of x's shape apply elementwise."""
    from detok.nn.dit_blocks import modulate

    g = torch.Generator().manual_seed(0)
    x, shift, scale = (torch.randn(s, generator=g) for s in ((2, 3, 4), (2, 4), (2, 4)))
    shared = modulate(x, shift, scale)
    for n in range(3):
        assert torch.equal(shared[:, n], x[:, n] * (1 + scale) + shift)
    per_token = modulate(x, shift[:, None].expand(2, 3, 4), scale[:, None].expand(2, 3, 4))
    assert torch.equal(per_token, shared)
    rows = modulate(x[:, 0], shift, scale)  # the diffusion head's rows (M, D)
    assert torch.equal(rows, shared[:, 0])


def test_no_class_name_is_defined_twice_in_the_package():
    """Classes that differ carry different names (e.g. the AR block is CausalAdaLNBlock, not AdaLNBlock)."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    twice = {name: places for name, places in where.items() if len(places) > 1}
    assert not twice, f"class names defined more than once: {twice}"
