"""One vocabulary for text and image tokens: a real text tokenizer, task markers, then the image codes.

DDT-LLaMA extends a language model's vocabulary by the visual codes of its tokenizer; this module is
that extension, laid out as three disjoint id ranges of one LM vocabulary:

    [0, T)                  text ids: the text tokenizer's own vocabulary (its special tokens included)
    [T, T + M)              markers, in MARKERS order: <eos> <pad> <boi> <eoi> <t2i> <i2t> <edit> <txt> <img>
                            (<eos> first, so that [0, T + 1) is "text or end": the ids a caption is drawn from)
    [T + M, T + M + V)      image codes: LM id = T + M + code id, code ids in the image tokenizer's order
                            (AR order for DDT: coarse first)

The text tokenizer is a `tokenizers` fast tokenizer, saved with the model as `text_tokenizer.json`:

- from scratch (the CPU case): `train_text_tokenizer(texts)` learns a word-level vocabulary of the
  training captions and instructions (lower-cased, split on whitespace and punctuation). Every word is one
  token, so a `shapes` caption is one token per attribute word; a word it has never seen is refused by
  `encode_text` with an UnknownWordsError naming it (the documented behaviour: no silent [UNK]).
- pretrained (the GPU case): `load_text_tokenizer(folder)` reads the base model's own `tokenizer.json`
  from a local transformers-layout folder; it covers any text, so nothing is refused.

    vocab = MultimodalVocab(train_text_tokenizer(captions), codebook_size=1024)
    ids = vocab.encode_text("two red circles")          # list of text ids in [0, T)
    vocab.decode_text(ids)                               # 'two red circles'
    lm = vocab.image_to_lm(codes)                        # (B, K) code ids -> LM ids in [T + M, T + M + V)
    vocab.save(folder); MultimodalVocab.load(folder)     # text_tokenizer.json + vocab.json
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from detok.io import atomic_write

MARKERS = ("<eos>", "<pad>", "<boi>", "<eoi>", "<t2i>", "<i2t>", "<edit>", "<txt>", "<img>")
UNK = "[UNK]"  # the from-scratch tokenizer's unknown-word token (never produced by encode_text)
TEXT_TOKENIZER_FILE = "text_tokenizer.json"
VOCAB_FILE = "vocab.json"
FORMAT_VERSION = 1


class UnknownWordsError(ValueError):
    """Text with words the from-scratch text tokenizer has never seen."""


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - a dependency of transformers, installed with detok[lm]
        raise ImportError("the multimodal model needs the `tokenizers` package: pip install 'detok[lm]'") from e
    return tokenizers


def train_text_tokenizer(texts: Iterable[str], min_frequency: int = 1) -> Any:
    """A word-level `tokenizers.Tokenizer` learnt from `texts`: lower-cased words and punctuation, [UNK] for
    the rest (ids sorted by frequency, then alphabetically; [UNK] is id 0)."""
    tk = _require_tokenizers()
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = tk.Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces (no sub-word prefixes here)
    trainer = trainers.WordLevelTrainer(special_tokens=[UNK], min_frequency=min_frequency, show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer


def load_text_tokenizer(folder: str | Path) -> Any:
    """The fast tokenizer of a local model folder (its `tokenizer.json`); never downloads."""
    tk = _require_tokenizers()
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no text tokenizer at {path}: the pretrained model folder must hold the base "
                                "model's tokenizer.json (as written by save_pretrained); detok never downloads")
    return tk.Tokenizer.from_file(str(path))


class MultimodalVocab:
    """The LM vocabulary: T text ids, then the MARKERS, then V image codes (module docstring)."""

    def __init__(self, text_tokenizer: Any, codebook_size: int, kind: str = "scratch") -> None:
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        if kind not in ("scratch", "pretrained"):
            raise ValueError(f"kind must be 'scratch' or 'pretrained', got {kind!r}")
        self.text = text_tokenizer
        self.kind = kind
        self.text_size = int(text_tokenizer.get_vocab_size(with_added_tokens=True))  # T
        self.codebook_size = int(codebook_size)  # V
        self.image_offset = self.text_size + len(MARKERS)  # T + M
        self.size = self.image_offset + self.codebook_size  # T + M + V
        self.unk_id = text_tokenizer.token_to_id(UNK) if kind == "scratch" else None

    # -- markers --------------------------------------------------------------------------------
    def marker(self, name: str) -> int:
        """The LM id of a marker, e.g. marker('<boi>')."""
        if name not in MARKERS:
            raise KeyError(f"unknown marker {name!r}; the markers are {', '.join(MARKERS)}")
        return self.text_size + MARKERS.index(name)

    @property
    def text_range(self) -> tuple[int, int]:
        """[lo, hi) of the ids a caption is drawn from: the text ids and <eos>."""
        return 0, self.text_size + 1

    @property
    def image_range(self) -> tuple[int, int]:
        """[lo, hi) of the image-code LM ids."""
        return self.image_offset, self.size

    @property
    def pad(self) -> int:
        return self.marker("<pad>")

    @property
    def eos(self) -> int:
        return self.marker("<eos>")

    @property
    def boi(self) -> int:
        return self.marker("<boi>")

    @property
    def eoi(self) -> int:
        return self.marker("<eoi>")

    # -- text -----------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Text -> its text ids in [0, T). The from-scratch tokenizer refuses words it does not know."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        enc = self.text.encode(text, add_special_tokens=False)
        if self.unk_id is not None and self.unk_id in enc.ids:
            unknown = sorted({tok for tok, i in zip(enc.tokens, enc.ids) if i == self.unk_id}
                             | {text[a:b].lower() for (a, b), i in zip(enc.offsets, enc.ids) if i == self.unk_id})
            unknown = [w for w in unknown if w != UNK]
            raise UnknownWordsError(f"unknown word(s) {', '.join(repr(w) for w in unknown)} in {text!r}: the "
                                    f"from-scratch text tokenizer knows only the {self.text_size - 1} words of its "
                                    "training captions and instructions")
        return list(enc.ids)

    def decode_text(self, ids: Sequence[int] | torch.Tensor) -> str:
        """LM ids -> text: stops at the first <eos>; markers, pads and image ids are skipped."""
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        text_ids = []
        for i in ids:
            if i == self.eos:
                break
            if 0 <= i < self.text_size and i != self.unk_id:
                text_ids.append(int(i))
        return self.text.decode(text_ids, skip_special_tokens=True)

    def text_words(self) -> list[str]:
        """The text vocabulary's tokens in id order."""
        vocab = self.text.get_vocab(with_added_tokens=True)
        return [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]

    # -- images ---------------------------------------------------------------------------------
    def image_to_lm(self, codes: torch.Tensor) -> torch.Tensor:
        """Image code ids (any shape) in [0, V) -> LM ids in [T + M, T + M + V) (same shape)."""
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise ValueError(f"image codes must be integer ids, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"image codes must lie in [0, {self.codebook_size}) (the codebook size), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return codes.long() + self.image_offset

    def lm_to_image(self, ids: torch.Tensor) -> torch.Tensor:
        """LM ids (any shape) of image codes -> code ids in [0, V); anything else is a ValueError."""
        if ids.numel() and not bool(self.is_image(ids).all()):
            bad = ids[~self.is_image(ids)]
            raise ValueError(f"{bad.numel()} id(s) are not image codes (e.g. {int(bad.flatten()[0])}); image codes "
                             f"are LM ids [{self.image_offset}, {self.size})")
        return ids.long() - self.image_offset

    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool mask (same shape): the LM ids that are image codes."""
        return (ids >= self.image_offset) & (ids < self.size)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool mask (same shape): the LM ids that are text ids."""
        return (ids >= 0) & (ids < self.text_size)

    # -- persistence ----------------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        """What the LM ids mean: sizes, offsets, markers (saved as vocab.json, part of the fingerprint)."""
        return {"format": FORMAT_VERSION, "kind": self.kind, "text_size": self.text_size,
                "markers": list(MARKERS), "image_offset": self.image_offset, "codebook_size": self.codebook_size,
                "size": self.size}

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the layout and the text tokenizer's JSON."""
        blob = json.dumps(self.layout(), sort_keys=True) + self.text.to_str()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        """Write text_tokenizer.json and vocab.json into `folder` (atomically); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / TEXT_TOKENIZER_FILE, lambda tmp: self.text.save(str(tmp)))
        atomic_write(folder / VOCAB_FILE,
                     lambda tmp: Path(tmp).write_text(json.dumps(self.layout(), indent=2) + "\n"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> MultimodalVocab:
        """The vocabulary saved in `folder`; a ValueError if the saved layout does not match the tokenizer."""
        tk = _require_tokenizers()
        folder = Path(folder)
        for name in (TEXT_TOKENIZER_FILE, VOCAB_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} has no {name}: not a detok multimodal run folder")
        layout = json.loads((folder / VOCAB_FILE).read_text())
        vocab = cls(tk.Tokenizer.from_file(str(folder / TEXT_TOKENIZER_FILE)), layout["codebook_size"],
                    layout.get("kind", "scratch"))
        if vocab.layout() != layout:
            raise ValueError(f"{folder / VOCAB_FILE} describes a vocabulary of {layout.get('size')} ids, but "
                             f"{TEXT_TOKENIZER_FILE} gives {vocab.size}: the two files are from different runs")
        return vocab
