"""Self-describing checkpoints, written atomically.

A checkpoint is a folder `RUN/checkpoints/step-00001000/` holding
- `weights.safetensors`: every saved module's state (`<module>.<name>`), raw (non-EMA) weights;
- `ema.safetensors`: EMA parameters by name (`<module>.<name>`);
- `state.pt`: step, optimizer states, RNG states, sampler position (tensors and plain types only);
- `config.yaml`: the resolved run config; `meta.json`: kind, step, format.
It is written to a temporary folder and renamed into place, then `RUN/checkpoints/latest` is replaced
atomically, so a killed run always leaves the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

FORMAT = 1


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


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    """Write checkpoint `step` under RUN/checkpoints atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
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
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    _write_text_atomic(root / "latest", final.name + "\n")
    if keep > 0:
        done = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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
        self.meta = json.loads((self.path / "meta.json").read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: checkpoint format {self.meta.get('format')} is not {FORMAT}")
        self.config = yaml.safe_load((self.path / "config.yaml").read_text()) or {}
        self.weights = _unflat(load_file(str(self.path / "weights.safetensors")))
        ema_file = self.path / "ema.safetensors"
        self.ema = _unflat(load_file(str(ema_file))) if ema_file.exists() else {}

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
        return torch.load(self.path / "state.pt", map_location="cpu", weights_only=False)
