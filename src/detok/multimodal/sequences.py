"""The token sequences of the five training tasks, their loss masks, and the generation prompts.

With P the text slot (`text_slot`, the longest prompt or caption in words), K image tokens, n <= P the
text's ids and `pad` / `eos` / ... the markers of `MultimodalVocab`:

    t2i    <t2i> pad*(P-n) text <boi> img_1 .. img_K <eoi>            loss on img, <eoi>
    i2t    <i2t> <boi> img_1 .. img_K <eoi> text <eos>                 loss on text, <eos>
    image  <img> <boi> img_1 .. img_K <eoi>                            loss on img, <eoi>
    text   <txt> text <eos>                                            loss on text, <eos>
    edit   <edit> pad*(P-n) instr <boi> src_1..src_K <eoi> <boi> tgt_1..tgt_K <eoi>    loss on tgt, <eoi>

A prompt's text is left-padded into a fixed slot of P ids, so every t2i (and every edit) prompt has the same
length: prompts of different lengths batch without attention masks, and the KV cache holds one layout. The
unconditional prompt of classifier-free guidance is the empty text (P pads); training drops the text to it
with probability `text_dropout` (in t2i and edit). Sequences of a batch are right-padded with <pad> to the
longest; padding is never a loss target, and in a causal LM it cannot change the positions before it.

"loss on x" means: the positions whose *next* id is x carry the cross-entropy; `loss_mask[s]` is True where
id s is a target (so position s - 1 predicts it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detok.multimodal.vocab import MultimodalVocab

TASKS = ("t2i", "i2t", "image", "text", "edit")


class PromptTooLongError(ValueError):
    """A prompt, caption or instruction longer than the model's text slot."""


def fit_text(text_ids: Sequence[int], slot: int, what: str = "text") -> list[int]:
    """The ids if they fit the slot, else a PromptTooLongError naming the lengths."""
    ids = list(text_ids)
    if len(ids) > slot:
        raise PromptTooLongError(f"the {what} has {len(ids)} tokens; this model's text slot holds at most {slot} "
                                 "(mllm.text_slot)")
    return ids


def _slot(vocab: MultimodalVocab, text_ids: Sequence[int] | None, slot: int, what: str) -> list[int]:
    """Text ids left-padded to the slot: [pad] * (P - n) + text (None or empty: P pads, the null prompt)."""
    ids = fit_text(text_ids or [], slot, what)
    return [vocab.pad] * (slot - len(ids)) + ids


def _image(vocab: MultimodalVocab, codes: torch.Tensor) -> list[int]:
    """<boi> + the K LM ids of an image's codes (K,) + <eoi>."""
    if codes.ndim != 1:
        raise ValueError(f"one image's codes must be (K,), got shape {tuple(codes.shape)}")
    return [vocab.boi, *vocab.image_to_lm(codes).tolist(), vocab.eoi]


def build(
    task: str,
    vocab: MultimodalVocab,
    slot: int,
    *,
    text: Sequence[int] | None = None,
    image: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sequence: (ids (S,) long, loss_mask (S,) bool) of `task` (module docstring).

    text: text ids (the caption; the instruction for edit; None in t2i / edit = the null prompt);
    image: the image's codes (K,) (the source image for edit); target: the edited image's codes (K,).
    """
    if task == "t2i":
        prompt = [vocab.marker("<t2i>"), *_slot(vocab, text, slot, "prompt")]
        body = _image(vocab, image)
    elif task == "i2t":
        prompt = [vocab.marker("<i2t>"), *_image(vocab, image)]
        body = [*fit_text(text or [], slot, "caption"), vocab.eos]
    elif task == "image":
        prompt = [vocab.marker("<img>"), vocab.boi]
        body = _image(vocab, image)[1:]
    elif task == "text":
        prompt = [vocab.marker("<txt>")]
        body = [*fit_text(text or [], slot, "text"), vocab.eos]
    elif task == "edit":
        if target is None:
            raise ValueError("an edit sequence needs the target image's codes")
        prompt = [vocab.marker("<edit>"), *_slot(vocab, text, slot, "instruction"), *_image(vocab, image)]
        body = _image(vocab, target)
    else:
        raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")
    ids = torch.tensor(prompt + body, dtype=torch.long)  # (S,)
    mask = torch.zeros(len(ids), dtype=torch.bool)  # (S,)
    first = len(prompt) + (1 if task in ("t2i", "edit") else 0)  # the <boi> of the generated image is prompt
    mask[first:] = True
    return ids, mask


def pack(rows: Sequence[tuple[torch.Tensor, torch.Tensor]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences to the longest: (ids (B, S) long, loss_mask (B, S) bool; padding is no target)."""
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)  # (B, S)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)  # (B, S)
    for b, (seq, m) in enumerate(rows):
        ids[b, : len(seq)], mask[b, : len(m)] = seq, m
    return ids, mask


def max_length(task: str, slot: int, num_tokens: int) -> int:
    """The longest sequence of `task` for text slot P and K image tokens."""
    k = num_tokens
    return {"t2i": slot + k + 3, "i2t": k + slot + 4, "image": k + 3, "text": slot + 2, "edit": slot + 2 * k + 5}[task]


# -- generation prompts (B rows of equal length) -------------------------------------------------------------


def t2i_prompts(vocab: MultimodalVocab, texts: Sequence[Sequence[int] | None], slot: int) -> torch.Tensor:
    """(B, P + 2): <t2i> slot <boi>, ready for K image ids (None or [] = the unconditional prompt)."""
    return torch.tensor([[vocab.marker("<t2i>"), *_slot(vocab, t, slot, "prompt"), vocab.boi] for t in texts],
                        dtype=torch.long)


def i2t_prompts(vocab: MultimodalVocab, images: torch.Tensor) -> torch.Tensor:
    """(B, K + 3): <i2t> <boi> image <eoi>, ready for the caption; images (B, K) codes."""
    return torch.tensor([[vocab.marker("<i2t>"), *_image(vocab, codes)] for codes in images], dtype=torch.long)


def edit_prompts(
    vocab: MultimodalVocab, instructions: Sequence[Sequence[int] | None], sources: torch.Tensor, slot: int
) -> torch.Tensor:
    """(B, P + K + 4): <edit> slot <boi> source <eoi> <boi>, ready for the K ids of the edited image."""
    if len(instructions) != len(sources):
        raise ValueError(f"{len(instructions)} instructions for {len(sources)} source images")
    return torch.tensor([[vocab.marker("<edit>"), *_slot(vocab, t, slot, "instruction"), *_image(vocab, codes),
                          vocab.boi] for t, codes in zip(instructions, sources)], dtype=torch.long)
