"""The tokenizer x generator table: read finished bench cells (`cell.json`) and write table.{json,md,png}.

Cells are produced by `detok.runs.bench` (train each generator family on a tokenizer's latents under one
budget, score it); this module only reads and presents them, columns in the registry's family order:

    OUT/<tokenizer>/<generator>/cell.json   one finished cell
    OUT/<tokenizer>/<generator>/na.json     a pairing that cannot run: the family models the other kind of tokens
                                            (discrete ids vs continuous latents); shown as "n/a (...)"
    OUT/table.{json,md,png}                 every finished cell and n/a mark of OUT

Each row shows what its tokenizer gives the generators: the latent shape (C x h x w) of a continuous tokenizer,
or K, the codebook size and "tokens: discrete" of a discrete one (`latents_of`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detok import registry
from detok.io import write_json, write_text

CELL_FILE = "cell.json"
NA_FILE = "na.json"


def generator_order() -> list[str]:
    """Family names in the registry's order: the table's columns."""
    return [f.name for f in registry.families("generator")]


def latents_of(tok: Any) -> dict[str, Any]:
    """What a tokenizer gives the generators: {"tokens": "continuous", "latent_shape"} or, for token ids,
    {"tokens": "discrete", "num_tokens" (K), "codebook_size", "latent_shape" ([K])}."""
    shape = [int(v) for v in tok.latent_shape]
    if getattr(tok, "discrete", False):
        return {"tokens": "discrete", "num_tokens": int(tok.num_tokens), "codebook_size": int(tok.codebook_size),
                "latent_shape": shape}
    return {"tokens": "continuous", "latent_shape": shape}


def latents_text(info: dict[str, Any] | None) -> str:
    """The table's "latents" column: "4x8x8" (C x h x w), or "K 16, codebook 64, tokens: discrete"."""
    if not info:
        return ""  # a cell written before cells recorded their latents
    if info.get("tokens") == "discrete":
        return f"K {info['num_tokens']}, codebook {info['codebook_size']}, tokens: discrete"
    return "x".join(str(v) for v in info["latent_shape"])


TOKEN_KINDS = {"discrete": "discrete token ids", "continuous": "continuous latents"}


def na_mark(tokens: str) -> str:
    """The mark of a pairing that cannot run, naming what the tokenizer gives: "n/a (discrete tokens)"."""
    return f"n/a ({'discrete tokens' if tokens == 'discrete' else 'continuous latents'})"


def cell_text(cell: dict[str, Any]) -> str:
    """One line per cell for summaries: "FID 12.345 (cfg 2)", or the n/a mark."""
    if cell.get("status") == "n/a":
        return cell["reason"]
    return f"FID {cell['fid']:.3f} (cfg {cell['cfg']:g})"


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a generation evaluation (best scale) with the recipe that produced them."""
    best = metrics["best"]
    out = {"fid": best["fid"], "cfg": best["cfg"], "n": best["n"], "feature_net": metrics["recipe"]["feature_net"]}
    for key in ("class_accuracy", "precision", "recall", "inception_score", "classifier_score"):
        if key in best:
            out[key] = best[key]
    if "cfg1" in metrics:
        out["fid_cfg1"] = metrics["cfg1"]["fid"]
    out["search"] = [{"cfg": r["cfg"], "fid": r["fid"], "n": r["n"]} for r in metrics.get("search", [])]
    out["recipe"] = metrics["recipe"]
    return out


# ---------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = generator_order()
    rank = {g: i for i, g in enumerate(order)}
    return sorted(rows, key=lambda r: (r["tokenizer_name"], rank.get(r["generator"], len(order)), r["generator"]))


def collect(out: Path, file: str = CELL_FILE) -> list[dict[str, Any]]:
    """Every finished cell under OUT (or, file=NA_FILE, every n/a mark), sorted by (tokenizer, generator)."""
    return _sorted([json.loads(p.read_text()) | {"cell": str(p.parent)} for p in sorted(out.glob(f"*/*/{file}"))])


def write_table(out: Path) -> dict[str, Path]:
    """OUT/table.json (every cell, n/a mark and row's latents), table.md (FID, tokenizer rows x generator columns)
    and table.png."""
    rows = collect(out)
    cell = {(r["tokenizer_name"], r["generator"]): r for r in rows}
    na = [m for m in collect(out, NA_FILE) if (m["tokenizer_name"], m["generator"]) not in cell]  # a stale mark loses
    marks = {(m["tokenizer_name"], m["generator"]): m for m in na}
    names = sorted({r["tokenizer_name"] for r in rows + na})
    present = {r["generator"] for r in rows + na}
    gens = [g for g in generator_order() if g in present] + sorted(present - set(generator_order()))
    latents: dict[str, dict[str, Any] | None] = {name: None for name in names}
    for r in rows + na:
        latents[r["tokenizer_name"]] = latents[r["tokenizer_name"]] or r.get("latents")
    write_json(out / "table.json", {"rows": rows, "not_applicable": na, "tokenizers": {
        name: {"latents": info, "shown": latents_text(info)} for name, info in latents.items()}})
    lines = ["| tokenizer | latents | " + " | ".join(gens) + " |", "|---|---|" + "---|" * len(gens)]
    for name in names:
        vals = []
        for g in gens:
            r, m = cell.get((name, g)), marks.get((name, g))
            vals.append(f"{r['fid']:.2f} (cfg {r['cfg']:g})" if r is not None else m["reason"] if m is not None else "")
        lines.append(f"| {name} | {latents_text(latents[name])} | " + " | ".join(vals) + " |")
    nets = sorted({r["feature_net"] for r in rows})
    ns = sorted({r["n"] for r in rows})
    lines += ["", f"FID at the best guidance scale (in brackets); feature net: {', '.join(nets) or '-'}; "
              f"samples: {', '.join(map(str, ns)) or '-'}. Recipes per cell in table.json. Latents: C x h x w of "
              "a continuous tokenizer; K ids per image and the codebook size of a discrete one."]
    if na:
        ids = [f.name for f in registry.families("generator") if f.extra.get("tokens") == "discrete"]
        lines.append(f"n/a: the generator family models the other kind of tokens ({', '.join(ids) or 'none'}: "
                     "discrete token ids; the others: continuous latents), so the pairing cannot be trained.")
    write_text(out / "table.md", "\n".join(lines) + "\n")
    png = out / "table.png"
    _bar_plot(names, gens, cell, marks, {n: latents_text(i) for n, i in latents.items()}, png)
    return {"json": out / "table.json", "md": out / "table.md", "png": png}


def _bar_plot(names: list[str], gens: list[str], cell: dict, marks: dict, latents: dict[str, str],
              path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(gens) * max(1, len(names)) ** 0.5 + 2), 3.2))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j, g in enumerate(gens) if (name, g) in cell]
        ys = [cell[(name, g)]["fid"] for g in gens if (name, g) in cell]
        ax.bar(xs, ys, width=width, color=f"C{i}", label=f"{name} ({latents[name]})" if latents[name] else name)
        for j, g in enumerate(gens):
            if (name, g) in marks:  # no bar: the pairing cannot run
                ax.text(j + i * width, 0, " n/a", ha="center", va="bottom", fontsize=7, rotation=90, color=f"C{i}")
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(gens))], gens)
    ax.set_xlim(-width, len(gens) - 1 + width * len(names))  # the n/a marks too (autoscale sees bars only)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("FID (lower is better)")
    ax.legend(fontsize=7)
    ax.set_title("tokenizer x generator")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
