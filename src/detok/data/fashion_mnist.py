"""Fashion-MNIST from local idx files (the Debian package `dataset-fashion-mnist` installs them offline).

Search order: ROOT, ROOT/FashionMNIST/raw (torchvision's layout), then DEBIAN_DIR. Files may be gzipped.
With `download=True` and no local copy, torchvision downloads into ROOT (needs a network).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from detok.data.transforms import to_tensor

# where `apt-get install dataset-fashion-mnist` puts the four .gz idx files
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = [  # torchvision's FashionMNIST.classes
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CAPTIONS = [
    "a photo of a t-shirt",
    "a photo of trousers",
    "a photo of a pullover",
    "a photo of a dress",
    "a photo of a coat",
    "a photo of a sandal",
    "a photo of a shirt",
    "a photo of a sneaker",
    "a photo of a bag",
    "a photo of an ankle boot",
]
FILE_PREFIX = {"train": "train", "val": "t10k"}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (MNIST format, gzipped or not) into a numpy array."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(IDX_DTYPES[data[2]])
    count = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says {dims.tolist()} but the file has {len(data) - offset} data bytes"
        )
    return (
        np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def _file_names(split: str) -> tuple[str, str]:
    prefix = FILE_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def search_folders(root: str | os.PathLike[str] = "") -> list[Path]:
    """The folders searched for the idx files, in order."""
    folders = []
    if root:
        folders += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    folders.append(Path(DEBIAN_DIR))
    return folders


def find_fashion_mnist(root: str | os.PathLike[str] = "", split: str = "train") -> tuple[Path, Path] | None:
    """(images, labels) idx paths of a split from the first folder that has both, else None."""
    images_name, labels_name = _file_names(split)
    for folder in search_folders(root):
        images, labels = _find(folder, images_name), _find(folder, labels_name)
        if images and labels:
            return images, labels
    return None


def _missing_message(root: str | os.PathLike[str], split: str) -> str:
    names = ", ".join(f"{n}[.gz]" for n in _file_names(split))
    folders = "\n".join(f"  {f}" for f in search_folders(root))
    dest = f"{root}/FashionMNIST/raw" if root else "ROOT/FashionMNIST/raw (and set data.root=ROOT)"
    return (
        f"Fashion-MNIST {split} files not found. Expected {names} in one of:\n{folders}\n"
        f"Fix: `apt-get install dataset-fashion-mnist` (installs them into {DEBIAN_DIR}), or put the files "
        f"under {dest}, or set data.download=true where a network is available."
    )


class FashionMNISTDataset(Dataset):
    """Fashion-MNIST as RGB (3, S, S) in [-1, 1]: grey 28x28 replicated to 3 channels, bicubic to S."""

    class_names = list(CLASS_NAMES)
    num_classes = len(CLASS_NAMES)

    def __init__(
        self,
        root: str | os.PathLike[str] = "",
        split: Literal["train", "val"] = "train",
        image_size: int = 28,
        download: bool = False,
    ) -> None:
        if split not in FILE_PREFIX:
            raise ValueError(f"split must be one of {list(FILE_PREFIX)}, got {split!r}")
        found = find_fashion_mnist(root, split)
        if found is None and download:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(os.fspath(root) or "data", train=split == "train", download=True)
            found = find_fashion_mnist(root or "data", split)
        if found is None:
            raise FileNotFoundError(_missing_message(root, split))
        self.images_path, self.labels_path = found
        self.images = read_idx(self.images_path)  # (N, 28, 28) uint8
        self.labels = read_idx(self.labels_path).astype(np.int64)  # (N,)
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.images_path} {self.images.shape} and {self.labels_path} {self.labels.shape} do not match"
            )
        self.split = split
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item `index`: {"image" (3, S, S) in [-1, 1], "label", "index", "caption", "skipped"}."""
        index = int(index) + (len(self) if index < 0 else 0)
        img = Image.fromarray(self.images[index])  # "L"
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), resample=Image.Resampling.BICUBIC)
        label = int(self.labels[index])
        image: torch.Tensor = to_tensor(img.convert("RGB"))
        return {"image": image, "label": label, "index": index, "caption": CAPTIONS[label], "skipped": []}
