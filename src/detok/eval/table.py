"""The tokenizer x generator table: read finished bench cells (`cell.json`) and write table.{json,md,png}.

Cells are produced by `detok.runs.bench` (train each generator family on a tokenizer's latents under one
budget, score it); this module only reads and presents them, columns in the registry's family order:

    OUT/<tokenizer>/<generator>/cell.json   one finished cell
    OUT/table.{json,md,png}                 every finished cell of OUT
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detok import registry
from detok.io import write_json, write_text

CELL_FILE = "cell.json"


def generator_order() -> list[str]:
    """Family names in the registry's order: the table's columns."""
    return [f.name for f in registry.families("generator")]


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a generation evaluation (best scale) with the recipe that produced them."""
    best = metrics["best"]
    out = {"fid": best["fid"], "cfg": best["cfg"], "n": best["n"], "feature_net": metrics["recipe"]["feature_net"]}
    for key in ("class_accuracy", "precision", "recall", "inception_score"):
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


def collect(out: Path) -> list[dict[str, Any]]:
    """Every finished cell under OUT, sorted by (tokenizer, generator)."""
    rows = [json.loads(p.read_text()) | {"cell": str(p.parent)} for p in sorted(out.glob(f"*/*/{CELL_FILE}"))]
    order = generator_order()
    rank = {g: i for i, g in enumerate(order)}
    return sorted(rows, key=lambda r: (r["tokenizer_name"], rank.get(r["generator"], len(order)), r["generator"]))


def write_table(out: Path) -> dict[str, Path]:
    """OUT/table.json (every cell), table.md (FID, tokenizer rows x generator columns) and table.png."""
    rows = collect(out)
    names = sorted({r["tokenizer_name"] for r in rows})
    present = {r["generator"] for r in rows}
    gens = [g for g in generator_order() if g in present] + sorted(present - set(generator_order()))
    cell = {(r["tokenizer_name"], r["generator"]): r for r in rows}
    write_json(out / "table.json", {"rows": rows})
    lines = ["| tokenizer | " + " | ".join(gens) + " |", "|---|" + "---|" * len(gens)]
    for name in names:
        vals = []
        for g in gens:
            r = cell.get((name, g))
            vals.append("" if r is None else f"{r['fid']:.2f} (cfg {r['cfg']:g})")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    nets = sorted({r["feature_net"] for r in rows})
    ns = sorted({r["n"] for r in rows})
    lines += ["", f"FID at the best guidance scale (in brackets); feature net: {', '.join(nets)}; "
              f"samples: {', '.join(map(str, ns))}. Recipes per cell in table.json."]
    write_text(out / "table.md", "\n".join(lines) + "\n")
    png = out / "table.png"
    _bar_plot(names, gens, cell, png)
    return {"json": out / "table.json", "md": out / "table.md", "png": png}


def _bar_plot(names: list[str], gens: list[str], cell: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(gens) * max(1, len(names)) ** 0.5 + 2), 3.2))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j, g in enumerate(gens) if (name, g) in cell]
        ys = [cell[(name, g)]["fid"] for g in gens if (name, g) in cell]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(gens))], gens)
    ax.set_ylabel("FID (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title("tokenizer x generator")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
