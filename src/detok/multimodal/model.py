"""The multimodal causal LM: one LLaMA over text ids, task markers and discrete image codes.

DDT-LLaMA's recipe (arXiv 2504.14666) in miniature: a causal LM whose vocabulary is a text vocabulary
extended by the image tokenizer's codes (`detok.multimodal.vocab.MultimodalVocab`), trained with plain
next-token cross-entropy on the sequences of five tasks (`detok.multimodal.sequences`: t2i, i2t, image,
text, edit), and used three ways:

    generate_images(texts)          <t2i> slot <boi> -> K image codes (CFG against the null prompt)
    caption(codes)                  <i2t> <boi> image <eoi> -> text ids up to the first <eos>
    edit(instructions, sources)     <edit> slot <boi> source <eoi> <boi> -> K image codes (CFG against the
                                    null instruction with the same source image)

Two ways to get the LLaMA (`MLLMConfig.pretrained`):

- from scratch (""; the CPU case): `build_llama` of the preset's size over `vocab.size` ids, with
  max_positions the longest sequence of any task;
- pretrained (a local transformers-layout causal-LM folder; the GPU case): `load_llama`, then
  `resize_token_embeddings(vocab.size)`: the base model's text rows are kept and the markers and image
  codes appended (freshly initialised) behind them, as DDT-LLaMA extends LLaMA-3's vocabulary. The
  vocabulary must then be built on the base model's own tokenizer (`kind="pretrained"`). Never downloads.

Draws use `detok.nn.llama.sample_tokens` (KV cache, a `torch.Generator`, restricted id ranges: image codes
for images, text ids + <eos> for captions). `transformers` is an optional extra: this module imports without
it and builds the LLaMA in `__init__`.

Axis letters: B batch, K image tokens, V codebook size, P text slot, S sequence, L = vocab.size the LM
vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detok.config import from_dict, option
from detok.multimodal import sequences
from detok.multimodal.sequences import TASKS
from detok.multimodal.vocab import MultimodalVocab
from detok.nn.llama import build_llama, load_llama, sample_tokens
from detok.registry import Family, register, register_family


@dataclass
class MLLMConfig:
    """Multimodal LM architecture, text slot and sampling defaults; the defaults are mllm_mini (the CPU recipe)."""

    num_tokens: int = option(32, "K, image tokens per image (set from the image tokenizer)", min=1)
    codebook_size: int = option(0, "V, the image tokenizer's codebook size (required; set from the tokenizer)",
                                min=0)
    text_slot: int = option(16, "P, the longest prompt / caption / instruction in text tokens", min=1)
    width: int = option(128, "hidden size of the LLaMA (from scratch)", min=1)
    depth: int = option(4, "decoder layers (from scratch)", min=1)
    heads: int = option(4, "attention heads, as many key-value heads (from scratch)", min=1)
    intermediate: int = option(0, "SwiGLU hidden size; 0 = int(8/3 * width) rounded up to a multiple of 8", min=0)
    rope_theta: float = option(10000.0, "RoPE base (LLaMA-2's 10000; from scratch)", min=1)
    text_dropout: float = option(0.1, "t2i / edit training: probability the text becomes the null prompt (CFG)",
                                 min=0, max=1)
    cfg_scale: float = option(3.0, "default guidance on image tokens (t2i, edit); 1 = off, 0 = unconditional",
                              min=0)
    temperature: float = option(1.0, "image-token sampling temperature; 0 = greedy argmax", min=0)
    top_k: int = option(0, "image tokens: keep the k most likely ids; 0 = off", min=0)
    top_p: float = option(1.0, "image tokens: nucleus sampling mass; 1 = off", min=0, max=1)
    caption_temperature: float = option(0.0, "caption sampling temperature; 0 = greedy captions", min=0)
    pretrained: str = option("", "a local transformers-layout causal-LM folder to start from; '' = from scratch")


class MultimodalLM(nn.Module):
    """A LLaMA (`self.lm`) over the ids of `vocab`; `loss` on packed task sequences, and t2i / i2t / edit."""

    def __init__(self, cfg: MLLMConfig, vocab: MultimodalVocab) -> None:
        super().__init__()
        if not isinstance(vocab, MultimodalVocab):
            raise TypeError(f"vocab must be a MultimodalVocab, got {type(vocab).__name__}")
        if cfg.codebook_size <= 0:
            raise ValueError("mllm needs codebook_size > 0 (V, the image tokenizer's codebook size)")
        if cfg.codebook_size != vocab.codebook_size:
            raise ValueError(f"codebook_size {cfg.codebook_size} does not match the vocabulary's "
                             f"{vocab.codebook_size} image codes")
        self.cfg = cfg
        self.vocab = vocab
        self.num_tokens = cfg.num_tokens  # K
        self.text_slot = cfg.text_slot  # P
        self.max_positions = max(sequences.max_length(t, cfg.text_slot, cfg.num_tokens) for t in TASKS)
        if cfg.pretrained:
            self.lm = self._pretrained(cfg.pretrained, vocab)
        else:
            if vocab.kind != "scratch":
                raise ValueError("a vocabulary of kind 'pretrained' (a base model's tokenizer) needs "
                                 "mllm.pretrained, the folder of that base model")
            self.lm = build_llama(vocab.size, cfg.width, cfg.depth, cfg.heads, cfg.intermediate,
                                  max_positions=self.max_positions, rope_theta=cfg.rope_theta)

    @staticmethod
    def _pretrained(folder: str, vocab: MultimodalVocab) -> Any:
        """The base LLaMA of `folder` with its embeddings resized to vocab.size (text rows kept, the rest new)."""
        if vocab.kind != "pretrained":
            raise ValueError(f"mllm.pretrained={folder!r} needs a vocabulary built on that model's own tokenizer "
                             f"(MultimodalVocab(load_text_tokenizer(folder), V, kind='pretrained')), got kind "
                             f"{vocab.kind!r}")
        lm = load_llama(folder)
        base = lm.get_input_embeddings().num_embeddings
        if vocab.text_size > base:
            raise ValueError(f"the text tokenizer has {vocab.text_size} ids but the base model at {folder} embeds "
                             f"only {base}: the vocabulary must come from that model's own tokenizer.json")
        lm.resize_token_embeddings(vocab.size)  # rows [0, base) kept; markers and image codes appended
        return lm

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    # -- checks -------------------------------------------------------------------------------------

    def check_codes(self, codes: torch.Tensor, what: str = "codes") -> None:
        """A ValueError naming the problem unless codes is integer (B, K) with values in [0, V)."""
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"{what} must be integer image-code ids, got {codes.dtype}")
        if codes.ndim != 2 or codes.shape[1] != self.num_tokens:
            raise ValueError(f"{what} must be (B, K) with K = {self.num_tokens} (mllm.num_tokens), got shape "
                             f"{tuple(codes.shape)}")
        v = self.vocab.codebook_size
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= v):
            raise ValueError(f"{what} must lie in [0, {v}) (the codebook size), got [{int(codes.min())}, "
                             f"{int(codes.max())}]")

    # -- training -----------------------------------------------------------------------------------

    def loss(self, ids: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Next-token cross-entropy of packed sequences ids (B, S) long on the targets loss_mask (B, S) bool.

        Position s - 1 predicts id s where loss_mask[:, s] (`detok.multimodal.sequences`). Returns "loss"
        (= "ce", the mean over all targets of the batch) and "accuracy" (top-1 on the targets, detached).
        """
        if ids.dtype != torch.long or ids.ndim != 2:
            raise ValueError(f"ids must be long (B, S), got {ids.dtype} {tuple(ids.shape)}")
        if loss_mask.dtype != torch.bool or loss_mask.shape != ids.shape:
            raise ValueError(f"loss_mask must be bool of the ids' shape {tuple(ids.shape)}, got {loss_mask.dtype} "
                             f"{tuple(loss_mask.shape)}")
        if ids.shape[1] < 2 or ids.shape[1] > self.max_positions:
            raise ValueError(f"sequences must have 2 to {self.max_positions} ids (the longest task), got "
                             f"{ids.shape[1]}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab.size:
            raise ValueError(f"ids must lie in [0, {self.vocab.size}) (the LM vocabulary), got [{int(ids.min())}, "
                             f"{int(ids.max())}]")
        targets = loss_mask[:, 1:]  # (B, S - 1): position s predicts id s + 1
        if not bool(targets.any()):
            raise ValueError("loss_mask marks no target after the first position: nothing to learn from")
        logits = self.lm(input_ids=ids[:, :-1], use_cache=False).logits  # (B, S - 1, L)
        picked = logits[targets].float()  # (N, L)
        labels = ids[:, 1:][targets]  # (N,)
        ce = F.cross_entropy(picked, labels)
        accuracy = (picked.argmax(dim=-1) == labels).float().mean().detach()
        return {"loss": ce, "ce": ce, "accuracy": accuracy}

    # -- generation ---------------------------------------------------------------------------------

    def _image_kwargs(self, cfg_scale: float | None, temperature: float | None, top_k: int | None,
                      top_p: float | None) -> dict[str, Any]:
        """The image-token sampling settings: the arguments, or the config's where None."""
        cfg = self.cfg
        return {"cfg_scale": cfg.cfg_scale if cfg_scale is None else cfg_scale,
                "temperature": cfg.temperature if temperature is None else temperature,
                "top_k": cfg.top_k if top_k is None else top_k,
                "top_p": cfg.top_p if top_p is None else top_p}

    @torch.no_grad()
    def generate_images(
        self, texts: list[list[int] | None], *, cfg_scale: float | None = None, temperature: float | None = None,
        top_k: int | None = None, top_p: float | None = None, rng: torch.Generator | None = None,
        use_cache: bool = True, progress: bool = False,
    ) -> torch.Tensor:
        """Image codes (B, K) long in [0, V) for B prompts (text ids; None or [] = the unconditional prompt).

        cfg_scale != 1 guides the logits against the null prompt; the settings default (None) to the config's.
        """
        if len(texts) == 0:
            return torch.zeros(0, self.num_tokens, dtype=torch.long, device=self.device)
        prompt = sequences.t2i_prompts(self.vocab, texts, self.text_slot).to(self.device)  # (B, P + 2)
        uncond = sequences.t2i_prompts(self.vocab, [None] * len(texts), self.text_slot).to(self.device)
        ids = sample_tokens(self.lm, prompt, self.num_tokens, uncond_prompt=uncond,
                            vocab_range=self.vocab.image_range, rng=rng, use_cache=use_cache, progress=progress,
                            **self._image_kwargs(cfg_scale, temperature, top_k, top_p))  # (B, K)
        return self.vocab.lm_to_image(ids)

    @torch.no_grad()
    def caption(
        self, codes: torch.Tensor, *, temperature: float | None = None, rng: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> list[list[int]]:
        """The text ids of each image's caption, codes (B, K) -> B lists (each cut before its first <eos>).

        Draws P + 1 ids from the text ids and <eos> (a row that draws no <eos> keeps all P + 1); temperature
        defaults to the config's caption_temperature (0 = greedy).
        """
        self.check_codes(codes)
        if len(codes) == 0:
            return []
        prompt = sequences.i2t_prompts(self.vocab, codes.cpu()).to(self.device)  # (B, K + 3)
        temperature = self.cfg.caption_temperature if temperature is None else temperature
        ids = sample_tokens(self.lm, prompt, self.text_slot + 1, temperature=temperature,
                            vocab_range=self.vocab.text_range, rng=rng, use_cache=use_cache)  # (B, P + 1)
        out = []
        for row in ids.tolist():
            out.append(row[: row.index(self.vocab.eos)] if self.vocab.eos in row else row)
        return out

    @torch.no_grad()
    def edit(
        self, instructions: list[list[int] | None], sources: torch.Tensor, *, cfg_scale: float | None = None,
        temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
        rng: torch.Generator | None = None, use_cache: bool = True, progress: bool = False,
    ) -> torch.Tensor:
        """Edited image codes (B, K) long in [0, V) of source codes (B, K) and one instruction (text ids) each.

        cfg_scale != 1 guides against the null instruction with the same source; settings default to the config's.
        """
        self.check_codes(sources, "sources")
        if len(instructions) != len(sources):
            raise ValueError(f"{len(instructions)} instructions for {len(sources)} source images")
        if len(sources) == 0:
            return torch.zeros(0, self.num_tokens, dtype=torch.long, device=self.device)
        src = sources.cpu()
        prompt = sequences.edit_prompts(self.vocab, instructions, src, self.text_slot).to(self.device)
        uncond = sequences.edit_prompts(self.vocab, [None] * len(src), src, self.text_slot).to(self.device)
        ids = sample_tokens(self.lm, prompt, self.num_tokens, uncond_prompt=uncond,
                            vocab_range=self.vocab.image_range, rng=rng, use_cache=use_cache, progress=progress,
                            **self._image_kwargs(cfg_scale, temperature, top_k, top_p))  # (B, K)
        return self.vocab.lm_to_image(ids)


# ---------------------------------------------------------------------------------------------------
# Presets and registration
# ---------------------------------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    "mllm_tiny": {"width": 64, "depth": 2, "heads": 2},  # tests
    "mllm_mini": {"width": 128, "depth": 4, "heads": 4},  # the CPU recipe
    "mllm_s": {"width": 384, "depth": 12, "heads": 6},
    "mllm_b": {"width": 768, "depth": 12, "heads": 12},
}


def mllm_config(name: str, **overrides) -> MLLMConfig:
    """The MLLMConfig of a preset with overrides (num_tokens and codebook_size among them; no model built)."""
    if name not in PRESETS:
        raise KeyError(f"unknown mllm preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return from_dict(MLLMConfig, {**PRESETS[name], **overrides})  # type-checked; unknown keys are ConfigErrors


register_family(Family(
    "mllm", "mllm", "Multimodal LM over text + discrete image tokens (DDT-LLaMA in miniature)",
    recipe="quickstart_mllm", paper="arXiv 2504.14666", config=MLLMConfig,
))


def _register(name: str) -> None:
    def build(vocab: MultimodalVocab, num_tokens: int = 32, codebook_size: int | None = None,
              **overrides) -> MultimodalLM:
        v = vocab.codebook_size if codebook_size is None else codebook_size
        return MultimodalLM(mllm_config(name, num_tokens=num_tokens, codebook_size=v, **overrides), vocab)

    build.__doc__ = (f"Build {name} over `vocab` for K = num_tokens image tokens of a codebook_size-code "
                     "tokenizer (default: the vocabulary's).")
    register("mllm", name, family="mllm")(build)


for _name in PRESETS:
    _register(_name)
