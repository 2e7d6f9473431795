"""Each speed trick computes what the plain code computes: same weights after N steps, same samples.

The tricks: the fused AdamW kernel (the engine's default) against the single-tensor loop that upstream's
code runs on CPU, the foreach EMA against the per-tensor formula, `train.compile=blocks` (torch.compile of
every transformer block) against eager, and the diffusion head's precomputed adaLN outputs
(tests/test_generators_ar.py) - for every tiny preset of the registry.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detok.engine.ema import EMA
from detok.engine.trainer import OptimConfig, compile_blocks
from detok.generators.load import build_generator
from detok.nn.optim import ADAMW_KERNELS, adamw, split_decay
from detok.registry import build, family_of, tiny_members

STEPS = 4
LATENT = (4, 4, 4)
CLASSES = 10


def _model_and_loss(kind: str, name: str, overrides: dict | None = None):
    """(module, loss(step) -> scalar) for a tiny preset; the loss's randomness is seeded by the step;
    `overrides` go to a continuous generator's config."""
    torch.manual_seed(0)
    discrete = family_of(kind, name).extra.get("tokens") == "discrete"
    if kind == "tokenizer":
        model = build("tokenizer", name).train()
        size = model.cfg.image_size
        x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1

        def loss(step: int) -> torch.Tensor:
            if discrete:  # DDT: its forward is the loss
                return model(x, rng=torch.Generator().manual_seed(100 + step))["loss"]
            recon, kl, _ = model(x, rng=torch.Generator().manual_seed(100 + step))
            return F.mse_loss(recon, x) + 1e-6 * kl

    elif discrete:  # ddt_ar over K = 16 ids of a 32-code vocabulary
        model = build_generator(name, (16,), CLASSES, {"codebook_size": 32}).train()
        ids = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(1))
        y = torch.arange(4)

        def loss(step: int) -> torch.Tensor:
            return model.loss(ids, y, torch.Generator().manual_seed(100 + step))["loss"]

    else:
        model = build_generator(name, LATENT, CLASSES, overrides).train()
        z = torch.randn(4, *LATENT, generator=torch.Generator().manual_seed(1))
        y = torch.arange(4)

        def loss(step: int) -> torch.Tensor:
            return model.loss(z, y, torch.Generator().manual_seed(100 + step))["loss"]

    return model, loss


def _train(kind: str, name: str, kernel: str) -> dict[str, torch.Tensor]:
    model, loss = _model_and_loss(kind, name)
    o = OptimConfig()
    opt = adamw(split_decay(list(model.named_parameters()), 0.05, o.no_decay), 1e-3, o.betas, kernel)
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss(step).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


PRESETS = [("tokenizer", n) for n in tiny_members("tokenizer")] + [("generator", n) for n in tiny_members("generator")]


@pytest.mark.parametrize("kind,name", PRESETS, ids=[n for _, n in PRESETS])
def test_fused_adamw_equals_the_single_tensor_loop(kind, name):
    assert OptimConfig().adamw == "fused"  # what the engine runs by default
    fused, single = _train(kind, name, "fused"), _train(kind, name, "single")
    start = {n: p.detach() for n, p in _model_and_loss(kind, name)[0].named_parameters()}
    moved = sum(not torch.equal(start[n], single[n]) for n in single)
    assert moved > len(single) // 2  # the steps really trained (most tensors changed)
    for n in single:
        # atol 2e-6 (0.05% of 4 steps at lr 1e-3): the key part of a qkv bias has an analytically zero gradient
        # (softmax ignores a shift shared by all keys), and Adam scales its rounding noise up to lr-sized steps
        torch.testing.assert_close(fused[n], single[n], rtol=1e-5, atol=2e-6, msg=f"{name}: {n}")


def test_adamw_kernel_names_are_checked():
    with pytest.raises(ValueError, match="unknown AdamW kernel 'fast'"):
        adamw([{"params": [torch.nn.Parameter(torch.zeros(2))]}], 1e-3, (0.9, 0.95), "fast")
    assert set(ADAMW_KERNELS) == {"fused", "foreach", "single"}


def test_foreach_ema_equals_the_formula():
    model, _ = _model_and_loss("generator", "sit_tiny")
    ema = EMA(model, 0.9)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(step)))
        ema.update(model)
        for n, p in model.named_parameters():
            expected[n] = 0.9 * expected[n] + 0.1 * p.detach()
    for n, v in expected.items():
        torch.testing.assert_close(ema.shadow[n], v, rtol=1e-6, atol=1e-6)


def _train_sgd(kind: str, name: str, compiled: bool) -> tuple[dict[str, torch.Tensor], list[float]]:
    """STEPS of plain SGD (weights, losses): the forward and backward alone decide the result. (Adam would
    scale the rounding noise of analytically zero gradients, e.g. a qkv key bias, up to lr-sized steps.)"""
    # MAR's attention / projection dropout draws from the global stream, which compiled code draws from in
    # another order: off here, so that only the math is compared
    no_dropout = {"attn_dropout": 0.0, "proj_dropout": 0.0} if family_of(kind, name).name == "mar" else None
    model, loss = _model_and_loss(kind, name, no_dropout)
    if compiled:
        assert compile_blocks(model) > 0, f"{name} has no transformer blocks to compile"
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(STEPS):  # the tokenizers draw another mask each step: another encoder length
        opt.zero_grad(set_to_none=True)
        value = loss(step)
        value.backward()
        opt.step()
        losses.append(float(value))
    return {n: p.detach().clone() for n, p in model.named_parameters()}, losses


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", PRESETS, ids=[n for _, n in PRESETS])
def test_compiled_blocks_train_like_eager(kind, name):
    """train.compile=blocks changes the kernels, not the math: same losses and weights to float32 rounding."""
    torch._dynamo.reset()
    eager, eager_losses = _train_sgd(kind, name, compiled=False)
    compiled, compiled_losses = _train_sgd(kind, name, compiled=True)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-6)
    for n in eager:
        torch.testing.assert_close(compiled[n], eager[n], rtol=1e-4, atol=1e-6, msg=f"{name}: {n}")


@pytest.mark.slow
def test_engine_trains_with_compiled_blocks_and_saves_the_plain_names(tmp_path):
    """train.compile=blocks through the real CLI: the run finishes (EMA copy, reconstructions), its checkpoint has
    the eager run's parameter names (no torch.compile wrapper prefix) and loads as a plain tokenizer."""
    from detok.cli.main import main
    from detok.tokenizers.load import load_tokenizer

    states = {}
    for mode in ("none", "blocks"):
        out = tmp_path / mode
        assert main(["train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(out), "train.max_steps=3",
                     f"train.compile={mode}", "train.progress=false"]) == 0
        assert (out / "reconstructions.png").is_file()
        states[mode] = load_tokenizer(out).state_dict()
    assert list(states["blocks"]) == list(states["none"])
