"""DataConfig, build_dataset(cfg, split) and the batch collate function shared by every dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset, default_collate

from detok.config import option
from detok.data.fashion_mnist import FashionMNISTDataset
from detok.data.folder import FileListDataset, ImageFolderDataset, max_label, split_folder
from detok.data.shapes import ShapesDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclass
class DataConfig:
    """Which dataset to read and how; every item is {"image", "label", "index", "caption", "skipped"}."""

    name: Literal["shapes", "fashion-mnist", "imagefolder", "filelist"] = option(
        "shapes", "dataset: shapes (built in), fashion-mnist, imagefolder (ROOT/<class>/<img>), filelist"
    )
    root: str = option("", "folder of images (imagefolder / filelist), or the Fashion-MNIST folder")
    file_list: str = option("", "filelist: text file of `relative/path label` lines, paths relative to root")
    val_file_list: str = option("", "filelist for split=val (empty: the train list is used, with a warning)")
    image_size: int = option(256, "side of the square images; 256 is the paper setting (ADM center crop)")
    hflip: bool = option(True, "random horizontal flip, applied to tensors by the training task (paper: on)")
    bad_images: Literal["skip", "fail"] = option(
        "skip", "unreadable image: skip (use the next index, record it in 'skipped') or fail (raise)"
    )
    load_truncated: bool = option(
        False, "accept truncated image files as PIL LOAD_TRUNCATED_IMAGES does (upstream l-DeTok: on)"
    )
    num_workers: int = option(2, "DataLoader worker processes")
    shapes_size: int = option(10000, "shapes: number of train images (val: shapes_size // 10)")
    seed: int = option(0, "shapes: generator seed (>= 0)")
    download: bool = option(
        False, "fashion-mnist: allow a torchvision download if no local files (needs network)"
    )


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate for every key but "skipped", which stays a list (one list of paths per item).

    default_collate cannot batch lists of different lengths (and transposes equal-length ones).
    """
    skipped = [list(item.get("skipped", [])) for item in batch]
    out = default_collate([{k: v for k, v in item.items() if k != "skipped"} for item in batch])
    out["skipped"] = skipped
    return out


def own_images(batch: dict[str, Any]) -> list[bool]:
    """Per item of a `collate`d batch: True when its image is its own file, False when it is a substitute.

    Under bad_images=skip a bad file i is replaced by the next loadable one (i+1, ...), which also appears as
    its own item; an item whose "skipped" list is empty is exactly file `index` (tried first, and it loaded),
    so keeping only those keeps every readable image once and no duplicates. Batches without a
    per-item "skipped" list (datasets without bad images) keep every item.
    """
    n = len(batch["image"])
    skipped = batch.get("skipped")
    if not isinstance(skipped, list) or len(skipped) != n:
        return [True] * n
    return [not s for s in skipped]


def skipped_paths(batch: dict[str, Any]) -> set[str]:
    """The bad files named by any item of a `collate`d batch (each item's "skipped" is a list of paths)."""
    skipped = batch.get("skipped")
    if not isinstance(skipped, list):
        return set()
    return {p for s in skipped for p in ([s] if isinstance(s, str) else s)}


def _imagefolder(cfg: DataConfig, split: str) -> ImageFolderDataset:
    train_dir = split_folder(cfg.root, "train")
    folder = split_folder(cfg.root, split)
    if split == "val" and folder == Path(cfg.root) and train_dir != Path(cfg.root):
        folder = train_dir  # ROOT/train exists but ROOT/val does not
    if split == "val" and folder == train_dir:
        log.warning("no %s/val folder: the val split uses the training images of %s", cfg.root, train_dir)
    # val labels follow the train classes
    return ImageFolderDataset(
        folder, cfg.image_size, cfg.bad_images, cfg.load_truncated, classes_from=train_dir
    )


def _filelist(cfg: DataConfig, split: str) -> FileListDataset:
    if not cfg.file_list:
        raise ValueError(
            "data.name=filelist needs data.file_list (a text file of `relative/path label` lines)"
        )
    file_list = cfg.file_list
    if split == "val":
        if cfg.val_file_list:
            file_list = cfg.val_file_list
        else:
            log.warning("no data.val_file_list: the val split uses the train list %s", cfg.file_list)
    lists = [cfg.file_list] + ([cfg.val_file_list] if cfg.val_file_list else [])
    num_classes = 1 + max(max_label(p) for p in lists)  # the same classes for train and val
    return FileListDataset(
        cfg.root, file_list, cfg.image_size, cfg.bad_images, cfg.load_truncated, num_classes
    )


def build_dataset(cfg: DataConfig, split: Literal["train", "val"] = "train") -> Dataset:
    """The dataset named by cfg.name for a split; items are dicts, batch them with `collate`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.name == "shapes":
        size = cfg.shapes_size if split == "train" else cfg.shapes_size // 10
        return ShapesDataset(size=size, image_size=cfg.image_size, seed=cfg.seed, split=split)
    if cfg.name == "fashion-mnist":
        return FashionMNISTDataset(cfg.root, split, cfg.image_size, cfg.download)
    if cfg.name == "imagefolder":
        if not cfg.root:
            raise ValueError("data.name=imagefolder needs data.root (a folder of ROOT/<class>/<image>)")
        return _imagefolder(cfg, split)
    if cfg.name == "filelist":
        return _filelist(cfg, split)
    raise ValueError(
        f"unknown dataset {cfg.name!r}; choose one of shapes, fashion-mnist, imagefolder, filelist"
    )
