"""The l-DeTok ablation at CPU scale, with detok's own commands: does latent denoising make generators better?

For each dataset and tokenizer variant (and seed): train a tokenizer with the quickstart recipe and only the
corruption changed, score its reconstructions, then train each generator on its latents under one budget
(`detok bench tokenizer`'s cells: same recipe, same steps) and score them with the domain-classifier FID
after a CFG search. Everything is cached on disk: finished tokenizers, evaluations and cells are skipped and
unfinished runs resume, so the grid can be stopped and continued.

    python benchmarks/ablation.py                            # main grid, both datasets (writes docs/results/)
    python benchmarks/ablation.py --grid all                 # + gamma and mask sweeps
    python benchmarks/ablation.py --quick --out /tmp/abl     # smoke test: a few steps per run

Outputs: OUT/<dataset>/<variant>-s<seed>/ (tokenizer run), OUT/<dataset>/bench/ (generator cells and the
tokenizer x generator table), docs/results/ablation.json (one row per dataset x variant x seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"fashion-mnist": "quickstart_fashion", "shapes": "quickstart_shapes"}
# name -> (noise, gamma, M): the paper's ablation rows, then its gamma and mask sweeps
MAIN = {
    "baseline": ("none", 0.0, 0.0),
    "mask": ("none", 0.0, 0.7),
    "noise": ("interpolative", 3.0, 0.0),
    "joint": ("interpolative", 3.0, 0.7),
    "additive": ("additive", 3.0, 0.0),
}
GAMMA = {f"gamma{g:g}": ("interpolative" if g else "none", g, 0.0) for g in (1.0, 2.0, 4.0)}
MASK = {f"mask{m:g}": ("interpolative", 3.0, m) for m in (0.3, 0.5, 0.9)}


def variants(grid: str) -> dict[str, tuple[str, float, float]]:
    out = dict(MAIN)
    if grid in ("gamma", "all"):
        out.update(GAMMA)
    if grid in ("mask", "all"):
        out.update(MASK)
    return out


def train_tokenizer(data: str, name: str, spec: tuple[str, float, float], seed: int, run: Path, steps: int) -> dict:
    """Train (or resume, or skip when finished) one tokenizer variant; its summary."""
    from detok.cli.train import tokenizer_config
    from detok.cli.train import train_tokenizer as train

    done = run / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    noise, gamma, mask = spec
    overrides = [f"train.out_dir={run}", f"train.seed={seed}", f"tokenizer.noise={noise}", f"tokenizer.gamma={gamma}",
                 f"tokenizer.mask_ratio={mask}", "train.progress=false"]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    cfg = tokenizer_config(None, [PRESETS[data]], overrides)
    resume = (run / "checkpoints" / "latest").exists()
    return train(cfg, resume=resume, recon_images=256)


def tokenizer_metrics(run: Path, ecfg) -> dict:
    """rFID / PSNR / SSIM of a tokenizer (cached in RUN/metrics.json)."""
    from detok.eval.protocol import _merge_metrics, evaluate_tokenizer, tokenizer_data_config
    from detok.tokenizers.load import load_tokenizer

    path = run / "metrics.json"
    if path.is_file() and "reconstruction" in json.loads(path.read_text()):
        return json.loads(path.read_text())["reconstruction"]
    tok = load_tokenizer(run)
    res = evaluate_tokenizer(tok, tokenizer_data_config(str(run)), ecfg, progress=False)
    _merge_metrics(path, {"reconstruction": res})
    return res


def main(argv: list[str] | None = None) -> None:
    from detok.cli.common import resolve_config
    from detok.eval.protocol import EvalConfig, tokenizer_data_config
    from detok.eval.table import BenchConfig, prepare_latents, run_cell, write_table
    from detok.tokenizers.load import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist,shapes")
    p.add_argument("--grid", default="main", choices=["main", "gamma", "mask", "all"])
    p.add_argument("--generators", default="sit,mar")
    p.add_argument("--seeds", default="0", help="seeds of every variant (comma list)")
    p.add_argument("--extra-seeds", default="1", help="more seeds for baseline and joint (mean and spread)")
    p.add_argument("--tok-steps", type=int, default=0, help="tokenizer steps (0 = the quickstart recipe's)")
    p.add_argument("--gen-steps", type=int, default=250, help="steps of every generator")
    p.add_argument("--eval", dest="eval_overrides", action="append", default=[], metavar="key=value")
    p.add_argument("--out", default=str(REPO / "runs" / "ablation"))
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "ablation.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 tokenizer / 2 generator steps, 64 samples")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    evals = ["n_search=512", "n_final=2048", "cfg_scales=[1.0,1.5,2.0,3.0]", *args.eval_overrides]
    if args.quick:
        args.tok_steps, args.gen_steps = args.tok_steps or 3, 2
        evals += ["n_search=64", "n_final=64", "cfg_scales=[1.0,2.0]", "recon_images=64", "domain_steps=20"]
        args.results = str(out / "ablation.json")
    ecfg = resolve_config(EvalConfig, ["eval_small"], evals)
    gens = [g for g in args.generators.split(",") if g]
    rows, t0 = [], time.perf_counter()
    for data in args.data.split(","):
        for name, spec in variants(args.grid).items():
            seeds = [int(s) for s in args.seeds.split(",")]
            if name in ("baseline", "joint"):
                seeds += [int(s) for s in args.extra_seeds.split(",") if s and int(s) not in seeds]
            for seed in seeds:
                row_name = f"{name}-s{seed}"
                run = out / data / row_name
                print(f"[ablation] {data} {row_name}: tokenizer", flush=True)
                tok_summary = train_tokenizer(data, name, spec, seed, run, args.tok_steps)
                rec = tokenizer_metrics(run, ecfg)
                tok = load_tokenizer(run)
                data_cfg = tokenizer_data_config(str(run))
                bench = BenchConfig(generators=gens, steps=args.gen_steps, seed=seed, eval=ecfg,
                                    overrides=["train.progress=false", "sample.per_class=4"])
                cache = prepare_latents(tok, str(run), data_cfg, out / data / "bench" / row_name, torch.device("cpu"),
                                        progress=False)
                cells = {}
                for g in gens:
                    print(f"[ablation] {data} {row_name}: {g}", flush=True)
                    cell = run_cell(tok, str(run), cache, g, out / data / "bench" / row_name / g, bench, data_cfg,
                                    row=row_name)
                    cells[g] = {"fid": cell["fid"], "cfg": cell["cfg"], "feature_net": cell["feature_net"],
                                "n": cell["n"], "class_accuracy": cell.get("class_accuracy"),
                                "fid_cfg1": cell.get("fid_cfg1")}
                write_table(out / data / "bench")
                noise, gamma, mask = spec
                rows.append({"dataset": data, "variant": name, "gamma": gamma, "mask_ratio": mask,
                             "noise": noise if gamma else "none", "seed": seed, "rfid": rec["rfid"],
                             "psnr": rec["psnr"], "ssim": rec["ssim"], "tokenizer_seconds": tok_summary.get("seconds"),
                             "generators": cells})
                Path(args.results).parent.mkdir(parents=True, exist_ok=True)
                Path(args.results).write_text(json.dumps({"rows": rows, "eval": vars(ecfg), "gen_steps": args.gen_steps,
                                                          "tok_steps": args.tok_steps or "recipe"}, indent=2, default=str))
    print(f"[ablation] {len(rows)} rows in {time.perf_counter() - t0:.0f} s -> {args.results}", flush=True)


if __name__ == "__main__":
    main()
