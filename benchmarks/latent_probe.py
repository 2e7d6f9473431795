"""Does a generator learn the class in latent space? A decoder-independent diagnostic.

A small conv classifier (the probe) is trained on a latent cache's real latents (normalised posterior samples,
the distribution a generator is trained on) with 10 % of the items held out; its held-out accuracy is the most
class the latents carry for this probe. Each generator run then samples class-balanced latents (labels i %
classes) and the probe classifies them: the accuracy says whether the generator drew the class, whatever the
tokenizer's decoder makes of it (the domain classifier on decoded samples conflates the two).

    python benchmarks/latent_probe.py CACHE GEN_RUN [GEN_RUN ...] [--cfg 2,4] [--n 500] [--out probe.json]

CPU, float32, seeded; a GEN_RUN is a generator run folder or one of its checkpoint folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HELD_OUT = 0.1  # fraction of the cache held out for the probe's own accuracy


def probe_net(channels: int, num_classes: int) -> nn.Module:
    """Three 3x3 convolutions (the last with stride 2), global average pool, linear: (B, C, h, w) -> logits."""
    return nn.Sequential(
        nn.Conv2d(channels, 64, 3, padding=1), nn.GELU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.GELU(),
        nn.Conv2d(128, 128, 3, padding=1, stride=2), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )  # fmt: skip


def train_probe(latents: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, num_classes: int, *, steps: int = 1500,
                batch: int = 128, lr: float = 2e-3, seed: int = 0) -> tuple[nn.Module, dict[str, float]]:
    """Fit the probe on normalised latents (N, C, h, w) with labels (N,); the last HELD_OUT of them are held out.

    `latents` may be a callable index -> (B, C, h, w) instead (fresh posterior samples per batch).
    Returns the probe (eval mode) and its train / held-out accuracy.
    """
    draw = latents if callable(latents) else (lambda idx: latents[idx])
    n = len(labels)
    n_test = max(1, int(round(HELD_OUT * n)))
    n_train = n - n_test
    g = torch.Generator().manual_seed(seed)
    first = draw(torch.arange(1))
    torch.manual_seed(seed)  # the probe's init
    net = probe_net(first.shape[1], num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (batch,), generator=g)
        loss = F.cross_entropy(net(draw(idx)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        test = torch.arange(n_train, n)
        train = torch.arange(min(n_train, 1000))
        acc = {"train": accuracy(net, draw(train), labels[train]), "held_out": accuracy(net, draw(test), labels[test])}
    return net, acc


@torch.no_grad()
def accuracy(net: nn.Module, latents: torch.Tensor, labels: torch.Tensor) -> float:
    return float((net(latents).argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", help="latent cache (detok encode) of the tokenizer the generators trained on")
    p.add_argument("generators", nargs="*", help="generator run or checkpoint folders")
    p.add_argument("--cfg", default="2.0", help="comma list of guidance scales")
    p.add_argument("--n", type=int, default=500, help="generated latents per run and scale")
    p.add_argument("--steps", default=None, help="sampler steps (default: the run's)")
    p.add_argument("--probe-steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="JSON file for the results")
    args = p.parse_args(argv)

    from detok.generators.load import load_generator
    from detok.tokenizers.latents import LatentCache

    cache = LatentCache(args.cache)
    if cache.discrete:
        raise SystemExit(f"latent_probe: {args.cache} holds token ids; the probe reads continuous latents")
    moments, labels = cache.data["moments"], cache.data["labels"]
    mean = torch.tensor(cache.meta["latent_mean"])[:, None, None]
    std = torch.tensor(cache.meta["latent_std"])[:, None, None]
    g = torch.Generator().manual_seed(args.seed + 1)

    def posterior_samples(idx: torch.Tensor) -> torch.Tensor:
        return (LatentCache.sample(moments[idx], g) - mean) / std  # (B, C, h, w), normalised as generators see them

    net, acc = train_probe(posterior_samples, labels, cache.num_classes, steps=args.probe_steps, seed=args.seed)
    result: dict[str, Any] = {
        "cache": str(args.cache), "num_classes": cache.num_classes, "items": len(labels),
        "probe": {"train_accuracy": acc["train"], "held_out_accuracy": acc["held_out"], "held_out": HELD_OUT,
                  "steps": args.probe_steps, "chance": 1.0 / cache.num_classes},
        "generators": [],
    }  # fmt: skip
    print(f"probe on {args.cache}: held-out accuracy {acc['held_out']:.3f} (train {acc['train']:.3f}, "
          f"chance {1 / cache.num_classes:.2f})")
    for run in args.generators:
        gen, _ = load_generator(run, use_ema=True)
        y = torch.arange(args.n) % cache.num_classes
        for scale in [float(s) for s in args.cfg.split(",")]:
            zs = []
            with torch.no_grad():
                for s in range(0, args.n, 100):
                    rng = torch.Generator().manual_seed(args.seed * 1_000_003 + s)
                    zs.append(gen.sample(len(y[s:s + 100]), y[s:s + 100], cfg_scale=scale, steps=args.steps, rng=rng))
                z = torch.cat(zs)  # (n, C, h, w), normalised
                pred = net(z).argmax(1)
            row = {"generator": str(run), "cfg": scale, "n": args.n, "latent_class_accuracy": float((pred == y).float().mean()),
                   "latent_std": float(z.std()), "predicted_histogram": torch.bincount(pred, minlength=cache.num_classes).tolist()}  # fmt: skip
            result["generators"].append(row)
            print(f"{run}  cfg {scale:g}: latent class accuracy {row['latent_class_accuracy']:.3f} "
                  f"(std of the latents {row['latent_std']:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
