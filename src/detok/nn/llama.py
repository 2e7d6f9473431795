"""A thin adapter over `transformers`' Llama: build a small one from scratch, load a local one, sample from it.

Shared by the DDT AR generator (`detok.generators.ddt_ar`) and the multimodal language model: both are a
causal LM over a vocabulary of ids, and both sample with classifier-free guidance, a restricted id range
and a `torch.Generator`, which `generate` does not offer exactly; `sample_tokens` is that loop.

`transformers` is an optional extra (`pip install 'detok[lm]'`): nothing here imports it at module import
time, so detok (and its registry, which imports every generator module) works without it.

Axis letters: B batch (prompts), R rows of the model batch (B, or 2B with guidance: [cond; uncond]),
P prompt length, S sequence so far, V vocabulary, N new tokens.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch

INSTALL_HINT = "pip install 'detok[lm]'"


def require_transformers() -> Any:
    """The `transformers` module, imported on first use; an ImportError with the install line when missing."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"this model needs the `transformers` package: {INSTALL_HINT}") from e
    return transformers


def swiglu_hidden(width: int, multiple: int = 8) -> int:
    """LLaMA's SwiGLU hidden size: int(8/3 * width) rounded up to a multiple of `multiple`."""
    hidden = int(8 * width / 3)
    return -(-hidden // multiple) * multiple


def build_llama(
    vocab_size: int,
    width: int,
    depth: int,
    heads: int,
    intermediate: int,
    max_positions: int,
    rope_theta: float = 10000.0,
) -> Any:
    """A randomly initialised `LlamaForCausalLM` (float32, SDPA attention, untied input / output embeddings).

    vocab_size: ids the model reads and predicts; width / depth / heads: hidden size, layers, attention
    heads (no grouped-query attention: as many key-value heads as heads); intermediate: the SwiGLU hidden
    size (0 = `swiglu_hidden(width)`); max_positions: the longest sequence (prompt + generated).
    """
    tf = require_transformers()
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads {heads}")
    config = tf.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=intermediate or swiglu_hidden(width),
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rope_theta=rope_theta,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        dtype=torch.float32,
        bos_token_id=None,  # the vocabulary is ours: no text special tokens
        eos_token_id=None,
        pad_token_id=None,
    )
    return tf.LlamaForCausalLM(config).to(torch.float32)


def load_llama(path: str | Path) -> Any:
    """A causal Llama from a local folder in the transformers layout (config.json + weights); never downloads."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no Llama model folder at {folder}: put a transformers-layout folder there (config.json and "
            f"model.safetensors, as written by `model.save_pretrained`); detok never downloads weights"
        )
    tf = require_transformers()
    return tf.LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True)


@functools.cache
def _guided_logits_class() -> type:
    """`GuidedLogits`, defined on first use as a subclass of transformers' `LogitsProcessor`."""
    require_transformers()
    from transformers.generation.logits_process import LogitsProcessor

    class GuidedLogits(LogitsProcessor):
        """Classifier-free guidance on logits of a batch laid out [conditional; unconditional]: (2B, V) -> (B, V).

        Returns uncond + scale * (cond - uncond): scale 1 is the conditional model, 0 the unconditional one.
        """

        def __init__(self, scale: float) -> None:
            self.scale = float(scale)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            """input_ids (2B, S) (unused), scores (2B, V) -> guided scores (B, V)."""
            del input_ids
            if scores.shape[0] % 2:
                raise ValueError(f"guidance needs a batch [cond; uncond] of even size, got {scores.shape[0]} rows")
            cond, uncond = scores.chunk(2, dim=0)  # 2 x (B, V)
            return uncond + self.scale * (cond - uncond)

    GuidedLogits.__module__, GuidedLogits.__qualname__ = __name__, "GuidedLogits"
    return GuidedLogits


def __getattr__(name: str) -> Any:
    """`GuidedLogits` is built lazily (it subclasses a transformers class; this module must import without it)."""
    if name == "GuidedLogits":
        return _guided_logits_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _forward_names(cls: type) -> tuple[str, str | None]:
    """(name of the cache keyword, name of the keep-last-logits keyword or None) of `cls.forward`.

    transformers 5.x calls the cache `cache` (`past_key_values` is a deprecated alias) and keeps the last
    logits with `logits_to_keep`; 4.x spells them `past_key_values` and `num_logits_to_keep`.
    """
    params = inspect.signature(cls.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


def _last_logits(model: Any, ids: torch.Tensor, cache: Any, use_cache: bool) -> tuple[torch.Tensor, Any]:
    """Next-token logits (R, V) float32 after ids (R, n) and the model's cache object (None without a cache)."""
    cache_name, keep = _forward_names(type(model))
    kwargs: dict[str, Any] = {"use_cache": use_cache}
    if use_cache and cache is not None:
        kwargs[cache_name] = cache
    if keep is not None:
        kwargs[keep] = 1  # the LM head on the last position only
    out = model(input_ids=ids, **kwargs)
    new_cache = None
    if use_cache:  # 5.x: `cache`; 4.x: `past_key_values`
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
    return out.logits[:, -1].float(), new_cache  # (R, V)


def _warpers(temperature: float, top_k: int, top_p: float) -> list[Any]:
    """transformers' temperature, top-k and top-p warpers, in `generate`'s order (the ones that apply)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers: list[Any] = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


@torch.no_grad()
def sample_tokens(
    model: Any,
    prompt: torch.Tensor,
    n_new: int,
    *,
    uncond_prompt: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_range: tuple[int, int] | None = None,
    rng: torch.Generator | None = None,
    use_cache: bool = True,
    progress: bool = False,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Continue prompts (B, P) by n_new sampled ids -> (B, N) long (N = n_new); axis 0 is the prompt.

    cfg_scale != 1 runs the batch [prompt; uncond_prompt] (2B, P) and guides the logits with `GuidedLogits`;
    both halves are then fed the same drawn id. vocab_range (lo, hi) restricts the draw to ids in [lo, hi)
    (other logits -inf). temperature / top_k / top_p are transformers' warpers (top_k 0 and top_p 1 = off);
    temperature 0 is greedy argmax (no random draw). Draws use `torch.multinomial(..., generator=rng)`.
    use_cache feeds one id per step with the model's KV cache; False recomputes the whole sequence each step
    (same ids, a reference). return_logits: also the (B, N, V) logits each draw was made from (guided and
    range-restricted, before the warpers).
    """
    if prompt.ndim != 2 or prompt.dtype != torch.long:
        raise ValueError(f"prompt must be long ids (B, P), got {prompt.dtype} {tuple(prompt.shape)}")
    guided = cfg_scale != 1.0
    if guided:
        if uncond_prompt is None or uncond_prompt.shape != prompt.shape:
            raise ValueError(f"cfg_scale {cfg_scale} needs an uncond_prompt of the prompt's shape "
                             f"{tuple(prompt.shape)}, got {None if uncond_prompt is None else tuple(uncond_prompt.shape)}")
        seq = torch.cat([prompt, uncond_prompt.to(prompt)])  # (2B, P): [cond; uncond]
    else:
        seq = prompt  # (B, P)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    guide = _guided_logits_class()(cfg_scale) if guided else None
    warpers = _warpers(temperature, top_k, top_p) if temperature > 0 else []
    batch = prompt.shape[0]
    vocab_mask = None

    steps: Any = range(n_new)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="tokens")
    cache, feed = None, seq  # feed: what the model has not seen yet (R, n)
    drawn, seen = [], []
    for _ in steps:
        if use_cache:
            logits, cache = _last_logits(model, feed, cache, True)  # (R, V)
        else:
            logits, _ = _last_logits(model, seq, None, False)  # (R, V)
        if guide is not None:
            logits = guide(seq, logits)  # (B, V)
        if vocab_range is not None:
            if vocab_mask is None:
                lo, hi = vocab_range
                if not 0 <= lo < hi <= logits.shape[-1]:
                    raise ValueError(f"vocab_range {vocab_range} must satisfy 0 <= lo < hi <= {logits.shape[-1]}")
                ids = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
                vocab_mask = (ids < lo) | (ids >= hi)  # (V,): True = never drawn
            logits = logits.masked_fill(vocab_mask, float("-inf"))  # (B, V)
        if return_logits:
            seen.append(logits)
        if temperature == 0:
            token = logits.argmax(dim=-1)  # (B,)
        else:
            scores = logits
            for warp in warpers:
                scores = warp(seq[:batch], scores)  # (B, V)
            probs = scores.softmax(dim=-1)  # (B, V)
            token = torch.multinomial(probs, 1, generator=rng)[:, 0]  # (B,)
        drawn.append(token)
        feed = (torch.cat([token, token]) if guided else token)[:, None]  # (R, 1): both halves get the id
        seq = torch.cat([seq, feed], dim=1)  # (R, S + 1)
    out = torch.stack(drawn, dim=1) if drawn else prompt.new_zeros(batch, 0)  # (B, N)
    if return_logits:
        return out, torch.stack(seen, dim=1) if seen else prompt.new_zeros(batch, 0, 0).float()  # (B, N, V)
    return out
