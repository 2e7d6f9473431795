"""Reference statistics for generation metrics: `.npz` files in the field's layouts.

Two layouts are read:

- statistics files (torch-fidelity's `fid_statistics_file`, MAR's `adm_in256_stats.npz`, ours): `mu` (D,)
  and `sigma` (D, D). Ours add optional keys that other readers ignore: `n` (int), `feature_net` and
  `weights_sha256` (strings), `mu_s` / `sigma_s` (sFID statistics) and `features` (N, D) for precision /
  recall.
- ADM reference batches (`VIRTUAL_imagenet256_labeled.npz`, ...): `arr_0` uint8 images (N, H, W, 3), plus
  precomputed TF-Inception statistics `mu`, `sigma` (pool_3) and `mu_s`, `sigma_s` (mixed_6/conv, sFID).
  ADM's evaluator itself recomputes the statistics from `arr_0` when `mu` is absent; so do we (`FID` and
  `PrecisionRecall` run their feature net over `Reference.images()`).

`load_reference(path)` returns a `Reference` with a sha256 of the file, which every metric reports.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detok.eval.features import file_sha256
from detok.io import atomic_write

STATS_KEYS = ("mu", "sigma")  # torch-fidelity / MAR / ADM
SPATIAL_KEYS = ("mu_s", "sigma_s")  # ADM's sFID statistics
IMAGES_KEY = "arr_0"  # ADM's reference batch images (N, H, W, 3) uint8
EXTRA_KEYS = ("n", "feature_net", "weights_sha256", "features")  # ours, optional when reading


@dataclass
class Reference:
    """Reference statistics (float64), optional images / features, and where they came from."""

    mu: np.ndarray | None = None  # (D,)
    sigma: np.ndarray | None = None  # (D, D)
    mu_s: np.ndarray | None = None  # (D_s,) sFID statistics
    sigma_s: np.ndarray | None = None  # (D_s, D_s)
    features: np.ndarray | None = None  # (N, D) pool features (precision / recall)
    n: int | None = None  # samples behind mu / sigma, when recorded
    feature_net: str | None = None  # name of the feature net that made the statistics, when recorded
    weights_sha256: str | None = None  # its weights, when recorded
    sha256: str | None = None  # of the file (16 hex)
    path: str | None = None
    num_images: int = 0  # images stored under `arr_0` (ADM batches); read with `images()`

    @classmethod
    def from_features(cls, features: np.ndarray, spatial: np.ndarray | None = None, **meta: Any) -> Reference:
        """Statistics (and the features themselves, for precision / recall) from (N, D) features."""
        from detok.eval.frechet import gaussian_stats

        mu, sigma = gaussian_stats(features)
        mu_s, sigma_s = gaussian_stats(spatial) if spatial is not None else (None, None)
        return cls(mu, sigma, mu_s, sigma_s, np.asarray(features, np.float32), n=len(features), **meta)

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stored uint8 images [start:stop] (N, H, W, 3) (ADM layout), read without loading the rest."""
        stop = self.num_images if stop is None else min(stop, self.num_images)
        batches = list(self.iter_images(max(stop - start, 1), start, stop))
        return batches[0] if batches else np.zeros((0, 0, 0, 3), np.uint8)

    def iter_images(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Stream the stored uint8 images in batches (B, H, W, 3): reference batches are several GB."""
        if not self.num_images or self.path is None:
            raise ValueError(f"reference {self.path} holds no images (key {IMAGES_KEY!r})")
        stop = self.num_images if stop is None else min(stop, self.num_images)
        with zipfile.ZipFile(self.path) as z, z.open(f"{IMAGES_KEY}.npy") as f:
            shape, fortran, dtype = _read_npy_header(f)
            if fortran:  # rare: no streaming for column-major arrays
                with np.load(self.path) as data:
                    arr = data[IMAGES_KEY]
                yield from (arr[i : min(i + batch_size, stop)] for i in range(start, stop, batch_size))
                return
            item = int(np.prod(shape[1:])) * dtype.itemsize  # bytes per image
            f.seek(f.tell() + start * item)
            for i in range(start, stop, batch_size):
                count = min(batch_size, stop - i)
                data = f.read(count * item)
                yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])  # (B, H, W, 3)

    def recipe(self) -> dict[str, Any]:
        """What every metric reports about its reference."""
        return {
            "reference": Path(self.path).name if self.path else None,
            "reference_sha256": self.sha256,
            "reference_n": self.n if self.n is not None else (self.num_images or None),
        }


def _str(value: str | None) -> np.ndarray | None:
    return None if value is None else np.array(str(value))  # 0-d unicode array: loads without pickle


def save_stats(
    path: str | os.PathLike[str],
    mu: np.ndarray,
    sigma: np.ndarray,
    *,
    n: int | None = None,
    feature_net: str | None = None,
    weights_sha256: str | None = None,
    mu_s: np.ndarray | None = None,
    sigma_s: np.ndarray | None = None,
    features: np.ndarray | None = None,
) -> str:
    """Write statistics as `.npz` (torch-fidelity / MAR keys plus ours), atomically; returns the sha256."""
    arrays = {
        "mu": np.asarray(mu, np.float64),
        "sigma": np.asarray(sigma, np.float64),
        "mu_s": None if mu_s is None else np.asarray(mu_s, np.float64),
        "sigma_s": None if sigma_s is None else np.asarray(sigma_s, np.float64),
        "features": None if features is None else np.asarray(features, np.float32),
        "n": None if n is None else np.array(int(n), np.int64),
        "feature_net": _str(feature_net),
        "weights_sha256": _str(weights_sha256),
    }
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: reference statistics are written as .npz")
    atomic_write(path, lambda tmp: np.savez(tmp, **{k: v for k, v in arrays.items() if v is not None}))
    return file_sha256(str(path))


def save_reference(path: str | os.PathLike[str], ref: Reference) -> str:
    """Write a `Reference`'s statistics (and features, if any) as `.npz`; returns the file's sha256."""
    if ref.mu is None or ref.sigma is None:
        raise ValueError("the reference has no statistics to save")
    return save_stats(path, ref.mu, ref.sigma, n=ref.n, feature_net=ref.feature_net,
                      weights_sha256=ref.weights_sha256, mu_s=ref.mu_s, sigma_s=ref.sigma_s,
                      features=ref.features)  # fmt: skip


def load_reference(path: str | os.PathLike[str]) -> Reference:
    """Read a statistics file or an ADM reference batch (see the module docstring) into a `Reference`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz file (expected `mu`/`sigma` statistics or an ADM batch with `arr_0`)")
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        has_stats = all(k in keys for k in STATS_KEYS)
        if not has_stats and IMAGES_KEY not in keys:
            raise ValueError(
                f"{path}: neither reference statistics (keys {list(STATS_KEYS)}) nor an ADM reference batch "
                f"(key {IMAGES_KEY!r}, uint8 images N x H x W x 3); found keys {sorted(keys)}"
            )
        if not has_stats and any(k in keys for k in STATS_KEYS):
            raise ValueError(f"{path}: has only one of {list(STATS_KEYS)}; found keys {sorted(keys)}")

        def get(key: str, dtype: Any = np.float64) -> np.ndarray | None:
            return np.asarray(data[key], dtype) if key in keys else None

        ref = Reference(
            mu=get("mu"),
            sigma=get("sigma"),
            mu_s=get("mu_s"),
            sigma_s=get("sigma_s"),
            features=get("features", np.float32),
            n=int(data["n"]) if "n" in keys else None,
            feature_net=str(data["feature_net"]) if "feature_net" in keys else None,
            weights_sha256=str(data["weights_sha256"]) if "weights_sha256" in keys else None,
            path=str(path),
        )
        if IMAGES_KEY in keys:
            shape, dtype = _npy_header(path, IMAGES_KEY)
            if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
                raise ValueError(f"{path}: {IMAGES_KEY!r} is {dtype} {shape}, expected uint8 images (N, H, W, 3)")
            ref.num_images = int(shape[0])
    if ref.mu is not None:
        if ref.mu.ndim != 1 or ref.sigma.shape != (ref.mu.size, ref.mu.size):
            raise ValueError(f"{path}: mu {ref.mu.shape} and sigma {ref.sigma.shape} do not match")
    ref.sha256 = file_sha256(str(path))
    return ref


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return tuple(shape), fortran, dtype


def _npy_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array in an .npz without reading its data (reference batches are GBs)."""
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
        shape, _, dtype = _read_npy_header(f)
    return shape, dtype
