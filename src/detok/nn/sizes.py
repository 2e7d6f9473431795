"""Named transformer sizes (width, depth, heads): the one table every model family reads its presets from.

`SIZES` is upstream's SIZE_DICT (l-DeTok's tokenizer, DiT, SiT, LightningDiT and RasterAR / RandomAR all
build from it), plus the CPU-sized `tiny` (tests) and `mini` (quickstart). The row order is part of the
contract: `detok.tokenizers.upstream` names a checkpoint's size by the first row matching its shapes.

`MAR_SIZES` is MAR's own table (LTH14/mar): its depth counts the blocks of EACH of the encoder and the
decoder, and its large / huge rows differ from SIZES (MAR-L 16 + 16 blocks, not 24; MAR-H 20 + 20, not 32),
so the two are kept apart rather than merged under one name.
"""

from __future__ import annotations

Size = tuple[int, int, int]  # (width, depth, heads)

SIZES: dict[str, Size] = {
    "tiny": (64, 2, 2),
    "mini": (128, 4, 2),
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "xl": (1152, 28, 16),
    "huge": (1280, 32, 16),
}

# (width, depth of the encoder and of the decoder, heads) of MAR (arXiv 2406.11838) and a CPU-sized tiny
MAR_SIZES: dict[str, Size] = {
    "tiny": (64, 2, 2),
    "base": (768, 12, 12),
    "large": (1024, 16, 16),
    "huge": (1280, 20, 16),
}

# preset-name suffix -> size name, as in dit_b, detok_bl, mar_h; each family registers the suffixes it has
SIZE_SUFFIXES: dict[str, str] = {
    "tiny": "tiny",
    "mini": "mini",
    "s": "small",
    "b": "base",
    "l": "large",
    "xl": "xl",
    "h": "huge",
}


def size_of(name: str, table: dict[str, Size] = SIZES) -> Size:
    """(width, depth, heads) of a named size of `table`; a ValueError lists the known names."""
    if name not in table:
        raise ValueError(f"unknown size {name!r}; choose one of {', '.join(table)}")
    return table[name]
