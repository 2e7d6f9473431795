"""Evaluation runs: reconstruction metrics for tokenizers, the CFG search + generation metrics for generators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detok import dist
from detok.config import from_dict
from detok.data.build import DataConfig
from detok.eval.protocol import EvalConfig, evaluate_generator_run, evaluate_tokenizer, tokenizer_data_config
from detok.io import Checkpoint, merge_json
from detok.tokenizers.external import is_diffusers_folder
from detok.tokenizers.load import load_tokenizer


def run_kind(run: str | Path) -> str:
    """"tokenizer" / "generator" for a detok run folder; "tokenizer" for files, specs and diffusers folders."""
    if Path(run).is_dir() and not is_diffusers_folder(run):
        return Checkpoint(run).kind
    return "tokenizer"  # an upstream .pth, a diffusers AutoencoderKL folder or an external autoencoder spec


def _image_size(tok) -> int:
    return int(getattr(getattr(tok, "cfg", None), "image_size", 256))


def _lpips_or_none(device):
    """LPIPS-VGG16 when its weights are found locally (see `detok.losses.perceptual`), else None."""
    from detok.losses.perceptual import LPIPS

    try:
        return LPIPS(pretrained=True).to(device).eval()
    except FileNotFoundError as e:
        print(f"[detok evaluate] LPIPS skipped: {str(e).splitlines()[0]}", flush=True)
        return None


def evaluate(
    run: str | Path, ecfg: EvalConfig | None = None, *, data: str = "", root: str = "", split: str = "val",
    out: str | Path = "", device: str = "auto",
) -> dict[str, Any]:
    """Score a run: a generator's CFG search and final FID / IS / P-R, or a tokenizer's rFID / PSNR / SSIM / LPIPS.

    `data` / `root` replace the dataset the run trained on; results merge into OUT/metrics.json (default:
    the run folder). Returns the summary the CLI prints.
    """
    ecfg = ecfg or EvalConfig()
    info = dist.init(device)
    try:
        kind = run_kind(run)
        fallback = None
        if data:
            fallback = from_dict(DataConfig, {"name": data, "root": root, "num_workers": 0}, prefix="data.")
        if kind == "generator":
            if fallback is not None:  # at the image size of the run's tokenizer
                fallback.image_size = _image_size(load_tokenizer(Checkpoint(run).config["tokenizer"]))
            res = evaluate_generator_run(run, ecfg, out_dir=out or None, data_cfg=fallback)
            return {"run": str(run), "kind": kind, "best": res["best"], "cfg1": res.get("cfg1", {}),
                    "search": {f"cfg {r['cfg']:g}": r["fid"] for r in res["search"]},
                    "reference_points": res["reference_points"], "feature_net": res["recipe"]["feature_net"],
                    "seconds": res["seconds"]}
        if kind != "tokenizer":
            raise ValueError(f"{run} is a {kind} checkpoint; evaluate takes tokenizers and generators")
        tok = load_tokenizer(run, use_ema=ecfg.ema).to(info.device)
        data_cfg = tokenizer_data_config(run, fallback)
        if fallback is not None:
            data_cfg = fallback
            data_cfg.image_size = _image_size(tok)
        res = evaluate_tokenizer(tok, data_cfg, ecfg, split=split, progress=info.is_main,
                                 lpips_net=_lpips_or_none(info.device))
        res["recipe"]["weights"] = "ema" if ecfg.ema else "raw"
        out_dir = Path(out or (run if Path(run).is_dir() else "."))
        if info.is_main:
            merge_json(out_dir / "metrics.json", {"reconstruction": res})
        # rFID compares reconstructions with the same originals (real-vs-real would be 0): not comparable with
        # a generator's FID against the train split, which has a floor above 0 at any finite n
        return {"run": str(run), "kind": kind, **{k: v for k, v in res.items() if k != "recipe"},
                "rfid_reference": res["recipe"]["reference"],
                "feature_net": res["recipe"]["feature_net"], "metrics": str(out_dir / "metrics.json")}
    finally:
        dist.shutdown()
