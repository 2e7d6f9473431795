"""Multimodal LM runs: the token data, `train_mllm`, loading a run, and text-to-image / caption / edit.

The bodies of `detok train mllm`, `detok generate`, `detok caption` and `detok edit`. The data is the
built-in `shapes` set: item i is scene i with its caption and an editing pair (scene i -> the same scene
with one attribute changed, and the instruction), both images turned into a discrete tokenizer's ids once
(`token_data`: cached in the run folder, keyed by the tokenizer's fingerprint and the data settings).
Training captions never show the held-out (colour, shape) pairs (`detok.data.shapes.HELD_OUT_PAIRS`).

A run folder holds, beside the engine's checkpoints, `vocab/` (the text tokenizer and the vocabulary
layout: `MultimodalVocab.save`) and `tokens/` (the token data).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from detok import registry
from detok.config import (
    ConfigError,
    deep_update,
    from_dict,
    load_yaml,
    merge,
    option,
    parse_override,
    save_yaml,
    to_dict,
)
from detok.dist import pick_device
from detok.engine.tasks import MLLMTask
from detok.engine.trainer import OptimConfig, TrainConfig, Trainer
from detok.io import Checkpoint, atomic_write, write_json
from detok.multimodal.sequences import TASKS
from detok.multimodal.vocab import MultimodalVocab, load_text_tokenizer, train_text_tokenizer
from detok.tokenizers.load import load_tokenizer

TOKENS_FORMAT = 1
ENCODE_BATCH = 256


@dataclass
class MixtureConfig:
    """Share of each task in a training batch (normalised; 0 = never)."""

    t2i: float = option(0.4, "text -> image", min=0)
    i2t: float = option(0.25, "image -> text (captioning)", min=0)
    image: float = option(0.05, "image only", min=0)
    text: float = option(0.05, "text only", min=0)
    edit: float = option(0.25, "instruction + source image -> edited image", min=0)


@dataclass
class MLLMDataConfig:
    """The shapes scenes and editing pairs the model trains on."""

    size: int = option(20000, "train scenes (each with its caption and one editing pair)", min=1)
    seed: int = option(0, "shapes generator seed", min=0)
    exclude_held_out: bool = option(True, "never show the held-out (colour, shape) pairs in training")


def _mllm_optim() -> OptimConfig:
    return OptimConfig(lr=1e-3, weight_decay=0.0, warmup_epochs=0.05, grad_clip=1.0, schedule="cosine")


def _mllm_train() -> TrainConfig:
    return TrainConfig(out_dir="runs/mllm", global_batch_size=64, max_steps=2000, ema_decay=0.995, ckpt_every=500)


@dataclass
class MLLMRunConfig:
    """Everything `detok train mllm` needs."""

    model: str = option("mllm_mini", "multimodal LM preset in the registry (mllm_tiny, mllm_mini, mllm_s, mllm_b)")
    mllm: dict[str, Any] = option(factory=dict, help="overrides of MLLMConfig fields (text_slot, pretrained, ...)")
    tokenizer: str = option("", "discrete image tokenizer run (DDT, or the vqvit spatial baseline)")
    data: MLLMDataConfig = option(factory=MLLMDataConfig)
    mixture: MixtureConfig = option(factory=MixtureConfig)
    optim: OptimConfig = option(factory=_mllm_optim)
    train: TrainConfig = option(factory=_mllm_train)
    sample_prompts: int = option(8, "prompts in the end-of-training sample grid (0 = none)", min=0)


def mllm_run_config(presets: list[str] | None = None, overrides: list[str] | None = None) -> MLLMRunConfig:
    """Defaults, then YAML presets, then `key=value` overrides; the model name is checked against the registry."""
    data = to_dict(MLLMRunConfig())
    for preset in presets or []:
        deep_update(data, load_yaml(preset))
    for text in overrides or []:
        path, value = parse_override(text)
        merge(data, path, value)
    cfg = from_dict(MLLMRunConfig, data)
    if cfg.model not in registry.names("mllm"):
        raise ConfigError(f"unknown multimodal model {cfg.model!r}; choose one of {', '.join(registry.names('mllm'))}")
    return cfg


# ---------------------------------------------------------------------------------------------------
# Token data
# ---------------------------------------------------------------------------------------------------


def _key(tok, data: MLLMDataConfig, image_size: int) -> dict[str, Any]:
    return {"format": TOKENS_FORMAT, "tokenizer": tok.fingerprint(), "num_tokens": tok.num_tokens,
            "codebook_size": tok.codebook_size, "size": data.size, "seed": data.seed,
            "exclude_held_out": data.exclude_held_out, "image_size": image_size}


@torch.no_grad()
def token_data(tok, data: MLLMDataConfig, folder: str | Path, device: torch.device,
               progress: bool = True) -> dict[str, Any]:
    """The scenes' and edit targets' ids with their texts: read from `folder` if its key matches, else encoded.

    Returns {"codes": (N, K), "target_codes": (N, K) long, "captions", "target_captions", "instructions",
    "attributes": lists of N str, "key": what produced it}.
    """
    from detok.data.shapes_tasks import ShapesEditDataset

    folder = Path(folder)
    image_size = tok.cfg.image_size
    key = _key(tok, data, image_size)
    meta_path, ids_path = folder / "tokens.json", folder / "tokens.safetensors"
    if meta_path.is_file() and ids_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            ids = load_file(str(ids_path))
            return {**ids, **{k: meta[k] for k in ("captions", "target_captions", "instructions", "attributes")},
                    "key": key}
    edits = ShapesEditDataset(data.size, image_size, data.seed, "train", exclude_held_out=data.exclude_held_out)
    loader = DataLoader(edits, batch_size=ENCODE_BATCH, collate_fn=_collate_edits)
    tok = tok.eval().to(device)
    codes, targets, texts = [], [], {"captions": [], "target_captions": [], "instructions": [], "attributes": []}
    for batch in tqdm(loader, desc="tokenize scenes", disable=not progress):
        codes.append(tok.tokenize(batch["source"].to(device)).cpu())  # (B, K)
        targets.append(tok.tokenize(batch["target"].to(device)).cpu())  # (B, K)
        for name, field in (("captions", "source_caption"), ("target_captions", "target_caption"),
                            ("instructions", "instruction"), ("attributes", "attribute")):
            texts[name].extend(batch[field])
    ids = {"codes": torch.cat(codes).contiguous(), "target_codes": torch.cat(targets).contiguous()}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(ids_path, lambda tmp: save_file(ids, tmp))
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps({"key": key, **texts})))
    return {**ids, **texts, "key": key}


def _collate_edits(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Edit items -> {"source", "target": (B, 3, H, W); the text fields as lists}."""
    out = {k: [item[k] for item in items] for k in items[0]}
    out["source"], out["target"] = torch.stack(out["source"]), torch.stack(out["target"])
    return out


class MLLMTokenDataset(Dataset):
    """Item i: {"codes", "target_codes": (K,) long, "caption", "instruction": text ids (lists), "index"}."""

    def __init__(self, tokens: dict[str, Any], vocab: MultimodalVocab) -> None:
        self.codes, self.target_codes = tokens["codes"], tokens["target_codes"]
        self.captions = [vocab.encode_text(t) for t in tokens["captions"]]
        self.target_captions = [vocab.encode_text(t) for t in tokens["target_captions"]]
        self.instructions = [vocab.encode_text(t) for t in tokens["instructions"]]

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"codes": self.codes[i], "target_codes": self.target_codes[i], "caption": self.captions[i],
                "instruction": self.instructions[i], "index": i}


def collate_tokens(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Token items -> {"codes", "target_codes": (B, K); "caption", "instruction": lists of id lists; "index"}."""
    return {"codes": torch.stack([it["codes"] for it in items]),
            "target_codes": torch.stack([it["target_codes"] for it in items]),
            "caption": [it["caption"] for it in items], "instruction": [it["instruction"] for it in items],
            "index": torch.tensor([it["index"] for it in items])}


def build_vocab(tokens: dict[str, Any], codebook_size: int, pretrained: str = "") -> MultimodalVocab:
    """The run's vocabulary: a word-level tokenizer of the training texts, or the pretrained model's own."""
    if pretrained:
        return MultimodalVocab(load_text_tokenizer(pretrained), codebook_size, kind="pretrained")
    texts = tokens["captions"] + tokens["target_captions"] + tokens["instructions"]
    return MultimodalVocab(train_text_tokenizer(texts), codebook_size)


def check_text_slot(vocab: MultimodalVocab, dataset: MLLMTokenDataset, slot: int) -> None:
    """A ConfigError naming the longest training text when it does not fit the model's text slot."""
    longest = max((len(t) for lists in (dataset.captions, dataset.target_captions, dataset.instructions)
                   for t in lists), default=0)
    if longest > slot:
        raise ConfigError(f"the longest training text has {longest} tokens but mllm.text_slot is {slot}; "
                          f"set mllm.text_slot={longest} or more")


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def build_mllm(name: str, vocab: MultimodalVocab, num_tokens: int, overrides: dict[str, Any] | None = None):
    """Registry multimodal LM `name` over `vocab` for K = num_tokens image ids, with MLLMConfig overrides."""
    builder = registry.get("mllm", name)
    try:
        return builder(vocab=vocab, num_tokens=num_tokens, codebook_size=vocab.codebook_size, **(overrides or {}))
    except TypeError as e:  # an unknown MLLMConfig field
        raise ConfigError(f"mllm {name}: {e}") from e


def train_mllm(cfg: MLLMRunConfig, resume: bool = False) -> dict[str, Any]:
    """Tokenize the shapes scenes (once), build the vocabulary, train the multimodal LM, sample a grid."""
    from detok.runs.train import check_resume

    if not cfg.tokenizer:
        raise ValueError("train mllm needs --tokenizer RUN (a discrete tokenizer run: ddt_* or vqvit_*)")
    tok = load_tokenizer(cfg.tokenizer)
    if not getattr(tok, "discrete", False):
        raise ValueError(f"tokenizer {cfg.tokenizer} gives continuous latents; the multimodal LM reads discrete ids "
                         "(train a ddt_* or vqvit_* tokenizer)")
    run_dir = Path(cfg.train.out_dir)
    overrides = dict(cfg.mllm)
    if resume:
        check_resume(run_dir, "mllm", cfg.model, "mllm", overrides)
    device = pick_device(cfg.train.device)
    t0 = time.perf_counter()
    tokens = token_data(tok, cfg.data, run_dir / "tokens", device, progress=cfg.train.progress)
    encode_s = time.perf_counter() - t0
    vocab_dir = run_dir / "vocab"
    if resume and (vocab_dir / "vocab.json").is_file():
        vocab = MultimodalVocab.load(vocab_dir)
    else:
        vocab = build_vocab(tokens, tok.codebook_size, overrides.get("pretrained", ""))
    dataset = MLLMTokenDataset(tokens, vocab)
    torch.manual_seed(cfg.train.seed)
    model = build_mllm(cfg.model, vocab, tok.num_tokens, overrides)
    check_text_slot(vocab, dataset, model.cfg.text_slot)
    ratios = [getattr(cfg.mixture, t) for t in TASKS]
    if sum(ratios) <= 0:
        raise ConfigError("the task mixture is all zeros: give at least one of mixture.t2i/i2t/image/text/edit > 0")
    task = MLLMTask(model, ratios)
    config = {**to_dict(cfg), "num_tokens": tok.num_tokens, "codebook_size": tok.codebook_size,
              "vocab": vocab.layout(), "vocab_fingerprint": vocab.fingerprint(),
              "tokenizer_fingerprint": tok.fingerprint()}
    trainer = Trainer(task, cfg.train, cfg.optim, kind="mllm", config=config, collate=collate_tokens, num_workers=0)
    if trainer.info.is_main:
        vocab.save(vocab_dir)
        save_yaml(config, run_dir / "config.yaml")
    summary = trainer.fit(dataset, resume=resume)
    summary.update(run_dir=str(run_dir), model=cfg.model, encode_seconds=encode_s,
                   parameters_m=sum(p.numel() for p in model.parameters()) / 1e6, vocab_size=vocab.size,
                   text_size=vocab.text_size)
    if trainer.info.is_main and cfg.sample_prompts > 0:
        ema = trainer.ema_copy().eval()
        prompts = sample_prompt_set(cfg.sample_prompts, cfg.data.seed)
        images = generate(ema, vocab, tok.to(trainer.device), prompts, per_prompt=4, seed=0)
        from detok.eval.mllm import save_prompt_grid

        grid = save_prompt_grid(images, prompts, 4, run_dir / "samples.png")
        summary["samples"] = {"grid": str(grid), "prompts": prompts, "weights": "ema",
                              "cfg_scale": ema.cfg.cfg_scale}
    if trainer.info.is_main:
        write_json(run_dir / "summary.json", summary)
    return summary


def sample_prompt_set(n: int, seed: int = 0) -> list[str]:
    """n prompts for a sample grid: held-out combinations first, then captions of val scenes."""
    from detok.data.shapes import ShapesDataset, held_out_prompts

    held = held_out_prompts(1, seed)[: (n + 1) // 2]
    val = ShapesDataset(max(n, 1), 32, seed, "val")
    return held + [val.scene(i).caption for i in range(n - len(held))]


# ---------------------------------------------------------------------------------------------------
# Loading and using a run
# ---------------------------------------------------------------------------------------------------


def _run_root(ckpt: Checkpoint) -> Path:
    """The run folder that holds `vocab/`: the checkpoint's folder or one of its parents."""
    for folder in (ckpt.path, *ckpt.path.parents):
        if (folder / "vocab" / "vocab.json").is_file():
            return folder
    raise FileNotFoundError(f"no vocab/ folder beside {ckpt.path}: a multimodal run keeps its text tokenizer in "
                            "RUN/vocab (copy it with the checkpoint)")


def load_mllm(path: str | Path, use_ema: bool = True, tokenizer: bool = True) -> dict[str, Any]:
    """{"model" (eval mode, EMA weights), "vocab", "tokenizer" (the image tokenizer, or None), "config", "run"}."""
    ckpt = Checkpoint(path)
    if ckpt.kind != "mllm":
        raise ValueError(f"{ckpt.path} is a {ckpt.kind} checkpoint, not a multimodal LM (train one with "
                         "`detok train mllm`)")
    root = _run_root(ckpt)
    vocab = MultimodalVocab.load(root / "vocab")
    cfg = ckpt.config
    if vocab.fingerprint() != cfg.get("vocab_fingerprint"):
        raise ValueError(f"{root / 'vocab'} is not the vocabulary {ckpt.path} was trained with (fingerprint "
                         f"{vocab.fingerprint()} vs {cfg.get('vocab_fingerprint')})")
    model = build_mllm(cfg["model"], vocab, cfg["num_tokens"], cfg.get("mllm", {}))
    model.load_state_dict(ckpt.module_state("model", use_ema=use_ema))
    tok = None
    if tokenizer:
        tok = load_tokenizer(cfg["tokenizer"]).eval()
        if tok.fingerprint() != cfg.get("tokenizer_fingerprint"):
            raise ValueError(f"tokenizer {cfg['tokenizer']} has changed since {ckpt.path} was trained (fingerprint "
                             f"{tok.fingerprint()} vs {cfg.get('tokenizer_fingerprint')})")
    return {"model": model.eval(), "vocab": vocab, "tokenizer": tok, "config": cfg, "run": root}


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


@torch.no_grad()
def generate(model, vocab: MultimodalVocab, tok, prompts: list[str], per_prompt: int = 1, *, seed: int = 0,
             cfg_scale: float | None = None, temperature: float | None = None, batch_size: int = 64,
             rng: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Images (len(prompts) * per_prompt, 3, H, W) in [-1, 1], prompt-major, from text prompts."""
    texts = [vocab.encode_text(p) for p in prompts for _ in range(per_prompt)]  # refuses unknown words first
    device = next(model.parameters()).device
    rng = rng or torch.Generator(device=device).manual_seed(seed)
    out = []
    for a, b in tqdm(list(_batches(len(texts), batch_size)), desc="generate", disable=not progress):
        codes = model.generate_images(texts[a:b], cfg_scale=cfg_scale, temperature=temperature, rng=rng)
        out.append(tok.detokenize(codes.to(device), rng=rng).float().clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def caption(model, vocab: MultimodalVocab, tok, images: torch.Tensor, *, batch_size: int = 64,
            temperature: float | None = None, rng: torch.Generator | None = None) -> list[str]:
    """Captions of images (B, 3, H, W) in [-1, 1]."""
    device = next(model.parameters()).device
    out: list[str] = []
    for a, b in _batches(len(images), batch_size):
        codes = tok.tokenize(images[a:b].to(device))  # (B, K)
        out.extend(vocab.decode_text(ids) for ids in model.caption(codes, temperature=temperature, rng=rng))
    return out


@torch.no_grad()
def edit(model, vocab: MultimodalVocab, tok, images: torch.Tensor, instructions: list[str], *,
         cfg_scale: float | None = None, temperature: float | None = None, batch_size: int = 64,
         rng: torch.Generator | None = None, seed: int = 0) -> torch.Tensor:
    """Edited images (B, 3, H, W) in [-1, 1] of source images (B, 3, H, W) and one instruction each."""
    if len(instructions) != len(images):
        raise ValueError(f"{len(instructions)} instructions for {len(images)} images")
    texts = [vocab.encode_text(t) for t in instructions]
    device = next(model.parameters()).device
    rng = rng or torch.Generator(device=device).manual_seed(seed)
    out = []
    for a, b in _batches(len(images), batch_size):
        src = tok.tokenize(images[a:b].to(device))  # (B, K)
        codes = model.edit(texts[a:b], src, cfg_scale=cfg_scale, temperature=temperature, rng=rng)
        out.append(tok.detokenize(codes, rng=rng).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def read_images(paths: list[str], image_size: int) -> torch.Tensor:
    """Image files -> (B, 3, S, S) in [-1, 1], resized to the tokenizer's side; one clear error per bad file."""
    from PIL import Image, UnidentifiedImageError

    from detok.data.transforms import to_tensor

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.BICUBIC)
                out.append(to_tensor(im))
        except FileNotFoundError:
            raise FileNotFoundError(f"no such image: {p}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def _reconstruct(tok, images: torch.Tensor, rng: torch.Generator, batch_size: int) -> torch.Tensor:
    """detokenize(tokenize(images)) in batches: what the image tokens can carry at best."""
    device = next(tok.parameters()).device
    out = []
    for a in range(0, len(images), batch_size):
        ids = tok.tokenize(images[a : a + batch_size].to(device))  # (B, K)
        out.append(tok.detokenize(ids, rng=rng).float().clamp(-1, 1).cpu())  # (B, 3, H, W)
    return torch.cat(out)


def evaluate_mllm_run(run: str | Path, ecfg=None, *, out: str | Path = "", device: str = "auto",
                      progress: bool = True) -> dict[str, Any]:
    """GenEval-style text-to-image score, caption accuracy and edit success of a run (EMA weights), with the
    shapes checker (trained once and cached); merges {"mllm": ...} into OUT/metrics.json and writes PNGs."""
    from detok.eval.mllm import MLLMEvalConfig, evaluate_mllm, save_edit_grid, save_prompt_grid
    from detok.eval.shapes_checker import load_or_train_checker
    from detok.io import merge_json

    ecfg = ecfg or MLLMEvalConfig()
    loaded = load_mllm(run)
    dev = pick_device(device)
    model, vocab, tok = loaded["model"].to(dev), loaded["vocab"], loaded["tokenizer"].to(dev)
    ecfg.image_size = tok.cfg.image_size
    ecfg.data_seed = loaded["config"].get("data", {}).get("seed", 0)
    checker = load_or_train_checker(ecfg.image_size, device=dev, progress=progress)
    t0 = time.perf_counter()
    result = evaluate_mllm(
        lambda prompts, rng: generate(model, vocab, tok, prompts, rng=rng, batch_size=ecfg.batch_size),
        lambda images: caption(model, vocab, tok, images, batch_size=ecfg.batch_size),
        lambda images, instructions, rng: edit(model, vocab, tok, images, instructions, rng=rng,
                                               batch_size=ecfg.batch_size),
        checker, ecfg, progress=progress, device=dev,
        reconstruct=lambda images, rng: _reconstruct(tok, images, rng, ecfg.batch_size))
    out_dir = Path(out) if out else loaded["run"]
    t2i = result["text_to_image"]
    grid = save_prompt_grid(t2i.pop("images"), [p["prompt"] for p in t2i["per_prompt"][:8]],
                            ecfg.images_per_prompt, out_dir / "geneval.png")
    src, res = result["edit"].pop("images")
    edits = save_edit_grid(src, res, result["edit"]["instructions"], out_dir / "edits.png")
    result.update(seconds=time.perf_counter() - t0, grids={"geneval": str(grid), "edits": str(edits)},
                  config=to_dict(ecfg), run=str(run), weights="ema")
    merge_json(out_dir / "metrics.json", {"mllm": result})
    return result
