"""TokenQuantizer (detok.nn.quantize): behaviour of the VQ (EMA cosine codebook) and FSQ adapters.

The library's k-means init and dead-code restarts use torch's global RNG, so the vq tests seed it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detok.nn.quantize import QuantizerConfig, TokenQuantizer

B, K, E = 4, 32, 8  # 128 tokens per batch


def vq(**kw) -> TokenQuantizer:
    return TokenQuantizer(QuantizerConfig(**{"codebook_size": 64, "code_dim": E, **kw}))


def fsq(levels=(8, 5, 5, 5), **kw) -> TokenQuantizer:
    return TokenQuantizer(QuantizerConfig(kind="fsq", code_dim=len(levels), fsq_levels=list(levels), **kw))


def batch(seed: int, dim: int = E) -> torch.Tensor:
    return torch.randn(B, K, dim, generator=torch.Generator().manual_seed(seed))  # (B, K, E)


def test_ids_round_trip_through_the_codebook():
    torch.manual_seed(0)
    q = vq()
    q(batch(0))  # train mode: k-means init + one EMA step
    q.eval()
    out = q(batch(1))
    assert out.ids.dtype == torch.long and out.ids.shape == (B, K)
    assert int(out.ids.min()) >= 0 and int(out.ids.max()) < q.codebook_size
    torch.testing.assert_close(q.codes_from_ids(out.ids), out.codes, atol=1e-6, rtol=0)
    assert out.ids.unique().numel() > 1  # a real lookup, not one code for everything

    f = fsq()
    for train in (True, False):
        f.train(train)
        out = f(batch(2, dim=4))
        assert out.ids.dtype == torch.long and out.ids.shape == (B, K)
        torch.testing.assert_close(f.codes_from_ids(out.ids), out.codes, atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [vq, fsq], ids=["vq", "fsq"])
def test_straight_through_gradient_reaches_the_input(make):
    torch.manual_seed(0)
    q = make()
    h = batch(0, dim=q.code_dim).requires_grad_()
    out = q(h)
    (from_codes,) = torch.autograd.grad(out.codes.sum(), h, retain_graph=True)  # the codes alone, not the loss
    assert (from_codes != 0).float().mean() > 0.9
    (out.codes.sum() + out.loss).backward()
    assert h.grad is not None
    assert (h.grad != 0).float().mean() > 0.9


def test_commitment_loss_is_weighted_once():
    h = batch(0)
    losses = {}
    for w in (0.25, 1.0):
        torch.manual_seed(0)  # same k-means init for both weights
        out = vq(commitment_weight=w, dead_code_threshold=0.0)(h)
        losses[w] = out.loss
    # the commitment MSE is on the l2-normalised input the cosine codebook sees
    mse = F.mse_loss(out.codes.detach(), F.normalize(h, dim=-1))
    torch.testing.assert_close(losses[1.0], mse)
    torch.testing.assert_close(losses[0.25], 0.25 * mse)
    assert float(mse) > 0
    assert float(fsq()(batch(0, dim=4)).loss) == 0.0


def test_vq_codebook_is_an_ema_buffer_not_a_parameter():
    torch.manual_seed(0)
    q = vq(dead_code_threshold=0.0)
    assert not any(p.requires_grad for p in q.parameters())
    assert any(name.endswith("embed") for name, _ in q.named_buffers())
    q(batch(0))  # k-means init
    before = q.codebook
    q(batch(1))  # train mode: EMA update
    after = q.codebook
    assert (after - before).abs().max() > 1e-4
    q.eval()
    q(batch(2))
    torch.testing.assert_close(q.codebook, after, atol=0, rtol=0)


@pytest.mark.parametrize("threshold", [0.2, 0.0])
def test_dead_codes_far_from_the_data_are_restarted_onto_it(threshold):
    torch.manual_seed(0)
    q = vq(kmeans_init=False, decay=0.8, dead_code_threshold=threshold)  # random unit codes
    g = torch.Generator().manual_seed(1)
    mu = F.normalize(torch.randn(E, generator=g), dim=0)  # (E,) the one direction the data lies along
    start = q.codebook  # (C, E)
    far = start @ mu < 0.3
    assert far.sum() >= 16
    for _ in range(20):
        q(mu + 0.05 * torch.randn(B, K, E, generator=g))  # a tight cluster: most codes never win
    cos = q.codebook[far] @ mu  # (far,)
    if threshold > 0:
        assert float(cos.min()) > 0.95  # moved onto (near) data vectors
    else:
        torch.testing.assert_close(q.codebook[far], start[far], atol=1e-5, rtol=0)
        assert float(cos.max()) < 0.3


def test_fsq_levels_are_exact():
    levels = [8, 5, 5, 5]
    q = fsq(levels)
    assert q.codebook_size == math.prod(levels) == 1000
    codes = q.codebook  # (1000, 4); code_dim == len(levels): no projections
    assert codes.shape == (1000, 4)
    assert torch.unique(codes, dim=0).shape[0] == 1000  # every id its own code
    for d, n in enumerate(levels):
        values = torch.unique(codes[:, d])
        assert values.numel() == n
        half = n // 2
        torch.testing.assert_close(values, (torch.arange(n) - half) / half, atol=0, rtol=0)
    out = q(3 * batch(0, dim=4))  # wide inputs reach the outer levels too
    assert bool((out.codes[..., None, :] == codes).all(-1).any(-1).all())  # every output is a grid point


def test_usage_statistics():
    c = 64
    uniform = TokenQuantizer.usage(torch.arange(c).repeat(3, 1), c)  # (3, C): every code three times
    assert uniform["perplexity"] == pytest.approx(c, rel=1e-9)
    assert uniform["used"] == 1.0 and uniform["dead"] == 0
    single = TokenQuantizer.usage(torch.full((2, 16), 5), c)
    assert single["perplexity"] == pytest.approx(1.0, abs=1e-12)
    assert single["used"] == pytest.approx(1 / c) and single["dead"] == c - 1
    half = TokenQuantizer.usage(torch.arange(0, c, 2)[None], c)  # (1, C/2)
    assert half["perplexity"] == pytest.approx(c / 2) and half["dead"] == c / 2


@pytest.mark.parametrize("make", [vq, fsq], ids=["vq", "fsq"])
def test_bad_ids_raise_a_clear_error(make):
    q = make()
    n = q.codebook_size
    for bad in (n, -1):
        with pytest.raises(ValueError, match=rf"\[0, {n}\)"):
            q.codes_from_ids(torch.tensor([[0, bad]]))
    with pytest.raises(ValueError, match="integer"):
        q.codes_from_ids(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=rf"\[0, {n}\)"):
        TokenQuantizer.usage(torch.tensor([n]), n)


def test_kmeans_init_runs_on_the_first_training_batch():
    torch.manual_seed(0)
    q = vq(kmeans_init=True)
    initted = dict(q.named_buffers())["vq._codebook.initted"]
    assert not bool(initted)
    assert float(q.codebook.abs().max()) == 0.0  # zeros until initialised
    h = batch(0)
    q.eval()
    q(h)  # eval mode never touches the codebook, not even to initialise it
    assert not bool(dict(q.named_buffers())["vq._codebook.initted"])
    assert float(q.codebook.abs().max()) == 0.0
    q.train()
    q(h)
    assert bool(dict(q.named_buffers())["vq._codebook.initted"])
    codes = q.codebook
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(q.codebook_size))  # unit cosine codes
    # the codes were fitted to the batch: each lies close to some input direction
    nearest = (codes @ F.normalize(h, dim=-1).reshape(-1, E).T).amax(dim=1)  # (C,) from (C, B*K)
    assert float(nearest.mean()) > 0.6


def test_dead_code_threshold_is_made_absolute_at_the_first_training_forward():
    torch.manual_seed(0)
    q = vq(dead_code_threshold=0.2)
    q(batch(0))  # 128 tokens over 64 codes: 2 expected per code
    assert q.vq._codebook.threshold_ema_dead_code == pytest.approx(0.2 * B * K / 64)
