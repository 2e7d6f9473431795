"""Image files on disk: class-subfolder trees (`imagefolder`) and `relative/path label` lists (`filelist`).

Both load through `load_image` and the ADM center crop. A file that cannot be loaded either fails the
run (`bad_images="fail"`, BadImageError naming the file) or is replaced by the next index
(`bad_images="skip"`, i+1, i+2, ... wrapping), and the bad paths are listed in the item's "skipped".
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from detok.data.transforms import BadImageError, center_crop_arr, load_image, to_tensor

log = logging.getLogger(__name__)

BadImagePolicy = Literal["skip", "fail"]

# Pillow formats whose files it can identify but not decode: MPEG reads only a video's header
UNDECODABLE_FORMATS = frozenset({"MPEG"})
OPENED_BY = {"MPO": "JPEG"}  # formats with no opener of their own: Pillow's JPEG opener returns MPO images
IGNORED_EXAMPLES = 3  # ignored files named in the scan's warning


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """Lower-case extensions (".gif", ".jpg", ...) of every format the installed Pillow can open and decode.

    torchvision's IMG_EXTENSIONS lists only nine, so an image folder silently lost .gif, .jfif, .avif, ...
    files. Pillow's registry also names save-only formats (PDF, ...: not in Image.OPEN) and stub formats that
    need a handler to decode (HDF5, GRIB, BUFR, WMF), which are left out here, as is UNDECODABLE_FORMATS.
    """
    from PIL import Image, ImageFile

    exts = []
    for ext, fmt in Image.registered_extensions().items():  # calls Image.init(): every plugin registered
        opener = Image.OPEN.get(OPENED_BY.get(fmt, fmt), (None,))[0]
        if opener is None or fmt in UNDECODABLE_FORMATS:
            continue
        if isinstance(opener, type) and issubclass(opener, ImageFile.StubImageFile):
            continue
        exts.append(ext.lower())
    return tuple(sorted(set(exts)))


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file's extension is one Pillow opens (see image_extensions), case-insensitively."""
    return os.fspath(path).lower().endswith(image_extensions())


def class_caption(name: str) -> str:
    """A deterministic caption for a class name: 'golden_retriever' -> 'an image of a golden retriever'."""
    text = name.replace("_", " ").strip()
    return f"an image of {'an' if text[:1].lower() in 'aeiou' else 'a'} {text}"


class ImageFileDataset(Dataset):
    """(path, label) samples -> {"image", "label", "index", "caption", "skipped"} with the bad-image policy."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        class_names: list[str],
        image_size: int = 256,
        bad_images: BadImagePolicy = "skip",
        load_truncated: bool = False,
    ) -> None:
        if bad_images not in ("skip", "fail"):
            raise ValueError(f"bad_images must be 'skip' or 'fail', got {bad_images!r}")
        self.samples = samples
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.image_size = image_size
        self.bad_images = bad_images
        self.load_truncated = load_truncated

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """The cropped (3, S, S) tensor of sample `index`; raises BadImageError for an unreadable file."""
        path, _ = self.samples[index]
        img = load_image(path, load_truncated=self.load_truncated)
        return to_tensor(center_crop_arr(img, self.image_size))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item `index`; under the skip policy a bad file is replaced by the next loadable one.

        "index" is the requested position; the file actually used is `(index + len(skipped)) % len(self)`.
        """
        n, index = len(self.samples), int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index = index % n
        skipped: list[str] = []
        for offset in range(n):
            j = (index + offset) % n
            try:
                image = self.load(j)
            except BadImageError as e:
                if self.bad_images == "fail":
                    raise
                log.warning("skipping bad image %s (index %d): %s", self.samples[j][0], j, e)
                skipped.append(self.samples[j][0])
                continue
            label = self.samples[j][1]
            name = self.class_names[label] if 0 <= label < self.num_classes else str(label)
            return {
                "image": image,
                "label": label,
                "index": index,
                "caption": class_caption(name),
                "skipped": skipped,
            }
        raise BadImageError(
            f"no loadable image in the dataset: all {n} files failed, starting at index {index} "
            f"({skipped[0]})",
            skipped[0],
        )


class ImageFolderDataset(ImageFileDataset):
    """root/<class>/<image>: classes are the sorted subfolder names (torchvision ImageFolder layout)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 256,
        bad_images: BadImagePolicy = "skip",
        load_truncated: bool = False,
        classes_from: str | os.PathLike[str] | None = None,
    ) -> None:
        # torchvision's ImageFolder helpers; imported here so `import detok.data` stays light
        from torchvision.datasets.folder import find_classes, make_dataset

        self.root = os.fspath(root)
        # classes_from: take the class list from another folder (the val split uses the train classes)
        _, class_to_idx = find_classes(os.fspath(classes_from or root))
        ignored: list[str] = []

        def keep(path: str) -> bool:
            if is_image_file(path):
                return True
            if not os.path.basename(path).startswith("."):  # hidden files (.DS_Store, ...) go unmentioned
                ignored.append(path)
            return False

        # allow_empty: a class folder without images is fine (its label still exists)
        samples = make_dataset(self.root, class_to_idx, is_valid_file=keep, allow_empty=True)
        self.ignored = sorted(os.path.relpath(p, self.root) for p in ignored)  # not images by extension
        if self.ignored:
            more = ", ..." if len(self.ignored) > IGNORED_EXAMPLES else ""
            examples = ", ".join(self.ignored[:IGNORED_EXAMPLES]) + more
            log.warning(
                "%s: ignored %d file(s) whose extension is not an image format Pillow opens: %s",
                self.root,
                len(self.ignored),
                examples,
            )
        if not samples:
            raise FileNotFoundError(
                f"no images under {self.root}: expected {self.root}/<class>/<image> with an image extension "
                f"Pillow opens (.jpg, .png, .gif, .webp, ...; {len(image_extensions())} in all)"
                + (
                    f"; {len(self.ignored)} other file(s) ignored, e.g. {self.ignored[0]}"
                    if self.ignored
                    else ""
                )
            )
        names = sorted(class_to_idx, key=class_to_idx.__getitem__)
        super().__init__(samples, names, image_size, bad_images, load_truncated)
        self.class_to_idx = class_to_idx


def read_file_list(path: str | os.PathLike[str], root: str | os.PathLike[str] = "") -> list[tuple[str, int]]:
    """Parse `relative/path label` lines (blank lines and # comments ignored) into (root/path, label)."""
    samples: list[tuple[str, int]] = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)  # the path may contain spaces, the label is the last field
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'relative/path label', got {text!r}")
            rel, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: label {label_text!r} is not an integer in line {text!r}"
                ) from None
            if label < 0:
                raise ValueError(f"{path}:{lineno}: label {label} is negative in line {text!r}")
            samples.append((os.path.join(os.fspath(root), rel), label))
    if not samples:
        raise ValueError(f"{path}: the file list has no entries")
    return samples


class FileListDataset(ImageFileDataset):
    """Images named by a text file of `relative/path label` lines, paths relative to `root` (l-DeTok's format)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        file_list: str | os.PathLike[str],
        image_size: int = 256,
        bad_images: BadImagePolicy = "skip",
        load_truncated: bool = False,
        num_classes: int | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.file_list = os.fspath(file_list)
        samples = read_file_list(self.file_list, self.root)
        max_label = max(label for _, label in samples)
        if num_classes is None:
            num_classes = max_label + 1
        elif max_label >= num_classes:
            raise ValueError(f"{file_list}: label {max_label} >= num_classes {num_classes}")
        names = [f"class {i}" for i in range(num_classes)]
        super().__init__(samples, names, image_size, bad_images, load_truncated)


def max_label(file_list: str | os.PathLike[str]) -> int:
    """The largest label in a file list (to size num_classes of a val list from the train list)."""
    return max(label for _, label in read_file_list(file_list))


def split_folder(root: str | os.PathLike[str], split: str) -> Path:
    """ROOT/<split> when it exists (ImageNet layout ROOT/train, ROOT/val), else ROOT itself."""
    sub = Path(root) / split
    return sub if sub.is_dir() else Path(root)
