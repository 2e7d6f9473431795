"""Datasets (built-in shapes, Fashion-MNIST, image folders, file lists), the ADM crop and image loading.

    from detok.data import DataConfig, build_dataset, collate
    ds = build_dataset(DataConfig(name="shapes", image_size=32), split="train")
    loader = DataLoader(ds, batch_size=64, num_workers=2, collate_fn=collate)

Every item is {"image": (3, S, S) float in [-1, 1], "label": int, "index": int, "caption": str,
"skipped": list[str]}; use `collate` (not default_collate) so "skipped" stays one list per item.
"""

from detok.data.build import DataConfig, build_dataset, collate
from detok.data.fashion_mnist import DEBIAN_DIR, FashionMNISTDataset, read_idx
from detok.data.folder import FileListDataset, ImageFileDataset, ImageFolderDataset, read_file_list
from detok.data.shapes import ShapesDataset
from detok.data.transforms import BadImageError, center_crop_arr, load_image, to_pil, to_rgb, to_tensor

__all__ = [
    "DEBIAN_DIR",
    "BadImageError",
    "DataConfig",
    "FashionMNISTDataset",
    "FileListDataset",
    "ImageFileDataset",
    "ImageFolderDataset",
    "ShapesDataset",
    "build_dataset",
    "center_crop_arr",
    "collate",
    "load_image",
    "read_file_list",
    "read_idx",
    "to_pil",
    "to_rgb",
    "to_tensor",
]
