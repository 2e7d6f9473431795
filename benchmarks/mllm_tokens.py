"""DDT-LLaMA's multimodal claim at CPU scale: the same multimodal LM and budget over DDT tokens vs spatial VQ tokens.

For each tokenizer run given (`--ddt RUN`, `--vq RUN`) and each seed in `--seeds`, train the multimodal LM of
`detok train mllm` with the `quickstart_mllm` recipe (`--preset`, plus `key=value` overrides for every run) and
score it with `detok evaluate` (the shapes checker): GenEval-style text-to-image (held-out and seen pairs),
caption accuracy, edit success, and the checker on the tokenizer's own reconstructions (the ceiling its tokens
allow). Only the image tokens differ between the two rows; the seed changes the LM's initialisation and data
order (train.seed), not the data.

The grid is resumable: every (tokenizer, seed) run lives in WORK/<name>_s<seed>; a finished one (its metrics.json
holds "mllm") is read, not re-run; an interrupted one resumes from its last checkpoint. `--only ddt` / `--only vq`
runs one row, so two processes at 1 thread each can share a 2-core machine; the last one to finish (or a
re-run without `--only`, which re-trains nothing) writes the JSON with every finished run.

    detok quickstart --with ddt                                            # runs/quickstart/ddt (K 32, V 1024)
    detok train tokenizer --model vqvit_mini --config quickstart_ddt --out runs/vq        # 8 x 8 raster VQ
    python benchmarks/mllm_tokens.py --ddt runs/quickstart/ddt --vq runs/vq --work runs/mllm_tokens
    python benchmarks/mllm_tokens.py ... --quick --out /tmp/m.json          # smoke test: 4 steps, 64 scenes

Writes docs/results/mllm_tokens.json (or --out) and prints the table: mean and spread over seeds per tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "results" / "mllm_tokens.json"
QUICK = ["train.max_steps=4", "data.size=64", "train.global_batch_size=8", "sample_prompts=0"]
QUICK_EVAL = {"held_out_per_pair": 1, "seen_prompts": 4, "images_per_prompt": 1, "caption_images": 8,
              "edit_pairs": 8, "batch_size": 8}  # fmt: skip
ATTRIBUTES = ("shape", "colour", "count", "size", "position", "background")


def run_one(name: str, tokenizer: str, seed: int, work: Path, preset: str, overrides: list[str],
            quick: bool) -> dict[str, Any]:
    """Train (or resume, or read) one (tokenizer, seed) run and return its scores."""
    from detok.eval.mllm import MLLMEvalConfig
    from detok.io import merge_json
    from detok.runs.mllm import evaluate_mllm_run, mllm_run_config, train_mllm

    run_dir = work / f"{name}_s{seed}"
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and "mllm" in json.loads(metrics.read_text()):
        print(f"[mllm_tokens] {run_dir}: finished, read", flush=True)
        return read_run(name, seed, run_dir)
    cfg = mllm_run_config([preset], [f"tokenizer={tokenizer}", f"train.out_dir={run_dir}", f"train.seed={seed}",
                                     "train.progress=false", *(QUICK if quick else []), *overrides])  # fmt: skip
    resume = (run_dir / "checkpoints" / "latest").is_file()
    t0 = time.perf_counter()
    train_mllm(cfg, resume=resume)
    train_s = time.perf_counter() - t0
    ecfg = MLLMEvalConfig(**QUICK_EVAL) if quick else MLLMEvalConfig()
    evaluate_mllm_run(run_dir, ecfg, progress=False)
    merge_json(metrics, {"mllm_tokens": {"wall_seconds_train": train_s, "resumed": resume}})
    return read_run(name, seed, run_dir)


def read_run(name: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """The scores of one finished run from its metrics.json and summary of training."""
    data = json.loads((run_dir / "metrics.json").read_text())
    m = data["mllm"]
    t2i, cap, ed = m["text_to_image"], m["captions"], m["edit"]
    return {
        "tokenizer": name, "seed": seed, "run": str(run_dir),
        "geneval": t2i["overall"], "geneval_held_out": t2i["groups"]["held_out"]["overall"],
        "geneval_seen": t2i["groups"]["seen"]["overall"], "geneval_attributes": t2i["attributes"],
        "caption_overall": cap["overall"], "caption_attributes": cap["attributes"],
        "edit_success": ed["success"], "edit_asked_changed": ed["asked_changed"], "edit_others_kept": ed["others_kept"],
        "edit_oracle": ed["oracle"], "through_tokenizer": m.get("through_tokenizer", {}),
        "checker_usable": m["checker_usable"], "eval_seconds": m["seconds"],
        "train_seconds": data.get("mllm_tokens", {}).get("wall_seconds_train"),
    }  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mu = sum(values) / len(values)
    sd = math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mu, sd


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tokenizer: mean and std over seeds of each headline score and per-attribute accuracy."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["tokenizer"] for r in rows):
        mine = [r for r in rows if r["tokenizer"] == name]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for key in ("geneval", "geneval_held_out", "geneval_seen", "caption_overall", "edit_success",
                    "edit_asked_changed", "edit_others_kept"):  # fmt: skip
            entry[key] = mean_std([r[key] for r in mine])
        entry["through_tokenizer"] = mean_std([r["through_tokenizer"].get("overall", float("nan")) for r in mine])
        for group in ("geneval_attributes", "caption_attributes"):
            entry[group] = {a: mean_std([r[group][a] for r in mine]) for a in ATTRIBUTES}
        entry["through_tokenizer_attributes"] = {
            a: mean_std([r["through_tokenizer"].get("attributes", {}).get(a, float("nan")) for r in mine])
            for a in ATTRIBUTES}  # fmt: skip
        out[name] = entry
    return out


def table(summary: dict[str, Any]) -> str:
    """The headline scores, mean +- std over seeds, one row per tokenizer."""
    cols = [("GenEval", "geneval"), ("held-out", "geneval_held_out"), ("seen", "geneval_seen"),
            ("captions", "caption_overall"), ("edits", "edit_success"), ("via tokens", "through_tokenizer")]
    lines = [f"{'tokenizer':<10}{'seeds':>7}" + "".join(f"{c:>16}" for c, _ in cols)]
    for name, e in summary.items():
        lines.append(f"{name:<10}{len(e['seeds']):>7}" + "".join(
            f"{e[k][0]:>9.3f} ± {e[k][1]:.3f}" for _, k in cols))
    lines.append("")
    lines.append(f"{'per attribute (GenEval / captions / via tokens)':<50}" + "".join(f"{a:>12}" for a in ATTRIBUTES))
    for name, e in summary.items():
        for label, group in (("GenEval", "geneval_attributes"), ("captions", "caption_attributes"),
                             ("via tokens", "through_tokenizer_attributes")):
            lines.append(f"  {name} {label:<44}" + "".join(f"{e[group][a][0]:>12.3f}" for a in ATTRIBUTES))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ddt", required=True, help="a DDT tokenizer run (ddt_*)")
    p.add_argument("--vq", required=True, help="a spatial VQ tokenizer run (vqvit_*)")
    p.add_argument("--seeds", default="0,1", help="comma-separated train seeds (default 0,1)")
    p.add_argument("--work", required=True, help="folder of the runs (kept: the grid resumes from it)")
    p.add_argument("--only", choices=["ddt", "vq"], help="run one tokenizer's row only")
    p.add_argument("--preset", default="quickstart_mllm", help="the mllm recipe (default quickstart_mllm)")
    p.add_argument("--quick", action="store_true", help="smoke test: 4 steps, 64 scenes, a tiny evaluation")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON written (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="mllm run overrides for every run")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"mllm_tokens: --seeds must be comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    names = [args.only] if args.only else ["ddt", "vq"]
    for name in names:
        if not Path(getattr(args, name)).is_dir():
            print(f"mllm_tokens: --{name} {getattr(args, name)} is not a run folder", file=sys.stderr)
            return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for name in names:
        for seed in seeds:
            run_one(name, getattr(args, name), seed, work, args.preset, args.overrides, args.quick)
    rows = [read_run(n, s, work / f"{n}_s{s}") for n in ("ddt", "vq") for s in seeds
            if (work / f"{n}_s{s}" / "metrics.json").is_file()]  # fmt: skip
    summary = summarise(rows)
    from detok.io import write_json

    write_json(args.out, {
        "command": "python benchmarks/mllm_tokens.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "tokenizers": {"ddt": args.ddt, "vq": args.vq}, "preset": args.preset, "overrides": args.overrides,
        "seeds": seeds, "runs": rows, "summary": summary, "seconds_this_call": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)},
    })  # fmt: skip
    print(table(summary), flush=True)
    print(f"-> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
