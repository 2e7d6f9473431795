"""Sampling runs: class-balanced samples of a trained generator as ADM's `.npz` and a labelled PNG grid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from detok import dist
from detok.eval.recon import to_uint8
from detok.generators.load import load_generator
from detok.generators.sampling import balanced_labels, rank_batches, sample_images
from detok.io import atomic_write, write_json
from detok.tokenizers.load import load_tokenizer

GRID_MIN_SIDE = 64  # images smaller than this are enlarged (nearest) in grids, so 16-32 px samples stay legible


def save_class_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path,
                    names: list[str] | None = None) -> Path:
    """A PNG grid of [-1, 1] images, one row per class (in label order), the class name left of each row.

    `labels` (N,) gives each image's class; rows hold the images of one class in order. Small images are
    enlarged by an integer factor (nearest neighbour) to at least GRID_MIN_SIDE pixels.
    """
    images = images.float().clamp(-1, 1) * 0.5 + 0.5  # (N, 3, H, W) in [0, 1]
    side = images.shape[-1]
    scale = max(1, -(-GRID_MIN_SIDE // side))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    classes = list(dict.fromkeys(int(c) for c in labels))
    per_row = max(int((labels == c).sum()) for c in classes)
    rows = []
    for c in classes:
        row = images[labels == c]
        if row.shape[0] < per_row:  # pad a short row with white
            row = torch.cat([row, row.new_ones(per_row - row.shape[0], *row.shape[1:])])
        rows.append(row)
    from torchvision.utils import make_grid  # here: torchvision pulls in torch._dynamo (~1 s)

    grid = make_grid(torch.cat(rows), nrow=per_row, padding=2, pad_value=1.0)  # (3, R*(h+2)+2, K*(w+2)+2)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    texts = [names[c] if names and 0 <= c < len(names) else f"class {c}" for c in classes]
    label_w = 8 + 6 * max(len(s) for s in texts)
    canvas = Image.new("RGB", (pixels.shape[1] + label_w, pixels.shape[0]), "white")
    canvas.paste(Image.fromarray(pixels), (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    cell = images.shape[-2] + 2
    for i, text in enumerate(texts):
        draw.text((4, 2 + i * cell + cell // 2 - 6), text, fill="black")
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def sample_run(
    generator: str | Path,
    *,
    num_images: int = 50000,
    cfg_scale: float | None = None,
    steps: str | None = None,
    head_steps: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    tokenizer: str | None = None,
    use_ema: bool = True,
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Class-balanced samples (label i % classes) of a generator run: OUT/samples.npz (ADM layout: arr_0 uint8
    NHWC, arr_1 labels) and OUT/samples.png (one class per row, named). Batches are seeded by their first
    index, so any process count (torchrun) gives the same images. Returns the summary (also OUT/sample.json).
    """
    if num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {num_images}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    info = dist.init(device)
    try:
        gen, cfg = load_generator(generator, use_ema=use_ema)
        tok = load_tokenizer(tokenizer or cfg["tokenizer"])
        gen.to(info.device)
        tok.to(info.device)
        sample_cfg = cfg.get("sample", {})
        scale = float(cfg_scale if cfg_scale is not None else sample_cfg.get("cfg_scale", sample_cfg.get("cfg", 1.0)))
        out_dir = Path(out or Path(generator) / "samples")
        out_dir.mkdir(parents=True, exist_ok=True)
        labels = balanced_labels(num_images, cfg["num_classes"])
        t0 = time.perf_counter()
        batches = rank_batches(num_images, batch_size, info.rank, info.world)
        for start, end in tqdm(batches, desc="sample", unit="batch", disable=not (progress and info.is_main)):
            images = sample_images(gen, tok, labels[start:end], cfg_scale=scale, steps=steps, head_steps=head_steps,
                                   seed=seed, batch_size=batch_size, first_index=start)
            np.savez(out_dir / f".part-{start:08d}.npz", images=to_uint8(images).permute(0, 2, 3, 1).numpy(),
                     labels=labels[start:end].numpy())
        dist.barrier()
        summary: dict[str, Any] = {}
        if info.is_main:
            parts = sorted(out_dir.glob(".part-*.npz"))
            arrays = [np.load(p) for p in parts]
            images_u8 = np.concatenate([a["images"] for a in arrays])  # (N, H, W, 3) uint8, ADM's arr_0 layout
            all_labels = np.concatenate([a["labels"] for a in arrays])
            atomic_write(out_dir / "samples.npz", lambda tmp: np.savez(tmp, arr_0=images_u8, arr_1=all_labels))
            for p in parts:
                p.unlink()
            from detok.runs.train import class_names

            shown = _grid_subset(all_labels, per_class=8, max_classes=10)
            grid_images = torch.from_numpy(images_u8[shown]).permute(0, 3, 1, 2).float() / 127.5 - 1
            data_name = run_data_name(cfg)
            save_class_grid(grid_images, torch.from_numpy(all_labels[shown]), out_dir / "samples.png",
                            class_names(data_name))
            summary = {
                "generator": str(generator), "num_images": int(images_u8.shape[0]), "cfg_scale": scale,
                "steps": steps or "default", "head_steps": head_steps or "default", "seed": seed,
                "weights": "ema" if use_ema else "raw", "npz": str(out_dir / "samples.npz"),
                "grid": str(out_dir / "samples.png"), "grid_rows": "one class per row (first 10 classes, 8 each)",
                "seconds": time.perf_counter() - t0, "processes": info.world,
            }
            write_json(out_dir / "sample.json", summary)
        return summary
    finally:
        dist.shutdown()


def run_data_name(cfg: dict[str, Any]) -> str:
    """The dataset a generator run trained on: its latent cache's source, else its data config."""
    import json

    cache = cfg.get("cache")
    if cache and (Path(cache) / "meta.json").is_file():
        return str(json.loads((Path(cache) / "meta.json").read_text()).get("source", {}).get("data", ""))
    return str(cfg.get("data", {}).get("name", ""))


def _grid_subset(labels: np.ndarray, per_class: int, max_classes: int) -> np.ndarray:
    """Indices of up to `per_class` samples of each of the first `max_classes` classes, class by class."""
    picked = []
    for c in sorted(set(labels.tolist()))[:max_classes]:
        picked.extend(np.flatnonzero(labels == c)[:per_class].tolist())
    return np.asarray(picked, dtype=np.int64)
