"""Latent statistics and the latent cache written by `detok encode`.

The cache stores posterior moments (mean and log-variance, as MAR does, so that generators can
train on posterior samples) of each image and of its horizontal flip, in safetensors shards, with
`meta.json` recording the tokenizer's fingerprint and normalisation. A generator run against a cache
made by another tokenizer (or other statistics) stops with an error instead of training on the
wrong latent space.

Only real images are encoded: under data.bad_images=skip an unreadable file's item carries the next
file's image (which also comes as its own item), so such items are dropped and the bad files are listed in
meta "skipped"; each rank reads a disjoint stride of the dataset without DistributedSampler's padding, so
no image is counted twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from detok import dist
from detok.data.build import collate as detok_collate
from detok.data.build import own_images, skipped_paths
from detok.tokenizers.base import DiagonalGaussian, Tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SKIPPED_EXAMPLES = 3  # bad files named in the warning (meta.json lists them all)


class _RankStride(Sampler[int]):
    """Indices rank, rank + world, ... < n: disjoint per rank and covering the dataset once.

    DistributedSampler(drop_last=False) pads the last ranks with repeated indices, which would put some
    images twice into the cache and into the statistics; nothing here needs equal batch counts per rank
    (the only collectives come after the loops).
    """

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _loader(dataset: Dataset, batch_size: int, num_workers: int, collate: Callable | None = None) -> DataLoader:
    """Sequential batches of this rank's stride; a bad image in a worker raises the one-line BadImageError."""
    rank, world = dist.rank_world()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_RankStride(len(dataset), rank, world),
        num_workers=num_workers,
        collate_fn=collate or detok_collate,
    )


def _own(batch: dict[str, Any]) -> torch.Tensor:
    """Boolean mask (B,) of the batch items whose image is their own file (see detok.data.build.own_images)."""
    return torch.tensor(own_images(batch), dtype=torch.bool)


@torch.no_grad()
def latent_stats(
    tokenizer: Tokenizer,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    max_images: int = 0,
    collate=None,
    progress: bool = True,
    of: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) over the dataset (no flips), float64 sums, all ranks.

    Items the skip policy filled with another file's image are left out, so each readable image counts once.

    of="mean": statistics of the posterior means (upstream l-DeTok). of="sample": of the posterior samples the
    generators train on; same mean, variance var(mean) + E[posterior variance], so that a channel whose
    posterior noise dwarfs its signal (an under-trained or collapsed channel) is not scaled up to noise of std >> 1.
    """
    if of not in ("mean", "sample"):
        raise ValueError(f"latent stats of {of!r}: choose 'mean' (upstream) or 'sample'")
    tokenizer.eval()
    c = tokenizer.latent_channels
    acc = torch.zeros(4, c, dtype=torch.float64, device=device)  # count, sum, sum of squares, sum of variances
    seen = 0
    if max_images:  # read only the first max_images of this rank's stride: the bar counts those batches
        dataset = Subset(dataset, range(min(len(dataset), max_images * dist.rank_world()[1])))
    for batch in tqdm(
        _loader(dataset, batch_size, num_workers, collate), desc="latent stats", disable=not progress
    ):
        own = _own(batch)
        if not own.any():
            continue
        post = DiagonalGaussian(tokenizer.encode_moments(batch["image"][own].to(device)).double())
        z = post.mean  # (B', C, h, w), B' = own images of the batch
        acc[0] += z.shape[0] * z.shape[2] * z.shape[3]
        acc[1] += z.sum((0, 2, 3))
        acc[2] += z.pow(2).sum((0, 2, 3))
        acc[3] += post.logvar.exp().sum((0, 2, 3))
        seen += z.shape[0]
        if max_images and seen >= max_images:
            break
    dist.all_reduce_sum(acc)
    mean = acc[1] / acc[0]
    var = (acc[2] / acc[0] - mean.pow(2)).clamp_min(1e-12)
    if of == "sample":
        var = var + acc[3] / acc[0]
    return mean.float().cpu(), var.sqrt().float().cpu()


@torch.no_grad()
def write_cache(
    tokenizer: Tokenizer,
    dataset: Dataset,
    out_dir: str | Path,
    device: torch.device,
    *,
    source: dict[str, Any],
    batch_size: int = 64,
    shard_size: int = 4096,
    num_workers: int = 0,
    collate=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every readable image (and its h-flip) to posterior moments in shards; returns the meta dict.

    `collate` must keep "skipped" one list per item (detok.data.collate, the default). Under bad_images=skip
    the items that carry a substituted image are dropped: the cache holds each readable file once, meta
    "count" is their number, "skipped" the sorted paths of the unreadable files (all ranks merged) and
    "skipped_count" their number. Under bad_images=fail the one-line BadImageError naming the file propagates
    (also from DataLoader workers).
    """
    tokenizer.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = dist.rank_world()
    if rank == 0:  # an old cache here: its meta would describe shards this run overwrites, even if it stops
        (out / "meta.json").unlink(missing_ok=True)
    discrete = bool(getattr(tokenizer, "discrete", False))
    keys = ("ids", "ids_flip") if discrete else ("moments", "moments_flip")
    buf: dict[str, list[torch.Tensor]] = {keys[0]: [], keys[1]: [], "labels": [], "index": []}
    shards, count, k = [], 0, 0
    skipped: set[str] = set()

    def flush() -> None:
        nonlocal k
        if not buf["labels"]:
            return
        name = f"shard-r{rank:03d}-{k:05d}.safetensors"
        save_file({key: torch.cat(v).contiguous() for key, v in buf.items()}, str(out / name))
        shards.append(name)
        for v in buf.values():
            v.clear()
        k += 1

    for batch in tqdm(
        _loader(dataset, batch_size, num_workers, collate), desc="encode", disable=not progress
    ):
        skipped |= skipped_paths(batch)
        own = _own(batch)
        if not own.any():
            continue
        x = batch["image"][own].to(device)  # (B', 3, H, W): the items that are their own file
        if discrete:  # token ids (B', K) in AR order, int32 on disk
            buf["ids"].append(tokenizer.tokenize(x).int().cpu())
            buf["ids_flip"].append(tokenizer.tokenize(x.flip(-1)).int().cpu())
        else:
            buf["moments"].append(tokenizer.encode_moments(x).float().cpu())  # (B', 2C, h, w)
            buf["moments_flip"].append(tokenizer.encode_moments(x.flip(-1)).float().cpu())
        buf["labels"].append(torch.as_tensor(batch["label"]).long()[own])
        buf["index"].append(torch.as_tensor(batch["index"]).long()[own])
        count += x.shape[0]
        if sum(t.shape[0] for t in buf["labels"]) >= shard_size:
            flush()
    flush()
    part = {"shards": shards, "count": count, "skipped": sorted(skipped)}
    (out / f"shards-r{rank:03d}.json").write_text(json.dumps(part))
    dist.barrier()
    meta = {
        "format": CACHE_FORMAT,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "latent_shape": list(tokenizer.latent_shape),
        "num_classes": int(getattr(dataset, "num_classes", 0) or getattr(getattr(dataset, "dataset", None), "num_classes", 0)),  # noqa: E501  (a Subset: its parent's)
        "source": source,
    }
    if discrete:
        meta.update(tokens="discrete", num_tokens=tokenizer.num_tokens, codebook_size=tokenizer.codebook_size,
                    order=getattr(tokenizer, "token_order", "ar"))
    else:
        meta.update(latent_mean=tokenizer.latent_mean.tolist(), latent_std=tokenizer.latent_std.tolist())
    if rank == 0:
        # this run's ranks only: a folder reused from a run with more ranks may hold stale parts
        parts = [json.loads((out / f"shards-r{r:03d}.json").read_text()) for r in range(world)]
        meta["shards"] = [s for p in parts for s in p["shards"]]
        meta["count"] = sum(p["count"] for p in parts)
        bad = sorted({s for p in parts for s in p.get("skipped", [])})
        meta["skipped"], meta["skipped_count"] = bad, len(bad)
        if bad:
            more = ", ..." if len(bad) > SKIPPED_EXAMPLES else ""
            log.warning(
                "latent cache %s: %d unreadable image(s) skipped, not cached (listed in meta.json): %s%s",
                out, len(bad), ", ".join(bad[:SKIPPED_EXAMPLES]), more,
            )
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
    dist.barrier()
    return json.loads((out / "meta.json").read_text())


class CacheMismatch(ValueError):
    """A latent cache was made by a different tokenizer or normalisation than the one in use."""


class LatentCache(Dataset):
    """Cached posterior moments: items {"moments", "moments_flip", "label", "index"}; `sample()` draws latents."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(
                f"{self.path} is not a latent cache (no meta.json); make one with `detok encode`"
            )
        self.meta = json.loads(meta_file.read_text())
        data: dict[str, list[torch.Tensor]] = {}
        for name in self.meta["shards"]:
            for key, value in load_file(str(self.path / name)).items():
                data.setdefault(key, []).append(value)
        self.data = {k: torch.cat(v) for k, v in data.items()}
        count = int(self.meta.get("count", len(self)))
        if count != len(self):
            raise ValueError(
                f"latent cache {self.path} is inconsistent: meta.json counts {count} images but its shards "
                f"hold {len(self)}; re-run `detok encode`"
            )
        self.skipped: list[str] = list(self.meta.get("skipped", []))  # unreadable files left out of the cache

    def __len__(self) -> int:
        return int(self.data["labels"].shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes") or int(self.data["labels"].max()) + 1)

    @property
    def discrete(self) -> bool:
        """True for a cache of token ids (a DDT tokenizer's), False for posterior moments."""
        return self.meta.get("tokens") == "discrete"

    def __getitem__(self, i: int) -> dict[str, Any]:
        keys = ("ids", "ids_flip") if self.discrete else ("moments", "moments_flip")
        return {
            **{k: self.data[k][i].long() if self.discrete else self.data[k][i] for k in keys},
            "label": int(self.data["labels"][i]),
            "index": int(self.data["index"][i]),
        }

    def check(self, tokenizer) -> None:
        """Raise CacheMismatch unless the cache was made by this tokenizer with these latent statistics (or,
        for token ids, this tokenizer with this K and codebook size)."""
        fp = tokenizer.fingerprint()
        if self.meta["tokenizer_fingerprint"] != fp:
            raise CacheMismatch(
                f"latent cache {self.path} was made by tokenizer {self.meta['tokenizer_fingerprint']} "
                f"({self.meta['source'].get('tokenizer', '?')}), not by the tokenizer in use ({fp}); "
                "re-run `detok encode` with this tokenizer"
            )
        if self.discrete != bool(getattr(tokenizer, "discrete", False)):
            raise CacheMismatch(f"cache {self.path} holds {'token ids' if self.discrete else 'latents'}; the "
                                "tokenizer in use gives the other kind")
        if self.discrete:
            for key in ("num_tokens", "codebook_size"):
                if int(self.meta[key]) != int(getattr(tokenizer, key)):
                    raise CacheMismatch(f"token cache {self.path} has {key} {self.meta[key]}, the tokenizer in use "
                                        f"{getattr(tokenizer, key)}; re-run `detok encode`")
            return
        for key, mine in (("latent_mean", tokenizer.latent_mean), ("latent_std", tokenizer.latent_std)):
            if not torch.allclose(torch.tensor(self.meta[key]), mine.float().cpu(), rtol=1e-5, atol=1e-6):
                raise CacheMismatch(
                    f"latent cache {self.path} records other latent statistics ({key}) than the tokenizer in use; "
                    "re-run `detok encode` so that generator training and decoding share one normalisation"
                )

    @staticmethod
    def sample(moments: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """Posterior samples (B, C, h, w) from cached moments (B, 2C, h, w)."""
        return DiagonalGaussian(moments).sample(rng)
