"""Reconstruction runs: encode (posterior mean) and decode held-out images; PSNR / SSIM and a grid PNG."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from detok.config import from_dict
from detok.data import build_dataset, collate
from detok.data.build import DataConfig
from detok.dist import pick_device
from detok.eval.recon import ReconMetrics, bicubic_baseline, bicubic_side, to_uint8
from detok.io import atomic_write, write_json
from detok.processes.timestep_tokens import prefix_lengths
from detok.tokenizers.base import Tokenizer
from detok.tokenizers.load import load_tokenizer, run_config


def save_pairs_grid(images: torch.Tensor, recon: torch.Tensor, path: str | Path, nrow: int = 8,
                    baseline: torch.Tensor | None = None) -> Path:
    """PNG grid of originals over reconstructions (over the baseline, if given), row by row ([-1, 1] inputs)."""
    from torchvision.utils import save_image

    n = min(images.shape[0], nrow * 4)
    rows = []
    for i in range(0, n, nrow):
        rows += [images[i : i + nrow], recon[i : i + nrow]]
        if baseline is not None:
            rows.append(baseline[i : i + nrow])
    from torchvision.utils import make_grid  # here: torchvision pulls in torch._dynamo (~1 s)

    grid = make_grid(torch.cat(rows).float().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=1, pad_value=1.0)
    return atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))


@torch.no_grad()
def reconstruct(
    tokenizer: Tokenizer,
    dataset: Dataset,
    out_dir: str | Path,
    device: torch.device,
    n: int = 256,
    batch_size: int = 64,
    progress: bool = True,
    classifier: Any = None,
) -> dict[str, Any]:
    """Encode (posterior mean) and decode the first `n` images; metrics on uint8-rounded images, a grid PNG.

    Beside each reconstruction: the bicubic baseline with as many numbers per image as the latent
    (`bicubic_baseline`), its PSNR / SSIM under "bicubic" and on the grid's third row of each block.
    With a `classifier` (a feature net with "logits", e.g. the domain net), "class_accuracy" holds its top-1
    on the originals, the reconstructions and the bicubic baseline: how much of the class a generator on
    these latents can show at best (a decoder that blurs the shapes away caps every generator's accuracy).
    A discrete tokenizer whose ids have a prefix order (DDT; any that does not set `prefix_order = False`) gets
    the prefix curve (`reconstruct_prefixes`); one without (the spatial VQ baseline) decodes its ids here.
    """
    if getattr(tokenizer, "discrete", False) and tokenizer.prefix_order:
        return reconstruct_prefixes(tokenizer, dataset, out_dir, device, n, batch_size, progress)
    tokenizer.eval().to(device)
    n = min(n, len(dataset)) if n > 0 else len(dataset)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate)
    values = math.prod(tokenizer.latent_shape)
    metrics, bicubic, first = ReconMetrics(), ReconMetrics(), None
    hits = {"real": 0, "reconstruction": 0, "bicubic": 0}
    t0 = time.perf_counter()
    for batch in tqdm(loader, desc="reconstruct", disable=not progress):
        x = batch["image"].to(device)
        recon = tokenizer.decode(tokenizer.encode(x))
        base = bicubic_baseline(x, values)
        metrics.update(x, recon)
        bicubic.update(x, base)
        if classifier is not None:
            labels = torch.as_tensor(batch["label"])  # (B,)
            for key, images in (("real", x), ("reconstruction", recon), ("bicubic", base)):
                pred = classifier(to_uint8(images.cpu()))["logits"].argmax(1)  # (B,)
                hits[key] += int((pred == labels).sum())
        if first is None:
            first = (x.cpu(), recon.cpu(), base.cpu())
    out = metrics.compute()
    if classifier is not None:
        out["class_accuracy"] = {key: count / n for key, count in hits.items()} | {
            "n": n, "classifier": getattr(classifier, "name", type(classifier).__name__)}
    side = bicubic_side(values, first[0].shape[1])
    out["bicubic"] = {**bicubic.compute(), "values": side * side * first[0].shape[1], "side": side,
                      "latent_values": values}
    grid = save_pairs_grid(first[0], first[1], Path(out_dir) / "reconstructions.png", baseline=first[2])
    return {**out, "grid": str(grid), "seconds": time.perf_counter() - t0}


def save_prefix_grid(images: torch.Tensor, by_j: dict[int, torch.Tensor], path: str | Path, rows: int = 8) -> Path:
    """PNG: one image per row, columns = decodings from j = 0 .. K tokens (coarse to fine), then the original."""
    from torchvision.utils import save_image

    n = min(rows, images.shape[0])
    cols = [by_j[j][:n] for j in sorted(by_j)] + [images[:n]]  # each (n, 3, H, W)
    tiles = torch.stack(cols, dim=1).flatten(0, 1)  # (n * (J + 1), 3, H, W), row-major
    from torchvision.utils import make_grid  # here: torchvision pulls in torch._dynamo (~1 s)

    grid = make_grid(tiles.float().clamp(-1, 1) * 0.5 + 0.5, nrow=len(cols), padding=1, pad_value=1.0)
    return atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))


def save_prefix_plot(by_tokens: dict[int, dict[str, float]], num_tokens: int, path: str | Path,
                     title: str = "", by_suffix: dict[int, dict[str, float]] | None = None) -> Path:
    """PNG: reconstruction PSNR against the number of AR-order tokens kept (first j; also the last j if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    js = sorted(by_tokens)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    ax.plot(js, [by_tokens[j]["psnr"] for j in js], "o-", label="first j (coarse first)")
    if by_suffix:
        sj = sorted(by_suffix)
        ax.plot(sj, [by_suffix[j]["psnr"] for j in sj], "s--", label="last j (fine only)")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"tokens kept, AR order (of K = {num_tokens})")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title or "DDT prefix reconstruction")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


@torch.no_grad()
def reconstruct_prefixes(
    tokenizer, dataset: Dataset, out_dir: str | Path, device: torch.device, n: int = 256, batch_size: int = 64,
    progress: bool = True, seed: int = 0, lengths: list[int] | None = None,
) -> dict[str, Any]:
    """A discrete diffusion-timestep tokenizer's reconstructions from the first j AR-order tokens.

    For each j of `lengths` (default `prefix_lengths(K)`): PSNR / SSIM of the first `n` images decoded from
    their first j tokens (j = 0: the unconditional decoder; j = K: the full reconstruction, whose numbers
    are also the top-level "psnr" / "ssim"). Decoding noise is seeded per batch by (seed, first index), the
    same noise for every j. Writes reconstructions.png (the full decodings), prefixes.png (coarse to fine) and
    prefix_psnr.png.

    The order test: for each 0 < j < K the same images are also decoded from the *last* j tokens (the fine ones
    without the coarse ones). `order_gap_db` is the mean over those j of PSNR(first j) - PSNR(last j): clearly
    positive when the AR order puts the informative tokens first (the prefix property), about 0 when token
    positions are exchangeable (the all-visible control).
    """
    tokenizer.eval().to(device)
    k = tokenizer.num_tokens
    js = lengths or prefix_lengths(k)
    n = min(n, len(dataset)) if n > 0 else len(dataset)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate)
    metrics = {j: ReconMetrics() for j in js}
    mids = [j for j in js if 0 < j < k]
    suffix_metrics = {j: ReconMetrics() for j in mids}
    first: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None
    t0, start = time.perf_counter(), 0
    for batch in tqdm(loader, desc="reconstruct (prefixes)", disable=not progress):
        x = batch["image"].to(device)
        ids = tokenizer.tokenize(x)  # (B, K) AR order
        decoded = {}
        for j in js:
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
            decoded[j] = tokenizer.detokenize(ids, rng=g, known=j)
            metrics[j].update(x, decoded[j])
        for j in mids:
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
            last_j = torch.arange(k, device=device) >= k - j  # (K,) AR positions K-j .. K-1
            suffix_metrics[j].update(x, tokenizer.detokenize(ids, rng=g, given=last_j))
        if first is None:
            first = (x.cpu(), {j: d.cpu() for j, d in decoded.items()})
        start += x.shape[0]
    by_tokens = {j: metrics[j].compute() for j in js}
    by_suffix = {j: suffix_metrics[j].compute() for j in mids}
    gaps = [by_tokens[j]["psnr"] - by_suffix[j]["psnr"] for j in mids]
    out_dir = Path(out_dir)
    grid = save_pairs_grid(first[0], first[1][k], out_dir / "reconstructions.png")
    prefixes = save_prefix_grid(first[0], first[1], out_dir / "prefixes.png")
    plot = save_prefix_plot(by_tokens, k, out_dir / "prefix_psnr.png", by_suffix=by_suffix)
    full = by_tokens[k]
    gain = full["psnr"] - by_tokens[0]["psnr"] if 0 in by_tokens else float("nan")
    return {**full, "psnr_by_tokens": {str(j): by_tokens[j]["psnr"] for j in js},
            "ssim_by_tokens": {str(j): by_tokens[j]["ssim"] for j in js}, "psnr_gain_over_unconditional": gain,
            "psnr_by_suffix": {str(j): by_suffix[j]["psnr"] for j in mids},
            "order_gap_db": sum(gaps) / len(gaps) if gaps else float("nan"),
            "num_tokens": k, "codebook_size": tokenizer.codebook_size, "decode_steps": tokenizer.cfg.sample_steps,
            "grid": str(grid), "prefix_grid": str(prefixes), "prefix_plot": str(plot),
            "seconds": time.perf_counter() - t0}


def data_config_for(tokenizer: Tokenizer, ckpt_config: dict, data: str = "", root: str = "",
                    file_list: str = "", bad_images: str = "") -> DataConfig:
    """The tokenizer's training data config, with replacements (dataset name / root / file list / bad-image
    policy), at its image size."""
    fields = dict(ckpt_config.get("data", {}))
    if data:
        fields = {"name": data}
    if root:
        fields["root"] = root
    if file_list:
        fields["file_list"] = file_list
    if bad_images:
        fields["bad_images"] = bad_images
    fields["image_size"] = tokenizer.cfg.image_size
    return from_dict(DataConfig, fields, prefix="data.")


def reconstruct_run(
    tokenizer: str | Path, *, data: str = "", root: str = "", file_list: str = "", split: str = "val",
    num_images: int = 256, batch_size: int = 64, use_ema: bool = True, out: str | Path = "", device: str = "auto",
) -> dict[str, Any]:
    """`detok reconstruct`: reconstructions of a tokenizer's data split; OUT/reconstruct.json + the grid."""
    tok = load_tokenizer(tokenizer, use_ema=use_ema)
    dataset = build_dataset(data_config_for(tok, run_config(tokenizer), data, root, file_list), split)
    default = Path(tokenizer) / "reconstruct" if Path(tokenizer).is_dir() else Path("reconstruct")
    out_dir = Path(out or default)
    res = reconstruct(tok, dataset, out_dir, pick_device(device), num_images, batch_size)
    res.update(tokenizer=str(tokenizer), weights="ema" if use_ema else "raw", split=split)
    write_json(out_dir / "reconstruct.json", res)
    return res
