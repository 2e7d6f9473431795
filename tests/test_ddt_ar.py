"""DDT-AR (class-conditional LLaMA over discrete DDT ids) and the Llama adapter `detok.nn.llama` (CPU).

Invariants: gradients reach every weight, seeded sampling, KV cache == recomputation, CFG layout and formula,
greedy == argmax of the model, the vocabulary range, a checkpoint round trip, clear errors, a loss that
falls, and that detok imports without `transformers`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from detok import registry
from detok.config import ConfigError
from detok.generators.ddt_ar import DDTAR
from detok.generators.load import load_generator
from detok.io import save_checkpoint
from detok.nn.llama import GuidedLogits, build_llama, load_llama, sample_tokens

K, V, CLASSES = 8, 16, 3


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny(**overrides) -> DDTAR:
    torch.manual_seed(0)
    return registry.build("generator", "ddt_ar_tiny", latent_shape=(K,), num_classes=CLASSES, codebook_size=V,
                          **overrides)


def ids_and_labels(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = rng(seed)
    return torch.randint(0, V, (batch, K), generator=g), torch.randint(0, CLASSES, (batch,), generator=g)


def teacher_forced_logits(gen: DDTAR, prompt: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, N, L) of the model at the positions that predict ids (B, N) after prompt (B, 1)."""
    with torch.no_grad():
        seq = torch.cat([prompt, ids], dim=1)  # (B, 1 + N)
        return gen.lm(input_ids=seq, use_cache=False).logits[:, :-1].float()  # (B, N, L)


# -- 1. loss and gradients -----------------------------------------------------------------------------


def test_loss_is_finite_and_reaches_every_parameter():
    gen = tiny().train()
    ids, y = ids_and_labels(4)
    y[0] = gen.null_label  # the null-class path is trained too
    out = gen.loss(ids, y, rng(1))
    assert set(out) == {"loss", "ce", "accuracy"}
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0 and torch.equal(out["loss"], out["ce"])
    assert 0.0 <= float(out["accuracy"]) <= 1.0 and not out["accuracy"].requires_grad
    out["loss"].backward()
    dead = [n for n, p in gen.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f"no gradient reaches {dead[:6]}"


def test_vocabulary_layout():
    gen = tiny()
    assert gen.vocab_size == V + CLASSES + 1
    assert gen.lm.get_input_embeddings().num_embeddings == gen.vocab_size
    assert gen.lm.get_output_embeddings().out_features == gen.vocab_size
    assert gen.lm.get_input_embeddings().weight is not gen.lm.get_output_embeddings().weight  # untied
    assert gen.class_token(torch.tensor([0, 2, gen.null_label])).tolist() == [V, V + 2, V + CLASSES]
    assert gen.lm.config.max_position_embeddings == K + 1
    assert gen.lm.config.intermediate_size == 176  # int(8/3 * 64) = 170, rounded up to a multiple of 8
    assert next(gen.parameters()).dtype == torch.float32


# -- 2. seeded sampling ----------------------------------------------------------------------------------


def test_sampling_is_seeded_and_in_range():
    gen = tiny().eval()
    y = torch.tensor([0, 2, 1, 0])
    a = gen.sample(4, y, cfg_scale=2.0, rng=rng(5))
    b = gen.sample(4, y, cfg_scale=2.0, rng=rng(5))
    c = gen.sample(4, y, cfg_scale=2.0, rng=rng(6))
    assert a.shape == (4, K) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < V
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert gen.sample(2, None, rng=rng(5)).shape == (2, K)  # None: the null class


def test_draws_never_leave_the_vocabulary_range():
    """With class-token logits made dominant, the unrestricted draw picks them; vocab_range never does."""
    gen = tiny().eval()
    with torch.no_grad():
        head = gen.lm.get_output_embeddings().weight  # (L, D)
        head[:V] = 0.0  # image codes: logit 0
        head[V:] *= 300.0  # class tokens: logits far from 0, some very large
    prompt = gen.class_token(torch.tensor([0, 1, 2, 0]))[:, None]  # (4, 1)
    free = sample_tokens(gen.lm, prompt, K, rng=rng(0))
    assert int(free.max()) >= V  # the test can fail: without the range, class tokens are drawn
    ids = gen.sample(4, torch.tensor([0, 1, 2, 0]), cfg_scale=2.0, rng=rng(0))
    assert int(ids.min()) >= 0 and int(ids.max()) < V


def test_sampling_arguments_follow_the_declaration():
    gen = tiny().eval()
    assert type(gen).sampling is registry.family_of("generator", "ddt_ar_tiny").sampling
    with pytest.raises(ValueError, match="steps is not a choice"):
        gen.sample(1, torch.tensor([0]), steps=3)
    with pytest.raises(ValueError, match="head_steps"):
        gen.sample(1, torch.tensor([0]), head_steps=3)


# -- 3. KV cache == recomputation ------------------------------------------------------------------------


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_kv_cache_equals_recomputation(cfg_scale):
    gen = tiny().eval()
    y = torch.tensor([0, 1, 2])
    cached = gen.sample(3, y, cfg_scale=cfg_scale, rng=rng(7), use_kv_cache=True)
    full = gen.sample(3, y, cfg_scale=cfg_scale, rng=rng(7), use_kv_cache=False)
    assert torch.equal(cached, full)

    prompt = gen.class_token(y)[:, None]  # (3, 1)
    null = gen.class_token(torch.full((3,), gen.null_label))[:, None]  # (3, 1)
    kw = dict(uncond_prompt=null, cfg_scale=cfg_scale, top_k=5, vocab_range=(0, V), return_logits=True)
    ids_c, logits_c = sample_tokens(gen.lm, prompt, K, rng=rng(8), use_cache=True, **kw)
    ids_f, logits_f = sample_tokens(gen.lm, prompt, K, rng=rng(8), use_cache=False, **kw)
    assert torch.equal(ids_c, ids_f) and logits_c.shape == (3, K, gen.vocab_size)
    torch.testing.assert_close(logits_c, logits_f, atol=1e-5, rtol=1e-5)


# -- 4. classifier-free guidance -------------------------------------------------------------------------


def test_guided_logits_formula():
    scores = torch.tensor([[1.0, 2.0, -3.0], [0.5, -1.0, 4.0],  # conditional half (B = 2)
                           [0.0, 1.0, 1.0], [2.5, 0.0, -2.0]])  # unconditional half
    out = GuidedLogits(3.0)(torch.zeros(4, 1, dtype=torch.long), scores)
    expected = torch.tensor([[3.0, 4.0, -11.0], [-3.5, -3.0, 16.0]])  # uncond + 3 (cond - uncond)
    assert torch.equal(out, expected)
    torch.testing.assert_close(GuidedLogits(1.0)(None, scores), scores[:2])
    assert torch.equal(GuidedLogits(0.0)(None, scores), scores[2:])


def test_cfg_scale_one_is_the_conditional_prompt_alone():
    gen = tiny().eval()
    y = torch.tensor([2, 0])
    prompt = gen.class_token(y)[:, None]  # (2, 1)
    null = gen.class_token(torch.full((2,), gen.null_label))[:, None]  # (2, 1)
    alone = sample_tokens(gen.lm, prompt, K, vocab_range=(0, V), rng=rng(3))
    with_uncond = sample_tokens(gen.lm, prompt, K, uncond_prompt=null, cfg_scale=1.0, vocab_range=(0, V), rng=rng(3))
    assert torch.equal(alone, with_uncond)
    assert torch.equal(gen.sample(2, y, cfg_scale=1.0, rng=rng(3)), alone)


def test_guided_logits_combine_the_right_halves():
    """The logits each guided draw uses are uncond + s (cond - uncond) of the two prompts' own logits."""
    gen = tiny().eval()
    y, scale = torch.tensor([1, 2]), 2.5
    prompt = gen.class_token(y)[:, None]  # (2, 1)
    null = gen.class_token(torch.full((2,), gen.null_label))[:, None]  # (2, 1)
    ids, logits = sample_tokens(gen.lm, prompt, K, uncond_prompt=null, cfg_scale=scale, vocab_range=(0, V),
                                rng=rng(4), return_logits=True)
    assert torch.equal(gen.sample(2, y, cfg_scale=scale, rng=rng(4)), ids)  # the generator guides with the null class
    cond, uncond = teacher_forced_logits(gen, prompt, ids), teacher_forced_logits(gen, null, ids)  # (2, K, L)
    torch.testing.assert_close(logits[..., :V], (uncond + scale * (cond - uncond))[..., :V], atol=1e-5, rtol=1e-5)
    assert torch.isneginf(logits[..., V:]).all()  # class tokens are never drawn
    assert not torch.allclose(cond, uncond)  # the class token matters


# -- 5. greedy and top-k / top-p -------------------------------------------------------------------------


def test_greedy_is_the_argmax_of_the_model_and_top_k_one_is_greedy():
    gen = tiny().eval()
    y = torch.tensor([0, 1, 2])
    greedy = gen.sample(3, y, temperature=0.0, rng=rng(9))
    logits = teacher_forced_logits(gen, gen.class_token(y)[:, None], greedy)  # (3, K, L)
    assert torch.equal(greedy, logits[..., :V].argmax(dim=-1))  # step by step: each id is the best code
    assert torch.equal(gen.sample(3, y, top_k=1, rng=rng(10)), greedy)
    assert torch.equal(gen.sample(3, y, top_p=1e-6, rng=rng(11)), greedy)
    assert not torch.equal(gen.sample(3, y, temperature=5.0, rng=rng(12)), greedy)  # sampling does differ


# -- 6. checkpoint round trip ----------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    gen = tiny().eval()
    config = {"model": "ddt_ar_tiny", "generator": {"codebook_size": V}, "latent_shape": [K],
              "num_classes": CLASSES}
    save_checkpoint(tmp_path, 1, kind="generator", weights={"model": gen.state_dict()},
                    ema={"model": dict(gen.named_parameters())}, config=config)
    back, cfg = load_generator(tmp_path)
    assert type(back) is DDTAR and back.cfg == gen.cfg and cfg["model"] == "ddt_ar_tiny"
    for (k, v), (k2, v2) in zip(gen.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    ids, y = ids_and_labels(2, seed=3)
    assert torch.equal(gen.loss(ids, y, rng(1))["loss"], back.loss(ids, y, rng(1))["loss"])
    assert torch.equal(gen.sample(2, y, rng=rng(2)), back.sample(2, y, rng=rng(2)))


def test_load_llama_reads_a_local_folder_and_refuses_a_missing_one(tmp_path):
    model = build_llama(20, 32, 1, 2, 0, max_positions=6).eval()
    model.save_pretrained(tmp_path / "lm")
    back = load_llama(tmp_path / "lm").eval()
    x = torch.randint(0, 20, (2, 6), generator=rng(0))
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, model(input_ids=x).logits)
    with pytest.raises(FileNotFoundError, match="no Llama model folder"):
        load_llama(tmp_path / "missing")


# -- 7. bad input ----------------------------------------------------------------------------------------


def test_bad_input_is_refused_clearly():
    gen = tiny()
    ids, y = ids_and_labels(2)
    with pytest.raises(ValueError, match=r"K = 8.*wrong K: 7"):
        gen.loss(ids[:, :7], y)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        gen.loss(torch.where(ids == ids[0, 0], V, ids), y)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        gen.loss(ids - 100, y)
    with pytest.raises(ValueError, match="integer"):
        gen.loss(ids.float(), y)
    with pytest.raises(ValueError, match="labels"):
        gen.loss(ids, torch.tensor([0, CLASSES + 1]))
    with pytest.raises(ValueError, match="codebook_size"):
        registry.build("generator", "ddt_ar_tiny", latent_shape=(K,), num_classes=CLASSES)
    with pytest.raises(ConfigError, match="latent_shape"):
        registry.build("generator", "ddt_ar_tiny", latent_shape=(4, 4, 4), num_classes=CLASSES, codebook_size=V)


def test_detok_imports_without_transformers():
    """The registry imports every generator module: without the extra, only building a ddt_ar fails, clearly."""
    script = (
        "import sys; sys.modules['transformers'] = None\n"  # `import transformers` now raises ImportError
        "from detok import registry\n"
        "assert 'ddt_ar_tiny' in registry.names('generator')\n"
        "import detok.nn.llama\n"
        "try:\n"
        "    registry.build('generator', 'ddt_ar_tiny', latent_shape=(4,), num_classes=2, codebook_size=8)\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'detok[lm]'\" in str(e), e\n"
        "else:\n"
        "    raise AssertionError('built a Llama without transformers')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# -- 8. the loss falls -----------------------------------------------------------------------------------


def test_training_memorises_a_fixed_batch():
    gen = tiny(label_dropout=0.0).train()
    ids, y = ids_and_labels(8, seed=4)
    opt = torch.optim.AdamW(gen.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(60):
        loss = gen.loss(ids, y, rng(step))["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = gen.loss(ids, y)["loss"].item()
    assert last < 0.5 * first, (first, last)


def test_greedy_sampling_gives_back_a_memorised_sequence_per_class():
    """Ties the loss's alignment (position i predicts id i + 1) to the sampler's: one sequence per class."""
    gen = tiny(label_dropout=0.0).train()
    ids, y = ids_and_labels(CLASSES, seed=4)[0], torch.arange(CLASSES)
    opt = torch.optim.AdamW(gen.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(60):
        loss = gen.loss(ids, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(gen.eval().sample(CLASSES, y, temperature=0.0), ids)
