"""`detok evaluate RUN`: reconstruction metrics for tokenizers, generation metrics (CFG search) for generators."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from detok import dist
from detok.cli.common import add_config_args, print_summary, resolve_config


def add_parser(sub) -> None:
    from detok.eval.protocol import EvalConfig

    p = sub.add_parser(
        "evaluate",
        help="score a run: tokenizers -> rFID / PSNR / SSIM / LPIPS, generators -> CFG search + FID / IS / P / R",
    )
    p.add_argument("run", help="tokenizer or generator run / checkpoint folder, or an external tokenizer spec")
    p.add_argument("--data", default="", help="dataset (default: the one the tokenizer trained on)")
    p.add_argument("--root", default="", help="dataset folder (imagefolder / filelist / fashion-mnist)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="tokenizers: images reconstructed")
    p.add_argument("--ref-stats", default="", help="reference statistics: a .npz with mu / sigma (torch-fidelity, "
                   "MAR) or ADM's reference batch; default: the dataset's train split (cached)")
    p.add_argument("--out", default="", help="where metrics.json goes (default: the run folder)")
    p.add_argument("--device", default="auto")
    add_config_args(p, EvalConfig)
    p.set_defaults(func=main)


def _kind(run: str) -> str:
    from detok.io import Checkpoint
    from detok.tokenizers.external import is_diffusers_folder

    if Path(run).is_dir() and not is_diffusers_folder(run):
        return Checkpoint(run).kind
    return "tokenizer"  # an upstream .pth, a diffusers AutoencoderKL folder or an external autoencoder spec


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.config import from_dict
    from detok.data.build import DataConfig
    from detok.eval.protocol import (
        EvalConfig,
        evaluate_generator_run,
        evaluate_tokenizer,
        tokenizer_data_config,
    )
    from detok.io import merge_json
    from detok.tokenizers.load import load_tokenizer

    ecfg = resolve_config(EvalConfig, args.config, args.overrides)
    if args.ref_stats:
        ecfg.ref_stats = args.ref_stats
    info = dist.init(args.device)
    try:
        kind = _kind(args.run)
        fallback = None
        if args.data:
            fallback = from_dict(DataConfig, {"name": args.data, "root": args.root, "num_workers": 0}, prefix="data.")
        if kind == "generator":
            res = evaluate_generator_run(args.run, ecfg, out_dir=args.out or None,
                                         data_cfg=None if fallback is None else _sized(fallback, args.run))
            summary = {"run": args.run, "kind": kind, "best": res["best"], "cfg1": res.get("cfg1", {}),
                       "search": {f"cfg {r['cfg']:g}": r["fid"] for r in res["search"]},
                       "feature_net": res["recipe"]["feature_net"], "seconds": res["seconds"]}
        elif kind == "tokenizer":
            tok = load_tokenizer(args.run, use_ema=ecfg.ema).to(info.device)
            data_cfg = tokenizer_data_config(args.run, fallback)
            if fallback is not None:
                data_cfg = fallback
                data_cfg.image_size = _image_size(tok)
            res = evaluate_tokenizer(tok, data_cfg, ecfg, split=args.split, progress=info.is_main,
                                     lpips_net=_lpips_or_none(info.device))
            res["recipe"]["weights"] = "ema" if ecfg.ema else "raw"
            out = Path(args.out or (args.run if Path(args.run).is_dir() else "."))
            if info.is_main:
                merge_json(out / "metrics.json", {"reconstruction": res})
            summary = {"run": args.run, "kind": kind, **{k: v for k, v in res.items() if k != "recipe"},
                       "feature_net": res["recipe"]["feature_net"], "metrics": str(out / "metrics.json")}
        else:
            raise ValueError(f"{args.run} is a {kind} checkpoint; evaluate takes tokenizers and generators")
        if info.is_main:
            print_summary(f"detok evaluate ({kind})", summary)
        return summary
    finally:
        dist.shutdown()


def _image_size(tok) -> int:
    cfg = getattr(tok, "cfg", None)
    return int(getattr(cfg, "image_size", 256))


def _sized(data_cfg, run: str):
    """data_cfg at the image size of the generator run's tokenizer."""
    from detok.io import Checkpoint
    from detok.tokenizers.load import load_tokenizer

    tok = load_tokenizer(Checkpoint(run).config["tokenizer"])
    data_cfg.image_size = _image_size(tok)
    return data_cfg


def _lpips_or_none(device):
    """LPIPS-VGG16 when its weights are found locally (see `detok.losses.perceptual`), else None."""
    from detok.losses.perceptual import LPIPS

    try:
        return LPIPS(pretrained=True).to(device).eval()
    except FileNotFoundError as e:
        print(f"[detok evaluate] LPIPS skipped: {str(e).splitlines()[0]}", flush=True)
        return None
