"""DDT-LLaMA's "language-likeness" test at CPU scale: does shuffling token order hurt a language model more for DDT
tokens than for spatial VQ tokens?

DDT-LLaMA (arXiv 2504.14666) reports that an LLM trained on shuffled DDT sequences does much worse than on DDT's
own order, while shuffling spatial VQ tokens barely matters: DDT tokens are ordered like language (each depends
on the coarser ones before it), raster VQ tokens are not. Here, for two trained tokenizer runs with the same K
and codebook size V (a DDT run and a `vqvit_*` spatial VQ run):

1. encode the first `--images` train images (and their h-flips) to a token cache with `write_cache`, once in
   the tokenizer's own order (AR = coarse first for DDT, raster for VQ) and once with the positions reordered
   by one fixed random permutation (seed 0, the same for both tokenizers), and the first `--val-images`
   validation images to ids;
2. train the same class-conditional LM (`--model`, default ddt_ar_mini) on each cache with detok's own
   `train_generator` (the ddt_ar recipe, quickstart_ddt_ar: AdamW, cosine lr, EMA, h-flip of the cached ids;
   batch, steps and lr set here), so the four LMs differ only in the ids they see;
3. report each LM's validation cross-entropy per token (nats, EMA weights, the recipe's 0.99 decay), the
   increase caused by shuffling (absolute, and relative to the own order), and two references that no
   reordering changes: the unigram entropy of the ids and the mean per-position unigram entropy (plug-in
   estimates on the train cache: the cross-entropy of a model that ignores context, without and with the
   position).

The claim predicts a clearly larger shuffle increase for DDT than for VQ. Both tokenizers need K tokens of a
V-code codebook; ddt_mini has K 32, so train the DDT at tokenizer.num_tokens=64 to match vqvit_mini (8 x 8).

    detok train tokenizer --model ddt_mini --config quickstart_ddt tokenizer.num_tokens=64 --out runs/lang/ddt
    detok train tokenizer --model vqvit_mini --config quickstart_ddt --out runs/lang/vq
    python benchmarks/ddt_language.py --ddt runs/lang/ddt --vq runs/lang/vq     # writes docs/results/
    python benchmarks/ddt_language.py --ddt A --vq B --quick --out /tmp/l.json  # smoke test: 20 steps, 256 images

Caches and LM runs go to a temporary folder (deleted at the end) unless `--work DIR` (new or empty) keeps them.
Bad input (a run that is not a discrete tokenizer, different K or V, a non-empty --work) is refused with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from detok.data import build_dataset, collate
from detok.dist import pick_device
from detok.io import write_json
from detok.tokenizers.base import DiscreteTokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "results" / "ddt_language.json"
PERMUTATION_SEED = 0  # one fixed reordering of the K positions, shared by both tokenizers
QUICK = {"steps": 20, "images": 256, "val_images": 64}
EVAL_BATCH = 256  # images per tokenize / LM-scoring batch


class BadInput(ValueError):
    """Input the analysis cannot run on: reported as one line, exit code 2."""


class PermutedTokens(DiscreteTokenizer):
    """A discrete tokenizer whose ids come out with their positions reordered: ids[:, perm].

    It names the same token space as the tokenizer it wraps (its fingerprint, K, V), so `write_cache` writes a
    cache of reordered ids that `train_generator` accepts for that tokenizer: only the order differs.
    """

    def __init__(self, inner: DiscreteTokenizer, perm: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.perm = perm
        self.num_tokens, self.codebook_size = inner.num_tokens, inner.codebook_size

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.tokenize(images)[:, self.perm.to(images.device)]  # (B, K) reordered

    def fingerprint(self) -> str:
        return self.inner.fingerprint()


def load_pair(ddt_run: str, vq_run: str) -> dict[str, Any]:
    """{"ddt": tokenizer, "vq": tokenizer}, refused (BadInput) unless both are discrete with the same K and V."""
    from detok.tokenizers.load import load_tokenizer

    toks = {}
    for name, path in (("ddt", ddt_run), ("vq", vq_run)):
        try:
            tok = load_tokenizer(path)
        except (FileNotFoundError, ValueError, KeyError) as e:  # ValueError: ConfigError, CheckpointError too
            raise BadInput(f"--{name} {path}: {str(e).splitlines()[0]}") from None
        if not getattr(tok, "discrete", False):
            raise BadInput(f"--{name} {path} is a continuous tokenizer; the analysis needs discrete token ids")
        toks[name] = tok
    a, b = toks["ddt"], toks["vq"]
    for key, what in (("num_tokens", "K (tokens per image)"), ("codebook_size", "codebook size")):
        if getattr(a, key) != getattr(b, key):
            raise BadInput(f"the tokenizers differ in {what}: --ddt {ddt_run} has {getattr(a, key)}, --vq {vq_run} "
                           f"has {getattr(b, key)}; the comparison needs the same K and codebook size")
    return toks


def work_dir(path: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The folder for caches and LM runs: `path` (new or empty), or a temporary one deleted at the end."""
    if not path:
        tmp = tempfile.TemporaryDirectory(prefix="ddt_language-")
        return Path(tmp.name), tmp
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise BadInput(f"--work {p} is not an empty folder; give a new one (caches and LM runs are written there)")
    p.mkdir(parents=True, exist_ok=True)
    return p, None


@torch.no_grad()
def encode(tok: DiscreteTokenizer, dataset, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (n, K) long in the tokenizer's order, labels (n,)) of the first n images of `dataset`."""
    ids, labels = [], []
    for batch in DataLoader(Subset(dataset, range(n)), batch_size=EVAL_BATCH, collate_fn=collate):
        ids.append(tok.tokenize(batch["image"].to(device)).cpu())
        labels.append(torch.as_tensor(batch["label"]).long())
    return torch.cat(ids), torch.cat(labels)


def entropy(ids: torch.Tensor, codebook_size: int) -> float:
    """Plug-in entropy (nats) of the histogram of `ids` (any shape)."""
    p = torch.bincount(ids.flatten().long(), minlength=codebook_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


@torch.no_grad()
def cross_entropy(gen, ids: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Mean next-token cross-entropy (nats per token) and top-1 accuracy of an LM in eval mode over ids (N, K)."""
    gen.eval().to(device)
    total_ce = total_acc = 0.0
    for start in range(0, ids.shape[0], EVAL_BATCH):
        x, y = ids[start:start + EVAL_BATCH].to(device), labels[start:start + EVAL_BATCH].to(device)
        out = gen.loss(x, y)
        total_ce += float(out["ce"]) * x.shape[0]
        total_acc += float(out["accuracy"]) * x.shape[0]
    return {"ce": total_ce / ids.shape[0], "accuracy": total_acc / ids.shape[0]}


def train_lm(run: str, cache: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train `args.model` on a token cache with detok's own generator training (the ddt_ar recipe)."""
    from detok.runs.config import generator_config
    from detok.runs.train import train_generator

    cfg = generator_config(family="ddt_ar", overrides=[
        f"model={args.model}", f"tokenizer={run}", f"cache={cache}", f"train.out_dir={out}",
        f"train.max_steps={args.steps}", f"train.global_batch_size={args.batch}", f"train.ckpt_every={args.steps}",
        f"train.seed={args.seed}", f"optim.lr={args.lr}", "optim.schedule=cosine", "sample.per_class=0",
        "train.progress=false", f"train.device={args.device}"])
    return train_generator(cfg)


def analyse(name: str, run: str, tok, perm: torch.Tensor, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One tokenizer: caches in both orders, an LM on each, their validation cross-entropies."""
    from detok.generators.load import load_generator
    from detok.runs.reconstruct import data_config_for
    from detok.tokenizers.latents import LatentCache, write_cache
    from detok.tokenizers.load import run_config

    device = pick_device(args.device)
    tok = tok.eval().to(device)
    data_cfg = data_config_for(tok, run_config(run))
    train, val = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")
    n_train, n_val = min(args.images, len(train)), min(args.val_images, len(val))
    own = "ar (coarse first)" if getattr(tok, "prefix_order", True) else "raster"
    row: dict[str, Any] = {"run": run, "model": run_config(run).get("model", "?"), "num_tokens": tok.num_tokens,
                           "codebook_size": tok.codebook_size, "own_order": own, "data": data_cfg.name,
                           "train_images": n_train, "val_images": n_val, "orders": {}}
    t0 = time.perf_counter()
    val_ids, val_labels = encode(tok, val, n_val, device)
    train_ids, train_labels = encode(tok, train, min(n_train, n_val), device)  # the train-CE probe
    for order, encoder in (("own", tok), ("shuffled", PermutedTokens(tok, perm))):
        cache = work / name / f"cache-{order}"
        t_enc = time.perf_counter()
        write_cache(encoder, Subset(train, range(n_train)), cache, device, batch_size=EVAL_BATCH, collate=collate,
                    progress=False, source={"tokenizer": run, "data": data_cfg.name, "split": "train",
                                            "order": order, "permutation": perm.tolist() if order != "own" else None})
        encode_s = time.perf_counter() - t_enc
        if order == "own":
            ids = LatentCache(cache).data["ids"]  # (n_train, K) own order, the references' sample
            row["unigram_entropy"] = entropy(ids, tok.codebook_size)
            row["positional_unigram_entropy"] = sum(entropy(ids[:, k], tok.codebook_size)
                                                    for k in range(ids.shape[1])) / ids.shape[1]
        print(f"[ddt_language] {name}: training the LM on {order} order ({n_train} images, {args.steps} steps)",
              flush=True)
        summary = train_lm(run, cache, work / name / f"lm-{order}", args)
        gen, _ = load_generator(work / name / f"lm-{order}")  # EMA weights
        reorder = perm if order == "shuffled" else torch.arange(tok.num_tokens)
        v = cross_entropy(gen, val_ids[:, reorder], val_labels, device)
        t = cross_entropy(gen, train_ids[:, reorder], train_labels, device)
        row["orders"][order] = {"val_ce": v["ce"], "val_accuracy": v["accuracy"], "train_ce": t["ce"],
                                "train_ce_images": train_ids.shape[0], "lm_steps": summary["steps"],
                                "lm_seconds": summary["seconds"], "encode_seconds": encode_s,
                                "final_train_loss": summary.get("final", {}).get("ce")}
    own_ce, shuf_ce = row["orders"]["own"]["val_ce"], row["orders"]["shuffled"]["val_ce"]
    row["shuffle_increase"] = {"abs": shuf_ce - own_ce, "rel": (shuf_ce - own_ce) / own_ce}
    row["seconds"] = time.perf_counter() - t0
    return row


def print_table(result: dict[str, Any]) -> None:
    """One line per tokenizer: references, the two validation cross-entropies, the shuffle increase."""
    head = (f"{'tokenizer':<10}{'K':>5}{'V':>6}  {'order':<18}{'unigram H':>10}{'pos. H':>8}"
            f"{'CE own':>9}{'CE shuffled':>13}{'increase':>10}{'rel':>8}")
    print(head)
    print("-" * len(head))
    for name, r in result["tokenizers"].items():
        inc = r["shuffle_increase"]
        print(f"{name:<10}{r['num_tokens']:>5}{r['codebook_size']:>6}  {r['own_order']:<18}"
              f"{r['unigram_entropy']:>10.3f}{r['positional_unigram_entropy']:>8.3f}"
              f"{r['orders']['own']['val_ce']:>9.3f}{r['orders']['shuffled']['val_ce']:>13.3f}"
              f"{inc['abs']:>+10.3f}{100 * inc['rel']:>+7.1f}%")
    print("(validation cross-entropy per token in nats, EMA weights; H = plug-in unigram entropies of the train ids)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ddt", required=True, metavar="RUN", help="DDT tokenizer run folder")
    p.add_argument("--vq", required=True, metavar="RUN", help="spatial VQ (vqvit_*) tokenizer run folder")
    p.add_argument("--images", type=int, default=10000, help="train images encoded for the LMs (first N)")
    p.add_argument("--val-images", type=int, default=1000, help="validation images scored (first N)")
    p.add_argument("--steps", type=int, default=600, help="LM training steps")
    p.add_argument("--batch", type=int, default=64, help="LM batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="LM peak learning rate (AdamW, cosine to 0)")
    p.add_argument("--model", default="ddt_ar_mini", help="the LM (a ddt_ar registry name)")
    p.add_argument("--seed", type=int, default=0, help="LM training seed (the permutation's seed is fixed: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--work", default="", help="keep caches and LM runs in this new or empty folder")
    p.add_argument("--out", default="", help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['steps']} LM steps, {QUICK['images']} images, {QUICK['val_images']} val")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.images, args.val_images = QUICK["steps"], QUICK["images"], QUICK["val_images"]
    for key in ("images", "val_images", "steps", "batch", "threads"):
        if getattr(args, key) < 1:
            raise BadInput(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    toks = load_pair(args.ddt, args.vq)
    out = Path(args.out) if args.out else DEFAULT_OUT
    work, tmp = work_dir(args.work)
    k = toks["ddt"].num_tokens
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(PERMUTATION_SEED))
    result: dict[str, Any] = {
        "command": command,
        "settings": {key: v for key, v in vars(args).items()} | {"permutation_seed": PERMUTATION_SEED,
                                                                 "lm_recipe": "quickstart_ddt_ar", "lm_weights": "ema"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "cores_online": os.cpu_count()},
        "permutation": perm.tolist(),
        "tokenizers": {},
    }
    t0 = time.perf_counter()
    try:
        for name, run in (("ddt", args.ddt), ("vq", args.vq)):
            result["tokenizers"][name] = analyse(name, run, toks[name], perm, work, args)
            result["seconds"] = time.perf_counter() - t0
            write_json(out, {**result, "partial": len(result["tokenizers"]) < 2})
    finally:
        if tmp is not None:
            tmp.cleanup()
    ddt_inc, vq_inc = (result["tokenizers"][n]["shuffle_increase"]["abs"] for n in ("ddt", "vq"))
    result["ddt_minus_vq_increase"] = ddt_inc - vq_inc
    write_json(out, result)
    print_table(result)
    print(f"\nshuffle increase DDT - VQ: {ddt_inc - vq_inc:+.3f} nats/token\nwrote {out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except BadInput as err:  # one line, no traceback, nothing written
        print(f"ddt_language.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
