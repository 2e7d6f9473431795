"""`detok quickstart`: minutes on a laptop CPU: a small l-DeTok on built-in data, then generators on its latents."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from detok.cli.bench import _families
from detok.cli.common import print_summary

DATA = ("fashion-mnist", "shapes")


HELP = "train a small l-DeTok and generators on its latents, in minutes (CPU)"


def add_parser(sub) -> None:
    p = sub.add_parser("quickstart", help=HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="shapes", choices=DATA, help="built-in dataset")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--steps", type=int, default=0, help="tokenizer steps (0 = the preset's)")
    p.add_argument("--decoder-ft-steps", type=int, default=0,
                   help="tokenizer stage 2: decoder fine-tuning on clean latents, encoder frozen (-1 = the preset's "
                        "400 steps, 0 = none)")
    p.add_argument("--generator-steps", type=int, default=0, help="steps of each generator (0 = the preset's)")
    p.add_argument("--generators", default="sit,mar", type=lambda s: _families(s) if s.strip() else [],
                   help="comma-separated generator families to train on the latents ('' = none, 'all')")
    p.add_argument("--cache-images", type=int, default=5000,
                   help="training images encoded (with their flips) for the generators (0 = all)")
    p.add_argument("--eval-samples", type=int, default=500,
                   help="samples per generator for its FID in domain-classifier features (0 = no FID)")
    p.add_argument("--with", dest="with_parts", default="", choices=["", "ddt", "mllm"],
                   help="also train the discrete part: 'ddt' = a DDT tokenizer (discrete diffusion-timestep tokens) "
                        "and the ddt_ar LLaMA on its ids, reported under summary['ddt']; 'mllm' = that, then the "
                        "multimodal LM on the DDT tokens (text-to-image, captions, edits), under summary['mllm']")
    p.add_argument("--ddt-on", default="latents", choices=["latents", "pixels"],
                   help="with --with ddt: the DDT tokenizer reads this quickstart's l-DeTok latents, or the pixels")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="tokenizer run overrides, e.g. train.max_steps=50")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from detok.runs.quickstart import quickstart

    summary = quickstart(args.data, args.out, steps=args.steps, generator_steps=args.generator_steps,
                         generators=args.generators, cache_images=args.cache_images, eval_samples=args.eval_samples,
                         overrides=args.overrides, decoder_ft_steps=args.decoder_ft_steps,
                         with_ddt=args.with_parts in ("ddt", "mllm"), ddt_on=args.ddt_on,
                         with_mllm=args.with_parts == "mllm")
    print_summary(f"detok quickstart ({args.data}) -> {Path(args.out) / 'summary.json'}", summary)
    print(results_table(summary), flush=True)
    return summary


def results_table(summary: dict) -> str:
    """The quickstart's numbers as one table: the tokenizer against bicubic at equal size, each generator."""
    tok = summary["tokenizer"]
    bic = tok.get("bicubic", {})
    shape = "x".join(str(v) for v in tok["latent_shape"])
    lines = [
        f"{'stage':<22}{'model':<16}{'steps':>6}{'seconds':>9}  result",
        "-" * 92,
        f"{'tokenizer':<22}{tok['model']:<16}{tok['steps']:>6}{tok['seconds']:>9.0f}  PSNR {tok['psnr']:.2f} dB, "
        f"SSIM {tok['ssim']:.3f} (latent {shape})",
    ]
    if bic:
        side = bic["side"]
        lines.append(f"{'bicubic baseline':<22}{f'{side}x{side} px':<16}{'-':>6}{'-':>9}  PSNR {bic['psnr']:.2f} dB, "
                     f"SSIM {bic['ssim']:.3f} ({bic['values']} numbers vs the latent's {bic['latent_values']})")
    acc = tok.get("class_accuracy")
    if acc:
        lines.append(f"{'class accuracy':<22}{'classifier':<16}{'-':>6}{'-':>9}  real {acc['real']:.2f}, "
                     f"reconstructions {acc['reconstruction']:.2f}, bicubic {acc['bicubic']:.2f} ({acc['n']} val "
                     f"images, {acc['classifier']}; a generator's samples cannot show much more than the "
                     "reconstructions)")
    for name, g in summary["generators"].items():
        res = []
        if "fid" in g:
            res.append(f"FID {g['fid']:.1f} ({g['fid_samples']} samples, {g['fid_features']} features)")
        if "class_accuracy" in g:
            res.append(f"class accuracy {g['class_accuracy']:.2f}")
        res.append(f"cfg {g['cfg_scale']:g}")
        lines.append(f"{name:<22}{g['model']:<16}{g['steps']:>6}{g['seconds']:>9.0f}  " + ", ".join(res))
    ref = summary.get("reference_points")
    if ref:
        chance, real_acc = ref.get("chance_class_accuracy"), ref.get("real_class_accuracy")
        lines.append(f"{'reference points':<22}{'real val images':<16}{'-':>6}{'-':>9}  FID {ref['real_fid']:.1f} "
                     f"({ref['real_n']} samples: the floor at this n)"
                     + (f", class accuracy {real_acc:.2f} (the ceiling)" if real_acc is not None else "")
                     + (f", chance {chance:.2f}" if chance else ""))
    grids = [tok["reconstructions"], *(g["samples"] for g in summary["generators"].values())]
    ddt = summary.get("ddt")
    if ddt:
        dt, dg = ddt["tokenizer"], ddt["generator"]
        curve = ", ".join(f"{j}: {v:.1f}" for j, v in ddt["psnr_by_tokens"].items())
        lines.append(f"{'DDT tokenizer':<22}{dt['model']:<16}{dt['steps']:>6}{dt['seconds']:>9.0f}  PSNR by tokens "
                     f"kept (AR order) {curve} dB; K {dt['num_tokens']}, codebook {dt['codebook_size']}")
        res = [f"FID {dg['fid']:.1f} ({dg['fid_samples']} samples, {dg['fid_features']} features)"] if "fid" in dg else []
        if "class_accuracy" in dg:
            res.append(f"class accuracy {dg['class_accuracy']:.2f}")
        res.append(f"cfg {dg['cfg_scale']:g}")
        lines.append(f"{'ddt_ar':<22}{dg['model']:<16}{dg['steps']:>6}{dg['seconds']:>9.0f}  " + ", ".join(res))
        grids += [ddt["prefix_grid"], dg["samples"]]
    mm = summary.get("mllm")
    if mm:
        lines.append(f"{'multimodal LM':<22}{mm['model']:<16}{mm['steps']:>6}{mm['seconds']:>9.0f}  GenEval-style "
                     f"{mm['geneval']:.2f} (held-out pairs {mm['geneval_held_out']:.2f}), captions all-right "
                     f"{mm['caption_overall']:.2f}, edit success {mm['edit_success']:.2f}; through the tokenizer "
                     f"{mm['through_tokenizer']['overall']:.2f}")
        grids += [g for g in (mm["samples"], *mm["grids"].values()) if g]
    lines.append(f"total {summary['total_seconds'] / 60:.1f} min; grids: " + ", ".join(grids))
    return "\n".join(lines)
