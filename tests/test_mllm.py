"""The multimodal LM (`detok.multimodal`): vocabulary, task sequences, the model and its registry family (CPU).

Invariants: the LM vocabulary's three id ranges are disjoint and cover it, text / image ids round-trip, a
saved vocabulary loads with the same layout; clear errors on unknown words, long prompts and bad codes; the
exact token layout and loss mask of every task; a tiny model memorises captions both ways; CFG scale 1 / 0
give the conditional / unconditional logits; KV cache == recomputation; a pretrained base keeps its text
rows; every registry member's config builds and mllm_tiny trains; importing works without transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from detok import registry
from detok.config import ConfigError
from detok.data.shapes import ShapesDataset
from detok.data.shapes_tasks import ShapesEditDataset
from detok.multimodal import model as mllm_model
from detok.multimodal import sequences
from detok.multimodal.model import PRESETS, MLLMConfig, MultimodalLM, mllm_config
from detok.multimodal.sequences import TASKS, PromptTooLongError, build, max_length, pack
from detok.multimodal.vocab import (
    MARKERS,
    MultimodalVocab,
    UnknownWordsError,
    load_text_tokenizer,
    train_text_tokenizer,
)
from detok.nn.llama import sample_tokens

K, V = 8, 32  # image tokens per image, codebook size
N_SCENES = 64


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """Real shapes captions, edit instructions and edit-target captions."""
    scenes = ShapesDataset(N_SCENES, 32, 0, "train")
    edits = ShapesEditDataset(N_SCENES, 32, 0, "train")
    pairs = [edits.pair(i) for i in range(N_SCENES)]
    return {"captions": [scenes.scene(i).caption for i in range(N_SCENES)],
            "instructions": [p[2] for p in pairs], "targets": [p[1].caption for p in pairs]}


@pytest.fixture(scope="module")
def vocab(texts) -> MultimodalVocab:
    return MultimodalVocab(train_text_tokenizer(texts["captions"] + texts["instructions"] + texts["targets"]), V)


def tiny(vocab: MultimodalVocab, **overrides) -> MultimodalLM:
    torch.manual_seed(0)
    return registry.build("mllm", "mllm_tiny", vocab=vocab, num_tokens=K, codebook_size=V, **overrides)


def codes(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (batch, K), generator=rng(seed))  # (B, K)


# -- 1. vocabulary ------------------------------------------------------------------------------------------


def test_vocab_ranges_are_disjoint_and_cover_every_id(vocab):
    t, m = vocab.text_size, len(MARKERS)
    ids = torch.arange(vocab.size)
    text, image = vocab.is_text(ids), vocab.is_image(ids)
    markers = torch.zeros(vocab.size, dtype=torch.bool)
    markers[[vocab.marker(name) for name in MARKERS]] = True
    assert not (text & image).any() and not (text & markers).any() and not (image & markers).any()
    assert (text | image | markers).all()  # every id of [0, size) is exactly one of the three
    assert int(text.sum()) == t and int(markers.sum()) == m and int(image.sum()) == V
    assert [vocab.marker(name) for name in MARKERS] == list(range(t, t + m))  # in MARKERS order
    assert vocab.size == t + m + V and vocab.image_range == (t + m, vocab.size)
    assert vocab.eos == t and vocab.text_range == (0, t + 1)  # text ids and <eos>: what a caption is drawn from
    assert len(vocab.text_words()) == t and vocab.text_words()[0] == "[UNK]"
    with pytest.raises(KeyError, match="<nope>"):
        vocab.marker("<nope>")


def test_captions_and_instructions_round_trip_through_text_ids(vocab, texts):
    for text in texts["captions"] + texts["instructions"] + texts["targets"]:
        ids = vocab.encode_text(text)
        assert ids and all(0 <= i < vocab.text_size and i != vocab.unk_id for i in ids), text
        assert vocab.decode_text(ids) == text
        # decoding stops at the first <eos> and skips markers and image ids
        noisy = [vocab.marker("<boi>"), *ids, vocab.image_offset + 3, vocab.pad, vocab.eos, *ids]
        assert vocab.decode_text(noisy) == text
        assert vocab.decode_text(torch.tensor(ids)) == text
    assert vocab.encode_text("Two RED circles") == vocab.encode_text("two red circles")  # lower-cased


def test_image_codes_round_trip_through_lm_ids(vocab):
    c = codes(5)
    c[0, 0], c[0, 1] = 0, V - 1  # both ends of the codebook
    lm = vocab.image_to_lm(c)
    assert lm.shape == c.shape and lm.dtype == torch.long and vocab.is_image(lm).all()
    assert int(lm.min()) >= vocab.image_offset and int(lm.max()) < vocab.size
    assert torch.equal(vocab.lm_to_image(lm), c)


def test_vocab_save_load_round_trip_and_mismatch(vocab, texts, tmp_path):
    folder = vocab.save(tmp_path / "vocab")
    back = MultimodalVocab.load(folder)
    assert back.layout() == vocab.layout() and back.fingerprint() == vocab.fingerprint()
    for text in texts["captions"][:8] + texts["instructions"][:8]:
        assert back.encode_text(text) == vocab.encode_text(text)
    assert torch.equal(back.image_to_lm(codes(2)), vocab.image_to_lm(codes(2)))
    # another codebook, or another text tokenizer: another fingerprint
    assert MultimodalVocab(vocab.text, V + 1).fingerprint() != vocab.fingerprint()
    other = MultimodalVocab(train_text_tokenizer(texts["captions"][:4]), V)
    assert other.fingerprint() != vocab.fingerprint()
    # a vocab.json from another run: the layout does not match the tokenizer
    layout = json.loads((folder / "vocab.json").read_text())
    (folder / "vocab.json").write_text(json.dumps({**layout, "text_size": layout["text_size"] + 1}))
    with pytest.raises(ValueError, match="different runs"):
        MultimodalVocab.load(folder)
    (folder / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        MultimodalVocab.load(folder)


# -- 2. bad input -------------------------------------------------------------------------------------------


def test_unknown_words_long_prompts_and_bad_codes_are_clear_errors(vocab):
    with pytest.raises(UnknownWordsError, match="'zebra'") as info:
        vocab.encode_text("two red zebra circles")
    assert "circles" not in str(info.value).split(" in ")[0]  # only the unknown word is named
    with pytest.raises(TypeError, match="str"):
        vocab.encode_text(["two", "red"])
    too_long = vocab.encode_text("two red circles") * 6  # 18 > P = 16
    with pytest.raises(PromptTooLongError, match="18 tokens.*at most 16"):
        build("t2i", vocab, 16, text=too_long, image=codes(1)[0])
    with pytest.raises(PromptTooLongError, match="caption"):
        build("i2t", vocab, 16, text=too_long, image=codes(1)[0])
    with pytest.raises(PromptTooLongError, match="instruction"):
        sequences.edit_prompts(vocab, [too_long], codes(1), 16)
    with pytest.raises(ValueError, match=rf"\[0, {V}\)"):
        vocab.image_to_lm(torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match=rf"\[0, {V}\)"):
        vocab.image_to_lm(torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="integer"):
        vocab.image_to_lm(torch.zeros(1, K))
    with pytest.raises(ValueError, match="not image codes"):
        vocab.lm_to_image(torch.tensor([vocab.image_offset, 3]))  # 3 is a text id
    with pytest.raises(ValueError, match="not image codes"):
        vocab.lm_to_image(torch.tensor([vocab.eos]))
    with pytest.raises(ValueError, match="unknown task"):
        build("video", vocab, 16, text=[1])
    with pytest.raises(ValueError, match="target"):
        build("edit", vocab, 16, text=[1], image=codes(1)[0])


def test_model_refuses_bad_input(vocab):
    model = tiny(vocab)
    with pytest.raises(PromptTooLongError):
        model.generate_images([vocab.encode_text("two red circles") * 6])
    with pytest.raises(ValueError, match=rf"K = {K}"):
        model.caption(torch.zeros(2, K + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"\[0, {V}\)"):
        model.caption(torch.full((1, K), V))
    with pytest.raises(ValueError, match="2 instructions for 1 source"):
        model.edit([[1], [2]], codes(1))
    ids, mask = pack([build("i2t", vocab, 16, text=[1, 2], image=codes(1)[0])], vocab.pad)
    with pytest.raises(ValueError, match="long"):
        model.loss(ids.float(), mask)
    with pytest.raises(ValueError, match="loss_mask"):
        model.loss(ids, mask.long())
    with pytest.raises(ValueError, match="loss_mask"):
        model.loss(ids, mask[:, 1:])
    bad = ids.clone()
    bad[0, 3] = vocab.size
    with pytest.raises(ValueError, match=rf"\[0, {vocab.size}\)"):
        model.loss(bad, mask)
    with pytest.raises(ValueError, match="no target"):
        model.loss(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="codebook_size > 0"):
        registry.build("mllm", "mllm_tiny", vocab=vocab, num_tokens=K, codebook_size=0)
    with pytest.raises(ValueError, match="does not match"):
        registry.build("mllm", "mllm_tiny", vocab=vocab, num_tokens=K, codebook_size=V + 1)


# -- 3. sequences -------------------------------------------------------------------------------------------


def test_every_task_has_the_documented_layout_and_loss_mask(vocab, texts):
    p = 12
    text = vocab.encode_text(texts["captions"][0])
    text = (text * 2)[:p]  # a full-slot text
    src, tgt = codes(2, seed=3)
    img, tim = vocab.image_to_lm(src).tolist(), vocab.image_to_lm(tgt).tolist()
    mk = vocab.marker
    boi, eoi, eos = vocab.boi, vocab.eoi, vocab.eos
    expected = {  # (ids, the ids that are targets: the indices where the mask is True)
        "t2i": ([mk("<t2i>"), *text, boi, *img, eoi], range(p + 2, p + K + 3)),
        "i2t": ([mk("<i2t>"), boi, *img, eoi, *text, eos], range(K + 3, K + p + 4)),
        "image": ([mk("<img>"), boi, *img, eoi], range(2, K + 3)),
        "text": ([mk("<txt>"), *text, eos], range(1, p + 2)),
        "edit": ([mk("<edit>"), *text, boi, *img, eoi, boi, *tim, eoi], range(p + K + 4, p + 2 * K + 5)),
    }
    for task in TASKS:
        ids, mask = build(task, vocab, p, text=text, image=src, target=tgt)
        want, targets = expected[task]
        assert ids.dtype == torch.long and mask.dtype == torch.bool, task
        assert ids.tolist() == want, task
        assert len(ids) == max_length(task, p, K), task
        assert mask.nonzero()[:, 0].tolist() == list(targets), task


def test_short_and_null_prompts_are_left_padded_into_the_slot(vocab):
    p, short = 6, [5, 7]
    src, tgt = codes(2, seed=4)
    pads = [vocab.pad] * (p - 2)
    ids, mask = build("t2i", vocab, p, text=short, image=src)
    assert ids[: p + 2].tolist() == [vocab.marker("<t2i>"), *pads, *short, vocab.boi]
    assert len(ids) == max_length("t2i", p, K) and not mask[: p + 2].any() and mask[p + 2:].all()
    null, _ = build("t2i", vocab, p, text=None, image=src)
    assert null[1: p + 1].tolist() == [vocab.pad] * p and torch.equal(null[p + 1:], ids[p + 1:])
    ids, mask = build("edit", vocab, p, text=short, image=src, target=tgt)
    assert ids[1: p + 1].tolist() == [*pads, *short] and len(ids) == max_length("edit", p, K)
    # captions and text are not padded: they end at <eos>
    ids, mask = build("i2t", vocab, p, text=short, image=src)
    assert ids[-3:].tolist() == [*short, vocab.eos] and len(ids) == max_length("i2t", p, K) - (p - 2)
    assert mask.nonzero()[:, 0].tolist() == [K + 3, K + 4, K + 5]
    # the generation prompts are the training sequences' prefixes
    t2i, _ = build("t2i", vocab, p, text=short, image=src)
    assert sequences.t2i_prompts(vocab, [short, None], p).tolist() == [t2i[: p + 2].tolist(), null[: p + 2].tolist()]
    i2t, _ = build("i2t", vocab, p, text=short, image=src)
    assert sequences.i2t_prompts(vocab, src[None]).tolist() == [i2t[: K + 3].tolist()]
    edit, _ = build("edit", vocab, p, text=short, image=src, target=tgt)
    assert sequences.edit_prompts(vocab, [short], src[None], p).tolist() == [edit[: p + K + 4].tolist()]


def test_pack_right_pads_with_pad_and_no_targets(vocab):
    src = codes(1, seed=5)[0]
    rows = [build("text", vocab, 8, text=[3]), build("i2t", vocab, 8, text=[3, 4], image=src),
            build("image", vocab, 8, image=src)]
    ids, mask = pack(rows, vocab.pad)
    longest = max(len(r[0]) for r in rows)
    assert ids.shape == mask.shape == (3, longest) and ids.dtype == torch.long and mask.dtype == torch.bool
    for b, (seq, m) in enumerate(rows):
        n = len(seq)
        assert torch.equal(ids[b, :n], seq) and torch.equal(mask[b, :n], m)
        assert (ids[b, n:] == vocab.pad).all() and not mask[b, n:].any()
    assert int(mask.sum()) == sum(int(m.sum()) for _, m in rows)


# -- 4. the model: loss, memorisation, CFG, KV cache --------------------------------------------------------


def test_loss_is_next_token_cross_entropy_on_the_targets(vocab):
    model = tiny(vocab).train()
    src, tgt = codes(2, seed=6)
    rows = [build(t, vocab, 16, text=[4, 5, 6], image=src, target=tgt) for t in TASKS]
    ids, mask = pack(rows, vocab.pad)
    out = model.loss(ids, mask)
    assert set(out) == {"loss", "ce", "accuracy"} and torch.equal(out["loss"], out["ce"])
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and not out["accuracy"].requires_grad
    with torch.no_grad():
        logits = model.lm(input_ids=ids, use_cache=False).logits  # (B, S, L)
    pos = mask.nonzero()  # (N, 2): the targets (b, s)
    ref = F.cross_entropy(logits[pos[:, 0], pos[:, 1] - 1], ids[pos[:, 0], pos[:, 1]])
    assert torch.allclose(out["ce"].detach(), ref, atol=1e-5)
    hits = (logits[pos[:, 0], pos[:, 1] - 1].argmax(-1) == ids[pos[:, 0], pos[:, 1]]).float().mean()
    assert torch.allclose(out["accuracy"], hits)
    # the padding and the prompts carry no loss: changing a non-target id after the last target changes nothing
    last = int(pos[pos[:, 0] == 3][:, 1].max())  # row 3 is "text", shorter than the longest
    changed = ids.clone()
    changed[3, last + 1:] = vocab.image_offset
    assert torch.allclose(model.loss(changed, mask)["ce"], out["ce"], atol=1e-6)


def test_tiny_model_memorises_four_captions_both_ways(vocab, texts):
    """4 random-code images with real captions: greedy captions and greedy t2i (cfg 1) reproduce them exactly."""
    caps = [vocab.encode_text(t) for t in texts["captions"][:4]]
    imgs = codes(4, seed=7)
    assert len({tuple(c) for c in caps}) == 4
    slot = max(len(c) for c in caps)
    model = tiny(vocab, text_slot=slot).train()
    rows = [build("t2i", vocab, slot, text=c, image=i) for c, i in zip(caps, imgs)]
    rows += [build("i2t", vocab, slot, text=c, image=i) for c, i in zip(caps, imgs)]
    ids, mask = pack(rows, vocab.pad)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    t0 = time.perf_counter()
    steps = 0
    while steps < 400:  # AdamW until every target of the batch is right and the loss is small
        out = model.loss(ids, mask)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        steps += 1
        if out["accuracy"].item() == 1.0 and out["loss"].item() < 0.02:
            break
    seconds = time.perf_counter() - t0
    print(f"memorised 4 pairs in {steps} steps, {seconds:.1f} s")
    model.eval()
    assert model.caption(imgs, temperature=0.0) == caps
    assert model.caption(imgs) == caps  # the config's default: greedy captions
    got = model.generate_images(caps, cfg_scale=1.0, temperature=0.0)
    assert got.shape == (4, K) and got.dtype == torch.long and torch.equal(got, imgs)


def _teacher_forced(model: MultimodalLM, prompt: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """Logits (B, N, L) of the positions that predict drawn (B, N) after prompt (B, S)."""
    with torch.no_grad():
        seq = torch.cat([prompt, drawn], dim=1)
        return model.lm(input_ids=seq, use_cache=False).logits[:, prompt.shape[1] - 1: -1].float()


def test_cfg_scale_one_is_conditional_and_zero_unconditional(vocab, texts):
    model = tiny(vocab).eval()
    prompt = sequences.t2i_prompts(vocab, [vocab.encode_text(t) for t in texts["captions"][:2]], 16)
    uncond = sequences.t2i_prompts(vocab, [None, None], 16)
    lo, hi = vocab.image_range
    outside = torch.ones(vocab.size, dtype=torch.bool)
    outside[lo:hi] = False
    for scale in (1.0, 0.0, 2.5):
        drawn, seen = sample_tokens(model.lm, prompt, K, uncond_prompt=uncond, cfg_scale=scale, temperature=1.0,
                                    vocab_range=vocab.image_range, rng=rng(1), return_logits=True)
        cond = _teacher_forced(model, prompt, drawn)  # (B, K, L): both halves were fed the same drawn ids
        unc = _teacher_forced(model, uncond, drawn)
        want = (unc + scale * (cond - unc)).masked_fill(outside, float("-inf"))
        assert torch.isinf(seen[..., outside]).all() and torch.isfinite(seen[..., lo:hi]).all()
        assert torch.allclose(seen[..., lo:hi], want[..., lo:hi], atol=1e-4), scale
    assert not torch.allclose(cond[..., lo:hi], unc[..., lo:hi], atol=1e-3)  # the two are distinguishable


def test_generation_passes_the_documented_prompts(vocab, monkeypatch):
    """generate_images / edit guide against the null text (edit: with the same source); caption draws text."""
    model = tiny(vocab, cfg_scale=2.0, temperature=0.7, top_k=5).eval()
    calls = []

    def spy(lm, prompt, n_new, **kw):
        calls.append({"prompt": prompt, "n_new": n_new, **kw})
        return sample_tokens(lm, prompt, n_new, **kw)

    monkeypatch.setattr(mllm_model, "sample_tokens", spy)
    texts, src = [[4, 5], None], codes(2, seed=8)
    model.generate_images(texts, rng=rng(0))
    model.edit([[6], [7, 8]], src, rng=rng(0), cfg_scale=4.0, top_p=0.9)
    model.caption(src)
    t2i, ed, cap = calls
    assert torch.equal(t2i["prompt"], sequences.t2i_prompts(vocab, texts, 16))
    assert torch.equal(t2i["uncond_prompt"], sequences.t2i_prompts(vocab, [None, None], 16))
    assert t2i["n_new"] == K and t2i["vocab_range"] == vocab.image_range
    assert (t2i["cfg_scale"], t2i["temperature"], t2i["top_k"], t2i["top_p"]) == (2.0, 0.7, 5, 1.0)  # config's
    assert torch.equal(ed["prompt"], sequences.edit_prompts(vocab, [[6], [7, 8]], src, 16))
    assert torch.equal(ed["uncond_prompt"], sequences.edit_prompts(vocab, [None, None], src, 16))
    assert (ed["cfg_scale"], ed["top_p"], ed["n_new"], ed["vocab_range"]) == (4.0, 0.9, K, vocab.image_range)
    assert torch.equal(cap["prompt"], sequences.i2t_prompts(vocab, src))
    assert cap["n_new"] == 17 and cap["vocab_range"] == vocab.text_range and cap["temperature"] == 0.0
    assert cap.get("cfg_scale", 1.0) == 1.0


def test_kv_cache_gives_the_same_ids_as_recomputation(vocab, texts):
    model = tiny(vocab).eval()
    prompts = [vocab.encode_text(t) for t in texts["captions"][:3]]
    src = codes(3, seed=9)
    instr = [vocab.encode_text(t) for t in texts["instructions"][:2]] + [None]
    for use_cache in (True, False):
        out = (model.generate_images(prompts, cfg_scale=3.0, temperature=1.0, rng=rng(2), use_cache=use_cache),
               model.caption(src, temperature=1.0, rng=rng(3), use_cache=use_cache),
               model.edit(instr, src, cfg_scale=3.0, temperature=1.0, rng=rng(4), use_cache=use_cache))
        if use_cache:
            cached = out
    assert torch.equal(cached[0], out[0]) and cached[1] == out[1] and torch.equal(cached[2], out[2])
    images, caps, edits = cached
    assert images.shape == edits.shape == (3, K) and int(images.min()) >= 0 and int(images.max()) < V
    assert all(0 <= i < vocab.text_size for c in caps for i in c) and all(len(c) <= 17 for c in caps)  # P + 1 draws
    # seeded: another seed draws other ids (random weights: near-uniform over the codebook)
    assert not torch.equal(model.generate_images(prompts, temperature=1.0, rng=rng(5)), images)


def test_caption_is_cut_at_the_first_eos(vocab, monkeypatch):
    model = tiny(vocab).eval()
    eos = vocab.eos
    fixed = torch.tensor([[3, 4, eos, 5] + [eos] * 14, [eos] * 18, [6] * 17 + [eos]])[:, :17]  # (3, P + 1)
    monkeypatch.setattr(mllm_model, "sample_tokens", lambda *a, **k: fixed)
    assert model.caption(codes(3)) == [[3, 4], [], [6] * 17]


# -- 5. a pretrained base -----------------------------------------------------------------------------------


def _base_model(folder, texts, vocab_size: int = 128):
    """A tiny LlamaForCausalLM with a word-level tokenizer.json, saved like a transformers model folder."""
    import transformers

    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(config)
    base.save_pretrained(folder)
    train_text_tokenizer(texts["captions"] + texts["instructions"] + texts["targets"]).save(
        str(folder / "tokenizer.json"))
    return base


def test_pretrained_base_keeps_its_text_rows_and_appends_the_rest(texts, tmp_path):
    folder = tmp_path / "base"
    base = _base_model(folder, texts)
    vocab = MultimodalVocab(load_text_tokenizer(folder), V, kind="pretrained")
    assert vocab.text_size <= 128 and vocab.unk_id is None
    model = MultimodalLM(MLLMConfig(num_tokens=K, codebook_size=V, pretrained=str(folder)), vocab)
    emb, head = model.lm.get_input_embeddings().weight, model.lm.get_output_embeddings().weight
    assert emb.shape == (vocab.size, 32) and head.shape == (vocab.size, 32)
    t = vocab.text_size
    assert torch.equal(emb[:t], base.get_input_embeddings().weight[:t])
    assert torch.equal(head[:t], base.get_output_embeddings().weight[:t])
    assert torch.equal(model.lm.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    # the registry builds the same, and the resized model trains and generates
    same = registry.build("mllm", "mllm_tiny", vocab=vocab, num_tokens=K, pretrained=str(folder))
    assert torch.equal(same.lm.get_input_embeddings().weight[:t], emb[:t])
    ids, mask = pack([build("i2t", vocab, 16, text=vocab.encode_text(texts["captions"][0]), image=codes(1)[0])],
                     vocab.pad)
    assert torch.isfinite(model.loss(ids, mask)["loss"])
    assert model.generate_images([vocab.encode_text("two red circles")], temperature=0.0).shape == (1, K)


def test_pretrained_base_errors_are_clear(texts, vocab, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_text_tokenizer(missing)
    pre = MultimodalVocab(vocab.text, V, kind="pretrained")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        MultimodalLM(MLLMConfig(num_tokens=K, codebook_size=V, pretrained=str(missing)), pre)
    folder = tmp_path / "small"
    _base_model(folder, texts, vocab_size=16)  # fewer rows than the text tokenizer's ids
    small = MultimodalVocab(load_text_tokenizer(folder), V, kind="pretrained")
    with pytest.raises(ValueError, match=rf"{small.text_size} ids.*only 16"):
        MultimodalLM(MLLMConfig(num_tokens=K, codebook_size=V, pretrained=str(folder)), small)
    with pytest.raises(ValueError, match="kind 'scratch'"):
        MultimodalLM(MLLMConfig(num_tokens=K, codebook_size=V, pretrained=str(folder)), vocab)
    with pytest.raises(ValueError, match="needs mllm.pretrained"):
        MultimodalLM(MLLMConfig(num_tokens=K, codebook_size=V), pre)


# -- 6. registry --------------------------------------------------------------------------------------------


def test_registry_lists_the_family_and_builds_every_config():
    fam = registry.family("mllm", "mllm")
    assert fam.config is MLLMConfig and fam.recipe == "quickstart_mllm" and fam.paper == "arXiv 2504.14666"
    assert registry.members("mllm", "mllm") == ["mllm_b", "mllm_mini", "mllm_s", "mllm_tiny"]
    assert registry.tiny_members("mllm") == ["mllm_tiny"]
    sizes = {"mllm_tiny": (64, 2, 2), "mllm_mini": (128, 4, 4), "mllm_s": (384, 12, 6), "mllm_b": (768, 12, 12)}
    for name in registry.names("mllm"):
        assert registry.family_of("mllm", name) is fam
        cfg = mllm_config(name, num_tokens=K, codebook_size=V, text_slot=20)
        assert (cfg.width, cfg.depth, cfg.heads) == sizes[name] and cfg.width % cfg.heads == 0
        assert (cfg.num_tokens, cfg.codebook_size, cfg.text_slot) == (K, V, 20)
    assert set(PRESETS) == set(sizes)
    assert MLLMConfig() == mllm_config("mllm_mini")  # the defaults are mllm_mini
    with pytest.raises(ConfigError, match="widht"):
        mllm_config("mllm_tiny", widht=3)
    with pytest.raises(ConfigError, match="text_dropout"):
        mllm_config("mllm_tiny", text_dropout=1.5)
    with pytest.raises(ConfigError, match="width"):
        mllm_config("mllm_tiny", width="wide")
    with pytest.raises(KeyError, match="mllm_tiny"):
        mllm_config("mllm_xl")


def test_mllm_tiny_trains_one_step(vocab):
    model = tiny(vocab).train()
    assert model.max_positions == max(max_length(t, 16, K) for t in TASKS)
    assert model.lm.config.max_position_embeddings == model.max_positions
    assert model.lm.get_input_embeddings().num_embeddings == vocab.size
    src, tgt = codes(2, seed=10)
    ids, mask = pack([build(t, vocab, 16, text=[4, 5], image=src, target=tgt) for t in TASKS], vocab.pad)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model.loss(ids, mask)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    emb = model.lm.get_input_embeddings().weight
    # the rows of the ids read before a target get a gradient, the rows of ids never read none
    last = torch.stack([m.nonzero()[:, 0].max() for m in mask])  # (B,): each row's last target
    read = torch.cat([row[:t] for row, t in zip(ids, last.tolist())]).unique()
    unread = torch.ones(vocab.size, dtype=torch.bool)
    unread[ids.unique()] = False
    assert emb.grad[read].abs().sum(-1).gt(0).all() and not emb.grad[unread].any()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, dead
    before = emb.detach().clone()
    opt.step()
    assert not torch.equal(before, emb.detach())
    assert model.loss(ids, mask)["loss"] < out["loss"]


def test_importing_the_multimodal_model_needs_no_transformers():
    script = (
        "import sys; sys.modules['transformers'] = None\n"  # `import transformers` now raises ImportError
        "from detok import registry\n"
        "assert 'mllm_tiny' in registry.names('mllm')\n"
        "import detok.multimodal.model\n"
        "from detok.multimodal.vocab import MultimodalVocab, train_text_tokenizer\n"
        "vocab = MultimodalVocab(train_text_tokenizer(['two red circles']), 8)\n"
        "try:\n"
        "    registry.build('mllm', 'mllm_tiny', vocab=vocab, num_tokens=4)\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'detok[lm]'\" in str(e), e\n"
        "else:\n"
        "    raise AssertionError('built a Llama without transformers')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
