"""Tables and plots of the l-DeTok ablation from docs/results/ablation.json (written by benchmarks/ablation.py).

    python benchmarks/ablation_report.py            # -> docs/results/ablation.md, ablation_fid.png, ablation_recon_vs_gen.png

Rows with several seeds are reported as mean +- sample standard deviation (and n); the tables are pasted into
docs/RESULTS.md, whose verdicts cite them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def label(r: dict, default_steps: int) -> str:
    """A row's tokenizer name: its variant, with its tokenizer steps when they are not the grid's."""
    steps = r.get("tok_steps") or default_steps
    return r["variant"] if steps == default_steps else f"{r['variant']} @{steps}"


def group(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(dataset, label) -> its rows (one per seed), in file order."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["dataset"], r["label"])].append(r)
    return out


def stat(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std or 0 for one value, n)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def fmt(values: list[float], digits: int = 1) -> str:
    mean, std, n = stat(values)
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def generator_names(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [g for g in r["generators"] if g not in names]
    return names


def markdown(rows: list[dict], meta: dict) -> str:
    gens = generator_names(rows)
    groups = group(rows)
    lines = []
    for data in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"### {data}", "",
                  "| tokenizer | noise | γ | M | rFID ↓ | PSNR ↑ | " + " | ".join(f"{g.upper()} FID ↓ (cfg)" for g in gens)
                  + " |", "|" + "---|" * (6 + len(gens))]
        for (d, variant), rs in groups.items():
            if d != data:
                continue
            r0 = rs[0]
            cells = []
            for g in gens:
                fids = [r["generators"][g]["fid"] for r in rs if g in r["generators"]]
                cfgs = sorted({r["generators"][g]["cfg"] for r in rs if g in r["generators"]})
                cells.append(f"{fmt(fids)} ({'/'.join(f'{c:g}' for c in cfgs)})" if fids else "–")
            lines.append(f"| {variant} | {r0['noise']} | {r0['gamma']:g} | {r0['mask_ratio']:g} | "
                         f"{fmt([r['rfid'] for r in rs], 2)} | {fmt([r['psnr'] for r in rs], 2)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    ev = meta.get("eval", {})
    grid = int(meta.get("image_size", 32)) // 4  # patch 4
    lines.append(f"Tokenizer {meta.get('default_tok_steps', meta.get('tok_steps'))} steps (unless marked @steps) at {meta.get('image_size', 32)} px, latent "
                 f"{grid}x{grid}x{meta.get('latent_dim')}; generators "
                 f"{meta.get('gen_steps')} steps each; FID: {ev.get('feature_net')} features, CFG search over "
                 f"{ev.get('cfg_scales')} with {ev.get('n_search')} samples, final {ev.get('n_final')} samples at the "
                 f"best scale; rFID / PSNR on {ev.get('recon_images')} val images.")
    return "\n".join(lines) + "\n"


# claim -> (variant, compared with): each the paper's ablation (reference-ldetok.md section 10.3)
CLAIMS = {
    "latent noise helps": ("noise", "baseline"),
    "masking helps": ("mask", "baseline"),
    "joint (noise + mask) helps": ("joint", "baseline"),
    "interpolative beats additive noise": ("noise", "additive"),
    "joint helps, 3x the tokenizer budget": ("joint @3000", "baseline @3000"),
}


def mean_fid(groups: dict, data: str, variant: str, gen: str) -> float | None:
    fids = [r["generators"][gen]["fid"] for r in groups.get((data, variant), []) if gen in r["generators"]]
    return statistics.fmean(fids) if fids else None


def claims(rows: list[dict]) -> str:
    """Relative FID change of each claim's variant against its comparison, per dataset and generator."""
    gens, groups = generator_names(rows), group(rows)
    lines = ["| claim | dataset | " + " | ".join(f"{g.upper()} FID: from → to (Δ%)" for g in gens) + " |",
             "|" + "---|" * (2 + len(gens))]
    for claim, (a, b) in CLAIMS.items():
        for data in dict.fromkeys(r["dataset"] for r in rows):
            cells = []
            for g in gens:
                fa, fb = mean_fid(groups, data, a, g), mean_fid(groups, data, b, g)
                cells.append("–" if fa is None or fb is None else f"{fb:.1f} → {fa:.1f} ({100 * (fa - fb) / fb:+.0f}%)")
            if any(c != "–" for c in cells):
                lines.append(f"| {claim} ({b} → {a}) | {data} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rank_correlations(rows: list[dict]) -> str:
    """Spearman rank correlation of rFID and of -PSNR with each generator's FID over a dataset's tokenizers."""
    from scipy.stats import spearmanr

    gens = generator_names(rows)
    lines = ["| dataset | tokenizers | " + " | ".join(f"{g.upper()}: ρ(rFID, FID) / ρ(−PSNR, FID)" for g in gens) + " |",
             "|" + "---|" * (2 + len(gens))]
    for data in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == data]
        cells = []
        for g in gens:
            pts = [(r["rfid"], -r["psnr"], r["generators"][g]["fid"]) for r in rs if g in r["generators"]]
            if len(pts) < 3:
                cells.append("–")
                continue
            rho_r = spearmanr([p[0] for p in pts], [p[2] for p in pts])[0]
            rho_p = spearmanr([p[1] for p in pts], [p[2] for p in pts])[0]
            cells.append(f"{rho_r:+.2f} / {rho_p:+.2f}")
        lines.append(f"| {data} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def robustness_table(rows: list[dict], robust: dict) -> str:
    """PSNR / domain FID of decode(z + sigma * eps) against the clean images, per tokenizer run."""
    if not robust:
        return ""
    sigmas = sorted({k for v in robust.values() for k in v}, key=float)
    lines = ["| tokenizer | " + " | ".join(f"σ={s}: PSNR / FID" for s in sigmas) + " | PSNR drop at σ=1 |",
             "|" + "---|" * (2 + len(sigmas))]
    for name, res in robust.items():
        cells = [f"{res[s]['psnr']:.1f} / {res[s]['fid']:.1f}" if s in res else "–" for s in sigmas]
        drop = res["0"]["psnr"] - res["1"]["psnr"] if "0" in res and "1" in res else float("nan")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {drop:.1f} dB |")
    return "\n".join(lines) + "\n"


def per_dataset_figure(rows: list[dict], width: float, height: float):
    """One panel per dataset: (figure, [(axes, dataset)])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(width * len(datasets), height), squeeze=False)
    return fig, list(zip(axes[0], datasets))


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fid(rows: list[dict], path: Path) -> None:
    gens, groups = generator_names(rows), group(rows)
    fig, panels = per_dataset_figure(rows, 5.5, 3.6)
    for ax, data in panels:
        variants = [v for (d, v) in groups if d == data]
        width = 0.8 / max(1, len(gens))
        for j, g in enumerate(gens):
            means, errs = [], []
            for v in variants:
                fids = [r["generators"][g]["fid"] for r in groups[(data, v)] if g in r["generators"]]
                m, s, _ = stat(fids) if fids else (float("nan"), 0.0, 0)
                means.append(m)
                errs.append(s)
            xs = [i + (j - (len(gens) - 1) / 2) * width for i in range(len(variants))]
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=g.upper())
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
        ax.set_ylabel("domain FID (lower is better)")
        ax.set_title(data)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_recon_vs_gen(rows: list[dict], path: Path) -> None:
    gens = generator_names(rows)
    fig, panels = per_dataset_figure(rows, 5.0, 3.8)
    markers = "os^Dv<>"
    for ax, data in panels:
        for j, g in enumerate(gens):
            pts = [(r["rfid"], r["generators"][g]["fid"], f"{r['label']}-s{r['seed']}") for r in rows
                   if r["dataset"] == data and g in r["generators"]]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[j % len(markers)], label=g.upper())
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel("rFID (reconstruction)")
        ax.set_ylabel("generation FID")
        ax.set_title(data)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "ablation.json"))
    args = p.parse_args(argv)
    src = Path(args.results)
    data = json.loads(src.read_text())
    rows = data["rows"]
    for r in rows:
        r["label"] = label(r, data.get("default_tok_steps", 1000))
    if not rows:
        raise SystemExit(f"{src} has no rows yet: run benchmarks/ablation.py first")
    robust_path = src.with_name(src.stem + "_robustness.json")
    robust = json.loads(robust_path.read_text()) if robust_path.is_file() else {}
    md = src.with_suffix(".md")
    md.write_text(markdown(rows, data) + "\n#### Claims\n\n" + claims(rows)
                  + "\n#### Reconstruction vs generation (Spearman ρ over tokenizers; +1 = better recon, better FID)\n\n"
                  + rank_correlations(rows)
                  + "\n#### Decoding perturbed latents (val images; σ in latent std units)\n\n" + robustness_table(rows, robust))
    plot_fid(rows, src.with_name(src.stem + "_fid.png"))
    plot_recon_vs_gen(rows, src.with_name(src.stem + "_recon_vs_gen.png"))
    print(md.read_text())
    print(f"-> {md}, {src.stem}_fid.png, {src.stem}_recon_vs_gen.png")


if __name__ == "__main__":
    main()
