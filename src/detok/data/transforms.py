"""Image loading with a bad-image policy, RGB conversion, ADM center crop, and [-1, 1] tensors.

Every folder dataset loads files through `load_image`, which turns anything PIL can decode into an
8-bit RGB image and raises `BadImageError` (naming the file and the reason) for anything it cannot.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

WHITE = (255, 255, 255)  # background that transparent pixels are composited onto
UINT16_TO_UINT8 = 257.0  # 65535 / 255: 16-bit greyscale ("I;16", "I") is scaled, not clipped


class WorkerTraceback(RuntimeError):
    """The full traceback of an error raised in a DataLoader worker: the `__cause__` of the clean error."""


def _one_line(text: str) -> str:
    """`text` joined onto one line (the house rule: bad input gives one clear error line)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


# the two message shapes raised below: load_image's and the skip policy's "every file failed"
_PATH_PATTERNS = (
    re.compile(r"\Acannot load image (.+?): "),
    re.compile(r"starting at index -?\d+ \((.+)\)\Z"),
)


def _path_in(message: str) -> str | None:
    """The file named by a BadImageError message of this module, or None (best effort, for worker errors)."""
    for pattern in _PATH_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


class BadImageError(RuntimeError):
    """An image file that cannot be read or decoded; the message names the file and the reason, on one line.

    Raised in a DataLoader worker, torch re-raises it in the main process as `BadImageError(text)`, text being
    "Caught BadImageError in DataLoader worker process N.\nOriginal Traceback ..." (~30 lines). The
    constructor recognises that text and keeps only the original one-line message, so every loop over a
    DataLoader (trainer, encode, evaluation) reports the same single line as with num_workers=0; `path` is
    recovered from the message, `where` says which worker raised it, and the worker traceback is kept as
    `__cause__` (shown with DETOK_DEBUG=1).
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        where, worker_traceback = "", None
        original = _worker_message(message, type(self).__name__)
        if original is not None:
            where = message.split("\n", 1)[0].removeprefix(f"Caught {type(self).__name__} ").rstrip(".")
            worker_traceback, message = message, original
        message = _one_line(message)
        super().__init__(message)
        self.path = path if path is not None else (_path_in(message) if original is not None else None)
        self.where = where  # "in DataLoader worker process 1" for a worker's error, else ""
        if worker_traceback is not None:
            self.__cause__ = WorkerTraceback(worker_traceback)


def _worker_message(text: str, name: str) -> str | None:
    """The original message inside torch's ExceptionWrapper re-raise text for exception `name`, else None.

    The text is "Caught <name> <where>.\nOriginal Traceback (most recent call last): ..." ending with the line
    "<module>.<name>: <message>" (our messages are one line); the last such line is the error itself (earlier
    ones may belong to chained causes).
    """
    if not text.startswith(f"Caught {name} ") or "\nOriginal Traceback" not in text:
        return None
    lines = re.findall(rf"^(?:[\w.]+\.)?{re.escape(name)}: (.*)$", text, flags=re.M)
    return lines[-1] if lines else None


@contextlib.contextmanager
def _truncated_images(allow: bool) -> Iterator[None]:
    # PIL only has a process-wide switch; set it for this load and restore it afterwards.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allow
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _scaled_to_uint8(img: Image.Image) -> Image.Image:
    """A high-bit-depth greyscale image ("I;16*", "I", "F") as 8-bit "L", scaled rather than clipped."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        # float images: [0, 1] when they fit, otherwise taken as [0, 255]
        arr = arr * 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else arr
    else:
        arr = arr / UINT16_TO_UINT8
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # "L"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha is composited onto white, 16-bit data is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _scaled_to_uint8(img).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # "L", "1", "P", "CMYK", "YCbCr", ...


def load_image(path: str | os.PathLike[str], load_truncated: bool = False) -> Image.Image:
    """Open, fully decode and convert one file to RGB; any failure raises BadImageError naming the file.

    A multi-frame file (animated GIF / WebP / APNG, multi-page TIFF) gives its first frame, where Image.open
    leaves it.
    """
    path = os.fspath(path)
    try:
        with _truncated_images(load_truncated), open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now, inside the try, so truncation surfaces here
            return to_rgb(img)
    except FileNotFoundError as e:
        raise BadImageError(f"cannot load image {path}: file not found", path) from e
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, EOFError, struct.error, ...
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "empty file"
        elif isinstance(e, UnidentifiedImageError):  # its own text is "<_io.BufferedReader name=...>"
            reason = "not an image file Pillow can identify (unknown format or corrupt header)"
        elif isinstance(e, OSError) and "truncated" in str(e):
            reason = f"truncated file ({e}); set load_truncated=true to accept it"
        else:
            reason = f"{type(e).__name__}: {e}"
        raise BadImageError(f"cannot load image {path}: {reason}", path) from e


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM / guided-diffusion center crop: BOX-halve while min side >= 2*S, BICUBIC to min side S, crop S x S."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.Resampling.BICUBIC
    )
    left = (pil_image.size[0] - image_size) // 2
    top = (pil_image.size[1] - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float tensor (3, H, W) in [-1, 1], equal to ToTensor then Normalize(0.5, 0.5).

    Written with torch alone so that `import detok.data` does not pay torchvision's import time.
    """
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))  # (H, W, 3)
    return x.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)  # (3, H, W)


def to_pil(x: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] back to an 8-bit RGB PIL image (rounded)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())  # (H, W, 3)
