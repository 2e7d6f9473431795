"""`detok evaluate RUN`: reconstruction metrics for tokenizers, generation metrics (CFG search) for generators."""

from __future__ import annotations

import argparse
from typing import Any

from detok.cli.common import add_config_args, print_summary

HELP = ("score a run: tokenizers -> rFID / PSNR / SSIM / LPIPS, generators -> CFG search + FID / IS / P / R, "
        "multimodal LMs -> GenEval-style score, caption accuracy, edit success (shapes checker)")


def add_parser(sub) -> None:
    from detok.eval.protocol import EvalConfig

    p = sub.add_parser(
        "evaluate",
        help=HELP,
    )
    p.add_argument("run", help="tokenizer or generator run / checkpoint folder, or an external tokenizer spec")
    p.add_argument("--data", default="", help="dataset (default: the one the tokenizer trained on)")
    p.add_argument("--root", default="", help="dataset folder (imagefolder / filelist / fashion-mnist)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="tokenizers: images reconstructed")
    p.add_argument("--ref-stats", default="", help="reference statistics: a .npz with mu / sigma (torch-fidelity, "
                   "MAR) or ADM's reference batch; default: the dataset's train split (cached)")
    p.add_argument("--out", default="", help="where metrics.json goes (default: the run folder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_config_args(p, EvalConfig, example="n_final=2000 cfg_scales=[1.0,2.0]")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok import dist
    from detok.config import resolve
    from detok.eval.protocol import EvalConfig
    from detok.runs.evaluate import evaluate, run_kind

    if run_kind(args.run) == "mllm":  # its own protocol and config (detok.eval.mllm.MLLMEvalConfig)
        from detok.eval.mllm import MLLMEvalConfig, print_mllm_table
        from detok.runs.mllm import evaluate_mllm_run

        result = evaluate_mllm_run(args.run, resolve(MLLMEvalConfig, args.config, args.overrides),
                                   out=args.out, device=args.device)
        print_mllm_table(result)
        return result
    ecfg = resolve(EvalConfig, args.config, args.overrides)
    if args.ref_stats:
        ecfg.ref_stats = args.ref_stats
    summary = evaluate(args.run, ecfg, data=args.data, root=args.root, split=args.split, out=args.out,
                       device=args.device)
    if dist.rank_world()[0] == 0:
        print_summary(f"detok evaluate ({summary['kind']})", summary)
    return summary
