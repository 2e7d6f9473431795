"""The bottom layer: checkpoints, atomic writes, cache folders, safe loading. Imports nothing of detok.

A checkpoint is a folder `RUN/checkpoints/step-00001000/` holding
- `weights.safetensors`: every saved module's state (`<module>.<name>`), raw (non-EMA) weights;
- `ema.safetensors`: EMA parameters by name (`<module>.<name>`);
- `state.pt`: step, optimizer states, RNG states, sampler position (tensors and plain types only,
  read back with `torch.load(weights_only=True)`: a checkpoint from someone else runs no code);
- `config.yaml`: the resolved run config; `meta.json`: kind, step, format.
It is written to a temporary folder and renamed into place, then `RUN/checkpoints/latest` is replaced
atomically, so a killed run always leaves the previous complete checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

FORMAT = 1
CACHE_ENV = "DETOK_CACHE"  # root of detok's caches (feature nets, reference statistics); ~/.cache/detok if unset


def cache_dir(kind: str) -> Path:
    """$DETOK_CACHE/kind, else ~/.cache/detok/kind (not created)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "detok")
    return root / kind


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """`write(tmp)` on a temp file beside `path`, fsync, then rename it over `path`: readers never see half.

    The temp file keeps `path`'s suffix (numpy and safetensors writers look at it) and is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON atomically (numpy / torch scalars as floats)."""
    return write_text(path, json.dumps(data, indent=2, default=float))


def merge_json(path: str | Path, update: dict[str, Any]) -> Path:
    """Add top-level sections to a JSON file (keeping the others), written atomically."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(update)
    return write_json(path, data)




def _flat(prefix_states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{k}": v.detach().cpu().contiguous().clone()
        for prefix, state in prefix_states.items()
        for k, v in state.items()
    }


def _unflat(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, name = key.split(".", 1)
        out.setdefault(prefix, {})[name] = value
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not plain tensors), named in the message."""


class DiskFullError(RuntimeError):
    """Writing failed because the disk is full; the message says where, and what was kept."""


def _is_disk_full(e: BaseException, folder: Path) -> bool:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    if any(s in str(e) for s in ("unexpected pos", "No space left", "os error 28")):  # torch.save / safetensors
        return True
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    kind: str,
    weights: dict[str, dict[str, torch.Tensor]],
    ema: dict[str, dict[str, torch.Tensor]] | None = None,
    state: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under RUN/checkpoints atomically, point `latest` at it, keep the newest `keep`.

    A failed write (a full disk, a killed process) leaves the previous checkpoint and `latest` as they were;
    a full disk raises DiskFullError after removing the half-written temporary folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(_flat(weights), str(tmp / "weights.safetensors"))
        if ema:
            save_file(_flat(ema), str(tmp / "ema.safetensors"))
        torch.save({"step": step, **(state or {})}, tmp / "state.pt")
        with open(tmp / "config.yaml", "w") as f:
            yaml.safe_dump(config or {}, f, sort_keys=False)
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "kind": kind, "step": step}))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    except Exception as e:  # OSError, torch's RuntimeError, safetensors' SafetensorError: clean up, then say why
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(e, root):
            kept = (root / "latest").read_text().strip() if (root / "latest").exists() else "none yet"
            raise DiskFullError(f"disk full while writing checkpoint step {step} to {root}; removed the partial "
                                f"write, kept the last checkpoint ({kept})") from e
        raise
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    write_text(root / "latest", final.name + "\n")
    if keep > 0:
        done = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file if it is truncated or not safetensors."""
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError, OSError, ...)
        raise CheckpointError(f"{path}: cannot be read as safetensors (truncated or corrupt: {e})") from e


def read_tensors(path: str | Path, what: str = "file") -> Any:
    """`torch.load(path, weights_only=True)` on CPU; CheckpointError naming the file if it holds code or is broken."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: this {what} cannot be read as plain tensors (it holds other Python "
                              f"objects, which detok does not unpickle): {first}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read this {what} ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else 'empty'})") from e


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its latest), a `checkpoints/` folder, or the folder itself."""
    p = Path(path)
    if (p / "weights.safetensors").exists():
        return p
    for root in (p / "checkpoints", p):
        latest = root / "latest"
        if latest.exists():
            ckpt = root / latest.read_text().strip()
            if (ckpt / "weights.safetensors").exists():
                return ckpt
    if not p.exists():
        raise FileNotFoundError(f"no such run or checkpoint: {p}")
    raise FileNotFoundError(f"{p} holds no detok checkpoint (expected weights.safetensors or checkpoints/latest)")


class Checkpoint:
    """A loaded checkpoint: config, meta, weights / EMA by module, and (lazily) the training state."""

    def __init__(self, path: str | Path) -> None:
        self.path = find_checkpoint(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.path / 'meta.json'}: cannot read the checkpoint's meta data ({e})") from e
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: checkpoint format {self.meta.get('format')} is not {FORMAT}")
        try:
            self.config = yaml.safe_load((self.path / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"{self.path / 'config.yaml'}: cannot read the checkpoint's config ({e})") from e
        self.weights = _unflat(read_safetensors(self.path / "weights.safetensors"))
        ema_file = self.path / "ema.safetensors"
        self.ema = _unflat(read_safetensors(ema_file)) if ema_file.exists() else {}

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def module_state(self, name: str, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """State dict of module `name`: raw buffers and weights, with EMA parameters laid over when asked."""
        if name not in self.weights:
            raise KeyError(f"{self.path} has no module {name!r} (has {sorted(self.weights)})")
        state = dict(self.weights[name])
        if use_ema:
            state.update(self.ema.get(name, {}))
        return state

    def training_state(self) -> dict[str, Any]:
        """Step, optimizer and RNG states; tensors and plain types only (no code runs on load)."""
        return read_tensors(self.path / "state.pt", "training state")
