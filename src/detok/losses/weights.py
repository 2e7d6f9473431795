"""Locate pretrained weight files on local disk; detok never downloads anything at run time."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

WEIGHTS_ENV_VAR = "DETOK_WEIGHTS_DIR"
USER_WEIGHTS_DIR = "~/.cache/detok/weights"
RANDOM_INIT_HINT = (
    "set perceptual_pretrained=false to use randomly initialised networks (tests, CPU smoke runs)"
)


def search_dirs() -> list[Path]:
    """Folders searched, in order: $DETOK_WEIGHTS_DIR, ~/.cache/detok/weights, $TORCH_HOME/hub/checkpoints."""
    dirs = []
    env = os.environ.get(WEIGHTS_ENV_VAR, "")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path(USER_WEIGHTS_DIR).expanduser())
    # torch.hub.get_dir() honours $TORCH_HOME (default ~/.cache/torch); torchvision caches downloads here
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def find_weights(
    filename: str,
    explicit: str = "",
    what: str = "",
    *,
    key: str = "",
    source: str = "",
    alternative: str = RANDOM_INIT_HINT,
) -> Path:
    """Path of a local weight file: `explicit` if given, else the first `filename` found in `search_dirs()`.

    `key` names the config key that takes an explicit path, `source` says where the file can be obtained and
    `alternative` is a further way out; all three only serve the error message.
    """
    label = what or filename
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            where = f" (config key {key})" if key else ""
            raise FileNotFoundError(
                f"{label}: the weight file given explicitly{where} does not exist: {path}"
            )
        return path
    dirs = search_dirs()
    for folder in dirs:
        path = folder / filename
        if path.is_file():
            return path
    searched = "\n".join(f"  - {d}" for d in dirs)
    fixes = [
        f"put {filename} into {USER_WEIGHTS_DIR}/ (or into the folder named by ${WEIGHTS_ENV_VAR})",
        f"pass its path with the config key {key}" if key else "pass its path explicitly",
    ]
    if alternative:
        fixes.append(alternative)
    origin = f"\nThe file is available from {source}." if source else ""
    raise FileNotFoundError(
        f"{label}: weight file {filename!r} not found (detok never downloads weights). Searched:\n{searched}"
        f"{origin}\nTo fix: " + "; or ".join(fixes) + "."
    )


def package_file(package: str, *parts: str) -> Path | None:
    """A data file shipped inside an installed package, located without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location, *parts)
        if path.is_file():
            return path
    return None
