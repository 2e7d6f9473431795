"""Datasets (built-in shapes, Fashion-MNIST, image folders, file lists), the ADM crop and image loading.

    from detok.data import DataConfig, build_dataset, collate
    ds = build_dataset(DataConfig(name="shapes", image_size=32), split="train")
    loader = DataLoader(ds, batch_size=64, num_workers=2, collate_fn=collate)

Every item is {"image": (3, S, S) float in [-1, 1], "label": int, "index": int, "caption": str,
"skipped": list[str]}; use `collate` (not default_collate) so "skipped" stays one list per item.
Under data.bad_images=skip an item with a non-empty "skipped" carries another file's image;
`own_images(batch)` marks the items that are their own file (what a cache or statistics should keep).
A BadImageError raised in a DataLoader worker reaches the main process with the one-line message it has
without workers.
"""

from detok.data.build import DataConfig, build_dataset, collate, own_images, skipped_paths
from detok.data.fashion_mnist import DEBIAN_DIR, FashionMNISTDataset, read_idx
from detok.data.folder import (
    FileListDataset,
    ImageFileDataset,
    ImageFolderDataset,
    image_extensions,
    is_image_file,
    read_file_list,
)
from detok.data.shapes import ShapesDataset
from detok.data.transforms import (
    BadImageError,
    WorkerTraceback,
    center_crop_arr,
    load_image,
    to_pil,
    to_rgb,
    to_tensor,
)

__all__ = [
    "DEBIAN_DIR",
    "BadImageError",
    "DataConfig",
    "FashionMNISTDataset",
    "FileListDataset",
    "ImageFileDataset",
    "ImageFolderDataset",
    "ShapesDataset",
    "WorkerTraceback",
    "build_dataset",
    "center_crop_arr",
    "collate",
    "image_extensions",
    "is_image_file",
    "load_image",
    "own_images",
    "read_file_list",
    "read_idx",
    "skipped_paths",
    "to_pil",
    "to_rgb",
    "to_tensor",
]
