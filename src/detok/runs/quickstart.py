"""The quickstart run: minutes on a laptop CPU: a small l-DeTok on built-in data, then generators on its latents."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from detok import dist
from detok.data import build_dataset, collate
from detok.io import write_json
from detok.runs.config import generator_config, generator_families, tokenizer_config
from detok.runs.train import train_generator, train_tokenizer
from detok.tokenizers.latents import write_cache
from detok.tokenizers.load import load_tokenizer

CEILING_IMAGES = 1000  # val images behind the tokenizer's class accuracy (real / reconstruction / bicubic)
DATA_PRESETS = {"shapes": "quickstart_shapes", "fashion-mnist": "quickstart_fashion"}


def quickstart(
    data: str = "shapes", out: str | Path = "runs/quickstart", *, steps: int = 0, generator_steps: int = 0,
    generators: str | list[str] = "sit,mar", cache_images: int = 5000, eval_samples: int = 500,
    overrides: list[str] | None = None, generator_overrides: dict[str, list[str]] | None = None,
    decoder_ft_steps: int = 0, with_ddt: bool = False, ddt_overrides: list[str] | None = None,
    ddt_on: str = "latents", with_mllm: bool = False, mllm_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train the quickstart tokenizer on `data`, cache its latents, train and score each generator family.

    Writes OUT/summary.json (returned) with the tokenizer's PSNR / SSIM and each generator's FID in the
    domain classifier's features (`eval_samples` samples; 0 = no FID). `overrides` apply to the tokenizer
    run, `generator_overrides[family]` to that family's run (`key=value` strings). The tokenizer trains in two
    stages: the l-DeTok recipe (noise + masking), then `decoder_ft_steps` steps of decoder fine-tuning on clean
    latents with the encoder frozen (quickstart_decoder_ft.yaml; -1 = its 400 steps; default 0 = no stage 2:
    at the quickstart's budget it adds minutes for about +1 dB, docs/RESULTS.md). `with_ddt` adds the discrete
    part (`quickstart_ddt`): a DDT tokenizer, its token cache and `ddt_ar` on it, under summary["ddt"]
    (`ddt_overrides` apply to the DDT tokenizer run); `ddt_on="latents"` (default) puts the DDT tokenizer on
    this quickstart's l-DeTok latents (`quickstart_ddt_latents`), "pixels" on the images. `with_mllm` (implies
    `with_ddt`) then trains the multimodal LM on the DDT tokens (`quickstart_mllm`: text-to-image, captioning,
    editing) and scores it with the shapes checker, under summary["mllm"] (`mllm_overrides` apply to its run).
    """
    if data not in DATA_PRESETS:
        raise ValueError(f"unknown quickstart data {data!r}; choose one of {', '.join(DATA_PRESETS)}")
    names = generator_families(generators if isinstance(generators, str) else ",".join(generators)) \
        if generators else []
    t0 = time.perf_counter()
    out = Path(out)
    tok_over = [f"train.out_dir={out / 'tokenizer'}", *(overrides or [])]
    if steps:
        tok_over.append(f"train.max_steps={steps}")
    cfg = tokenizer_config(None, [DATA_PRESETS[data]], tok_over)
    stage1 = train_tokenizer(cfg, recon_images=256)
    tok = stage1
    if decoder_ft_steps != 0:  # stage 2: frozen encoder, decoder on clean latents (the paper's final recipe)
        ft_over = [f"init_from={stage1['run_dir']}", f"train.out_dir={out / 'tokenizer_decoder_ft'}",
                   *(overrides or [])]
        ft_presets = [DATA_PRESETS[data], "quickstart_decoder_ft"]
        ft_steps = decoder_ft_steps if decoder_ft_steps > 0 else tokenizer_config(None, ft_presets).train.max_steps
        # what makes stage 2 stage 2, whatever the (stage-1) overrides say
        ft_over += [f"train.max_steps={ft_steps}", "decoder_only=true", "tokenizer.gamma=0.0",
                    "tokenizer.mask_ratio=0.0"]
        tok = train_tokenizer(tokenizer_config(None, ft_presets, ft_over), recon_images=256)
    rec = tok["reconstruction"]
    classes = _class_ceiling(tok["run_dir"], cfg.data) if eval_samples > 0 else None
    results: dict[str, Any] = {}
    if names:
        cache = out / "latents"
        tokenizer = load_tokenizer(tok["run_dir"])
        train = build_dataset(cfg.data, "train")
        if 0 < cache_images < len(train):
            train = Subset(train, range(cache_images))
        write_cache(tokenizer, train, cache, torch.device("cpu"),
                    source={"tokenizer": tok["run_dir"], "data": cfg.data.name, "split": "train"},
                    batch_size=256, collate=collate)
        for name in names:
            g_over = [f"tokenizer={tok['run_dir']}", f"cache={cache}", f"train.out_dir={out / name}"]
            if generator_steps:
                g_over.append(f"train.max_steps={generator_steps}")
            g_over += list((generator_overrides or {}).get(name, []))
            g_cfg = generator_config(overrides=g_over, family=name)
            res = train_generator(g_cfg)
            results[name] = {
                "model": g_cfg.model, "seconds": res["seconds"], "steps": res["steps"],
                "parameters_m": res["parameters_m"], "final_loss": res["final"].get("loss"),
                "samples": res["samples"]["grid"], "cfg_scale": g_cfg.sample.cfg_scale, "run_dir": res["run_dir"],
            }
            if eval_samples > 0:  # the real-image reference points once: the same n, net and reference for all
                results[name].update(_fid(res["run_dir"], tokenizer, cfg.data, g_cfg.sample.cfg_scale, eval_samples,
                                          real_floor=len(results) == 1))
    # real val images scored as the samples were (same n, net, reference): FID floor, accuracy ceiling, chance
    floors = [g.pop("reference_points") for g in results.values() if "reference_points" in g]
    floor = floors[0] if floors else None
    ddt_over = ([f"train.max_steps={steps}"] if steps else []) + list(ddt_overrides or [])
    if ddt_on not in ("latents", "pixels"):
        raise ValueError(f"ddt_on must be 'latents' or 'pixels', got {ddt_on!r}")
    ddt_presets = ["quickstart_ddt"]
    if ddt_on == "latents":  # DDT over this quickstart's l-DeTok latents (its weights are saved with DDT's)
        ddt_presets.append("quickstart_ddt_latents")
        ddt_over.insert(0, f"tokenizer.base_tokenizer={tok['run_dir']}")
    ddt = _quickstart_ddt(data, out, cfg.data, cache_images, eval_samples, generator_steps, ddt_presets, ddt_over,
                          (generator_overrides or {}).get("ddt_ar", [])) if with_ddt or with_mllm else None
    if with_mllm and data != "shapes":
        raise ValueError("the multimodal part needs captions: run it with --data shapes")
    mllm = _quickstart_mllm(out, ddt["tokenizer"]["run_dir"], list(mllm_overrides or [])) if with_mllm else None
    dist.shutdown()
    grid = cfg.tokenizer.image_size // cfg.tokenizer.patch_size
    summary = {
        "data": data,
        "tokenizer": {
            "model": cfg.model, "psnr": rec["psnr"], "ssim": rec["ssim"], "bicubic": rec["bicubic"],
            "seconds": stage1["seconds"] + (tok["seconds"] if tok is not stage1 else 0.0),
            "steps": stage1["steps"], "img_per_s": stage1["img_per_s"],
            "decoder_ft_steps": tok["steps"] if tok is not stage1 else 0,
            "stage1_psnr": stage1["reconstruction"]["psnr"],
            "latent_shape": [cfg.tokenizer.latent_dim, grid, grid], "gamma": cfg.tokenizer.gamma,
            "mask_ratio": cfg.tokenizer.mask_ratio, "reconstructions": rec["grid"], "run_dir": tok["run_dir"],
            **({"class_accuracy": classes} if classes else {}),
        },
        "generators": results,
        **({"reference_points": floor} if floor else {}),
        "total_seconds": time.perf_counter() - t0,
    }
    if ddt is not None:
        summary["ddt"] = ddt
    if mllm is not None:
        summary["mllm"] = mllm
    write_json(out / "summary.json", summary)
    return summary


def _quickstart_ddt(data: str, out: Path, data_cfg, cache_images: int, eval_samples: int, generator_steps: int,
                    presets: list[str], overrides: list[str], gen_overrides: list[str]) -> dict[str, Any]:
    """The discrete part: a DDT tokenizer (prefix curve), its token cache, `ddt_ar` on it (FID, class accuracy)."""
    t0 = time.perf_counter()
    cfg = tokenizer_config(None, presets, [f"data.name={data}", f"train.out_dir={out / 'ddt'}", *overrides])
    tok_summary = train_tokenizer(cfg, recon_images=256)
    rec = tok_summary["reconstruction"]
    tokenizer = load_tokenizer(tok_summary["run_dir"])
    train = build_dataset(cfg.data, "train")
    if 0 < cache_images < len(train):
        train = Subset(train, range(cache_images))
    cache = out / "ddt_tokens"
    write_cache(tokenizer, train, cache, torch.device("cpu"),
                source={"tokenizer": tok_summary["run_dir"], "data": cfg.data.name, "split": "train"},
                batch_size=256, collate=collate)
    g_over = [f"tokenizer={tok_summary['run_dir']}", f"cache={cache}", f"train.out_dir={out / 'ddt_ar'}"]
    if generator_steps:
        g_over.append(f"train.max_steps={generator_steps}")
    g_cfg = generator_config(overrides=g_over + list(gen_overrides), family="ddt_ar")
    res = train_generator(g_cfg)
    result: dict[str, Any] = {
        "tokenizer": {"model": cfg.model, "num_tokens": tokenizer.num_tokens, "codebook_size": tokenizer.codebook_size,
                      "schedule": cfg.tokenizer.schedule, "steps": tok_summary["steps"],
                      "input": "l-DeTok latents" if cfg.tokenizer.base_tokenizer else "pixels",
                      "seconds": tok_summary["seconds"], "run_dir": tok_summary["run_dir"],
                      "codebook": tok_summary.get("codebook", {})},
        "psnr_by_tokens": rec["psnr_by_tokens"], "ssim_by_tokens": rec["ssim_by_tokens"], "psnr": rec["psnr"],
        "psnr_gain_over_unconditional": rec["psnr_gain_over_unconditional"],
        "prefix_grid": rec["prefix_grid"], "prefix_plot": rec["prefix_plot"],
        "generator": {"model": g_cfg.model, "steps": res["steps"], "seconds": res["seconds"],
                      "parameters_m": res["parameters_m"], "final_loss": res["final"].get("loss"),
                      "samples": res["samples"]["grid"], "cfg_scale": g_cfg.sample.cfg_scale,
                      "run_dir": res["run_dir"]},
    }
    if eval_samples > 0:
        scores = _fid(res["run_dir"], tokenizer, data_cfg, g_cfg.sample.cfg_scale, eval_samples)
        result["generator"].update(scores)
        result.update({k: scores[k] for k in ("fid", "class_accuracy") if k in scores})
    result["seconds"] = time.perf_counter() - t0
    return result


def _quickstart_mllm(out: Path, ddt_run: str, overrides: list[str]) -> dict[str, Any]:
    """The multimodal part: the LM over text + the DDT tokens (quickstart_mllm), scored GenEval-style."""
    from detok.runs.mllm import evaluate_mllm_run, mllm_run_config, train_mllm

    t0 = time.perf_counter()
    cfg = mllm_run_config(["quickstart_mllm"], [f"tokenizer={ddt_run}", f"train.out_dir={out / 'mllm'}", *overrides])
    res = train_mllm(cfg)
    scores = evaluate_mllm_run(res["run_dir"])
    t2i, cap, ed = scores["text_to_image"], scores["captions"], scores["edit"]
    return {
        "model": cfg.model, "steps": res["steps"], "seconds": res["seconds"], "parameters_m": res["parameters_m"],
        "final_loss": res["final"].get("loss"), "samples": res.get("samples", {}).get("grid", ""),
        "geneval": t2i["overall"], "geneval_held_out": t2i["groups"]["held_out"]["overall"],
        "geneval_attributes": t2i["attributes"], "caption_accuracy": cap["attributes"],
        "caption_overall": cap["overall"], "edit_success": ed["success"], "edit_by_attribute": ed["attributes"],
        "through_tokenizer": scores["through_tokenizer"], "checker_usable": scores["checker_usable"], "grids": scores["grids"], "run_dir": res["run_dir"],
        "eval_seconds": scores["seconds"], "total_seconds": time.perf_counter() - t0,
    }


def _class_ceiling(run_dir: str, data_cfg, n: int = CEILING_IMAGES) -> dict[str, Any]:
    """The domain classifier's accuracy on n val images, their reconstructions and the bicubic baseline.

    A generator's samples pass through the same decoder, so the reconstructions' accuracy is about the most
    class its samples can show (the classifier is the one that scores them).
    """
    from detok.eval.protocol import feature_net_for
    from detok.runs.reconstruct import reconstruct

    net = feature_net_for("domain", data_cfg)  # the net behind the generators' FID and class accuracy
    rec = reconstruct(load_tokenizer(run_dir), build_dataset(data_cfg, "val"), Path(run_dir) / "class_ceiling",
                      torch.device("cpu"), n, batch_size=250, progress=False, classifier=net)
    return rec["class_accuracy"]


def _fid(run_dir: str, tokenizer, data_cfg, scale: float, n: int, real_floor: bool = True) -> dict[str, Any]:
    """FID of n samples at the run's guidance scale, in the domain classifier's features (trained once, cached)."""
    from detok.eval.protocol import EvalConfig, evaluate_generator_run

    t0 = time.perf_counter()
    ecfg = EvalConfig(feature_net="domain", cfg_scales=[scale], n_search=n, n_final=n, final_cfg1=False,
                      batch_size=min(250, n),  # blocks of the batch size are drawn whole: no more than n
                      real_floor="always" if real_floor else "never")
    res = evaluate_generator_run(run_dir, ecfg, tokenizer=tokenizer, data_cfg=data_cfg)
    best = res["best"]
    out = {"fid": best["fid"], "fid_samples": best["n"], "fid_features": res["recipe"]["feature_net"],
           "eval_seconds": time.perf_counter() - t0}
    for key in ("class_accuracy", "precision", "recall"):
        if key in best:
            out[key] = best[key]
    if res.get("reference_points", {}).get("real_fid") is not None:
        out["reference_points"] = res["reference_points"]
    return out
