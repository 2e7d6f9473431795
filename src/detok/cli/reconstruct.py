"""`detok reconstruct`: reconstruct held-out images with a tokenizer; grid PNG, PSNR and SSIM."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from detok.cli.common import print_summary, save_pairs_grid, write_json
from detok.config import from_dict
from detok.data import build_dataset, collate
from detok.data.build import DataConfig
from detok.dist import pick_device
from detok.eval.recon import ReconMetrics
from detok.tokenizers.base import Tokenizer
from detok.tokenizers.load import load_tokenizer, run_config


@torch.no_grad()
def reconstruct(
    tokenizer: Tokenizer,
    dataset: Dataset,
    out_dir: str | Path,
    device: torch.device,
    n: int = 256,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode (posterior mean) and decode the first `n` images; metrics on uint8-rounded images, a grid PNG."""
    tokenizer.eval().to(device)
    n = min(n, len(dataset)) if n > 0 else len(dataset)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate)
    metrics, first = ReconMetrics(), None
    t0 = time.perf_counter()
    for batch in tqdm(loader, desc="reconstruct", disable=not progress):
        x = batch["image"].to(device)
        recon = tokenizer.decode(tokenizer.encode(x))
        metrics.update(x, recon)
        if first is None:
            first = (x.cpu(), recon.cpu())
    out = metrics.compute()
    grid = save_pairs_grid(*first, Path(out_dir) / "reconstructions.png")
    return {**out, "grid": str(grid), "seconds": time.perf_counter() - t0}


def add_parser(sub) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct images: grid PNG, PSNR, SSIM")
    p.add_argument("tokenizer", help="detok run / checkpoint folder, or an upstream .pth")
    p.add_argument("--data", default="", help="dataset name (default: the one the tokenizer trained on)")
    p.add_argument("--root", default="", help="dataset folder (imagefolder / filelist / fashion-mnist)")
    p.add_argument("--file-list", default="", help="file list for --data filelist")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("-n", "--num-images", type=int, default=256, help="images to reconstruct (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--raw", action="store_true", help="use raw weights instead of EMA")
    p.add_argument("--out", default="", help="output folder (default: TOKENIZER/reconstruct)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=main)


def data_config_for(tokenizer, ckpt_config: dict, args) -> DataConfig:
    """The tokenizer's training data config, with command-line replacements and its image size."""
    data = dict(ckpt_config.get("data", {}))
    if args.data:
        data = {"name": args.data}
    if getattr(args, "root", ""):
        data["root"] = args.root
    if getattr(args, "file_list", ""):
        data["file_list"] = args.file_list
    data["image_size"] = tokenizer.cfg.image_size
    return from_dict(DataConfig, data, prefix="data.")


def main(args: argparse.Namespace) -> dict[str, Any]:

    tok = load_tokenizer(args.tokenizer, use_ema=not args.raw)
    ckpt_cfg = run_config(args.tokenizer)
    dataset = build_dataset(data_config_for(tok, ckpt_cfg, args), args.split)
    out_dir = Path(args.out or (Path(args.tokenizer) / "reconstruct" if Path(args.tokenizer).is_dir() else "reconstruct"))
    res = reconstruct(tok, dataset, out_dir, pick_device(args.device), args.num_images, args.batch_size)
    res.update(tokenizer=str(args.tokenizer), weights="raw" if args.raw else "ema", split=args.split)
    write_json(out_dir / "reconstruct.json", res)
    print_summary("detok reconstruct", res)
    return res
