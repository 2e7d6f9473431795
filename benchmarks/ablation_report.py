"""Tables and plots of the l-DeTok ablation from docs/results/ablation.json (written by benchmarks/ablation.py).

    python benchmarks/ablation_report.py            # -> docs/results/ablation.md, ablation_fid.png, ablation_recon_vs_gen.png
                                                    #    and, for protocol v2 rows, ablation_v2.png

Protocol v1 rows with several seeds are reported as mean +- sample standard deviation (and n). Protocol v2 rows
(several generator seeds per tokenizer) get their own section: mean +- standard error over generator seeds, the
mechanism endpoints of ablation_secondary.json, and the decision rule of docs/RESULTS.md applied to joint vs
baseline. The tables are pasted into docs/RESULTS.md, whose verdicts cite them.
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
    lines.append(f"Tokenizer {meta.get('default_tok_steps', meta.get('tok_steps'))} steps (unless marked @steps) at "
                 f"{meta.get('image_size', 32)} px, latent {latent_shape(meta)}; generators {meta.get('gen_steps')} "
                 f"steps each; {fid_phrase(ev)} samples at the best scale; rFID / PSNR on {ev.get('recon_images')} "
                 "val images.")
    return "\n".join(lines) + "\n"


def latent_shape(meta: dict) -> str:
    grid = int(meta.get("image_size", 32)) // 4  # patch 4
    return f"{grid}x{grid}x{meta.get('latent_dim')}"


def fid_phrase(ev: dict) -> str:
    return (f"FID: {ev.get('feature_net')} features, CFG search over {ev.get('cfg_scales')} with "
            f"{ev.get('n_search')} samples, final {ev.get('n_final')}")


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


def v2_name(r: dict) -> str:
    """A v2 row's run name, the key of ablation_secondary.json (as ablation.py's fill_secondary writes it)."""
    return f"{r['dataset']}/{r['variant']}-s{r['seed']}-t{r['tok_steps']}"


def seeds_of(r: dict, gen: str) -> list[dict]:
    cell = r["generators"].get(gen)
    return [] if cell is None else cell.get("seeds", [cell])


def mean_se(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.fmean(values):.{digits}f} ± {se:.{digits}f}"


def beats(a: list[float], b: list[float]) -> bool:
    """The decision rule's test: a is lower than b in every seed (paired by seed order) and the mean difference
    exceeds 2 standard errors of the difference."""
    if not a or len(a) != len(b) or any(x >= y for x, y in zip(a, b)):
        return False
    if len(a) == 1:
        return True
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return statistics.fmean(b) - statistics.fmean(a) > 2 * se


def verdict(rows: list[dict], secondary: dict, gen: str, data: str) -> str:
    """docs/RESULTS.md's decision rule for joint vs baseline: 'reproduces' (primary endpoint), 'mechanism only'
    (the secondary ones: excess FID and latent FD, every seed, > 2 standard errors), or 'does not reproduce'."""
    by = {r["variant"]: r for r in rows if r["dataset"] == data}
    if "joint" not in by or "baseline" not in by:
        return "–"
    j, b = by["joint"], by["baseline"]
    if beats([c["fid"] for c in seeds_of(j, gen)], [c["fid"] for c in seeds_of(b, gen)]):
        return "reproduces"
    sj, sb = secondary.get(v2_name(j), {}).get("cells", {}), secondary.get(v2_name(b), {}).get("cells", {})
    mine = [k for k in sj if k.startswith(gen)]
    if not mine or sorted(mine) != sorted(k for k in sb if k.startswith(gen)):
        return "does not reproduce on the primary endpoint; secondary endpoints not computed"
    won = [key for key in ("excess_fid", "latent_fd")
           if beats([sj[k][key] for k in sorted(mine)], [sb[k][key] for k in sorted(mine)])]
    return f"mechanism only ({', '.join(won)})" if won else "does not reproduce"


def v2_markdown(rows: list[dict], secondary: dict, meta: dict) -> str:
    """Protocol v2: one row per tokenizer variant, reconstruction before / after decoder fine-tuning, each
    generator's FID over seeds, and the mechanism endpoints; then the decision rule per dataset and generator."""
    gens = generator_names(rows)
    lines = []
    for data in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"### {data} (protocol v2)", "",
                  "| tokenizer | γ | M | PSNR before → after FT | rFID | "
                  + " | ".join(f"{g.upper()} FID (± se) | {g.upper()} class acc. | {g.upper()} excess FID | "
                               f"{g.upper()} latent FD" for g in gens)
                  + " | perfect-generator FID | iFID |", "|" + "---|" * (7 + 4 * len(gens))]
        for r in (r for r in rows if r["dataset"] == data):
            sec = secondary.get(v2_name(r), {})
            cells = []
            for g in gens:
                seeds = seeds_of(r, g)
                sc = [v for k, v in sorted(sec.get("cells", {}).items()) if k.startswith(g)]
                accs = [c["class_accuracy"] for c in seeds if c.get("class_accuracy") is not None]
                cells += [mean_se([c["fid"] for c in seeds]), mean_se(accs, 3),
                          mean_se([c["excess_fid"] for c in sc if "excess_fid" in c]),
                          mean_se([c["latent_fd"] for c in sc])]
            stage1 = r.get("stage1", {})
            name = r["variant"] + (f" (anneal {r['corruption_anneal']:.2g})" if r.get("corruption_anneal") else "") + (
                " (decoder told tau)" if r.get("decoder_noise_cond") else "")
            floor = [f"{sec[k]:.2f}" if k in sec else "–" for k in ("perfect_fid", "ifid")]
            lines.append(f"| {name} | {r['gamma']:g} | {r['mask_ratio']:g} | "
                         f"{stage1.get('psnr', float('nan')):.2f} → {r['psnr']:.2f} | {r['rfid']:.1f} | "
                         + " | ".join(cells) + " | " + " | ".join(floor) + " |")
        lines += ["", "| decision rule (joint vs baseline) | " + " | ".join(g.upper() for g in gens) + " |",
                  "|" + "---|" * (1 + len(gens)),
                  f"| {data} | " + " | ".join(verdict(rows, secondary, g, data) for g in gens) + " |", ""]
    lines.append(f"Protocol v2: tokenizers {rows[0]['tok_steps']} steps at {meta.get('image_size')} px, latent "
                 f"{latent_shape(meta)}, KL scaled by latent size, decoder fine-tuned on clean latents for "
                 f"{rows[0].get('decoder_ft_steps')} steps; generators {meta.get('gen_steps')} steps, seeds "
                 f"{meta.get('gen_seeds')}; {fid_phrase(meta.get('eval', {}))}; mean ± standard "
                 "error over generator seeds. Excess FID = FID − perfect-generator FID (decoded posterior samples of "
                 "val images); latent FD: generated vs real normalised latents; iFID: decoded nearest-neighbour "
                 "midpoints.")
    return "\n".join(lines) + "\n"


def plot_v2(rows: list[dict], secondary: dict, path: Path) -> None:
    """Per variant: each generator's FID, its latent Frechet distance (per seed, as dots over the mean bar), and
    the decoder's floor (perfect-generator FID, iFID): what the noise buys in modelability and costs in decoding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = generator_names(rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    names = [r["variant"] for r in rows]
    xs = range(len(rows))
    width = 0.8 / max(1, len(gens))
    for j, g in enumerate(gens):
        off = (j - (len(gens) - 1) / 2) * width
        for ax, values in ((axes[0], [[c["fid"] for c in seeds_of(r, g)] for r in rows]),
                           (axes[1], [[v["latent_fd"] for k, v in sorted(secondary.get(v2_name(r), {})
                                                                          .get("cells", {}).items()) if k.startswith(g)]
                                      for r in rows])):
            ax.bar([x + off for x in xs], [statistics.fmean(v) if v else float("nan") for v in values], width,
                   alpha=0.6, label=g.upper())
            for x, v in zip(xs, values):
                ax.plot([x + off] * len(v), v, "k.", ms=4)
    for k, key in enumerate(("perfect_fid", "ifid")):
        axes[2].bar([x + (k - 0.5) * 0.4 for x in xs], [secondary.get(v2_name(r), {}).get(key, float("nan"))
                                                         for r in rows], 0.4,
                    label={"perfect_fid": "perfect generator (decoded posterior samples)", "ifid": "iFID"}[key])
    titles = ("generation FID (primary; lower is better)", "latent Fréchet distance, generated vs real",
              "decoder floor: FID of decoded latents")
    for ax, title in zip(axes, titles):
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    save_figure(fig, path)


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
    if not data.get("rows"):
        raise SystemExit(f"{src} has no rows yet: run benchmarks/ablation.py first")
    rows = [r for r in data["rows"] if r.get("protocol", "v1") == "v1"]
    v2 = [r for r in data["rows"] if r.get("protocol") == "v2"]
    for r in rows:
        r["label"] = label(r, data.get("default_tok_steps", 1000))
    md, written, text = src.with_suffix(".md"), [src.with_suffix(".md").name], ""
    if rows:
        robust_path = src.with_name(src.stem + "_robustness.json")
        robust = json.loads(robust_path.read_text()) if robust_path.is_file() else {}
        text += (markdown(rows, data) + "\n#### Claims\n\n" + claims(rows)
                 + "\n#### Reconstruction vs generation (Spearman ρ over tokenizers; +1 = better recon, better FID)\n\n"
                 + rank_correlations(rows)
                 + "\n#### Decoding perturbed latents (val images; σ in latent std units)\n\n" + robustness_table(rows, robust))
        plot_fid(rows, src.with_name(src.stem + "_fid.png"))
        plot_recon_vs_gen(rows, src.with_name(src.stem + "_recon_vs_gen.png"))
        written += [f"{src.stem}_fid.png", f"{src.stem}_recon_vs_gen.png"]
    if v2:
        sec_path = src.with_name(src.stem + "_secondary.json")
        secondary = json.loads(sec_path.read_text()) if sec_path.is_file() else {}
        text += ("\n" if text else "") + v2_markdown(v2, secondary, data.get("protocols", {}).get("v2", {}))
        plot_v2(v2, secondary, src.with_name(src.stem + "_v2.png"))
        written.append(f"{src.stem}_v2.png")
    md.write_text(text)
    print(text)
    print("-> " + ", ".join(written))


if __name__ == "__main__":
    main()
