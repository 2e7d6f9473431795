"""The one training engine for every task (tokenizers, generators).

The engine owns device and DDP, autocast, optimizers and LR schedules, gradient clipping, EMA,
checkpoint / exact resume, the data order, logging and the progress bar. A Task owns the science:
`step(batch, generator)` returns the losses to minimise, one per optimizer, in update order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from detok import dist
from detok.engine.ema import EMA
from detok.io import Checkpoint, find_checkpoint, save_checkpoint
from detok.nn.optim import lr_at, split_decay

log = logging.getLogger("detok")

# Parameter-name substrings excluded from weight decay (upstream l-DeTok's list; also every 1-D tensor).
UPSTREAM_NO_DECAY = ["ln", "bias", "embedding", "norm", "gamma", "embed", "token", "diffloss"]


@dataclass
class OptimConfig:
    """AdamW and its per-step schedule; lr = base_lr * global_batch / 256 unless `lr` is set."""

    base_lr: float = 1e-4
    lr: float = 0.0
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = field(default=50.0, metadata={"help": "paper: 25% of 200 epochs"})
    min_lr: float = 0.0
    grad_clip: float = 3.0
    no_decay: list[str] = field(default_factory=lambda: list(UPSTREAM_NO_DECAY))


@dataclass
class TrainConfig:
    """Run length, batch, EMA, precision, logging and checkpoint cadence."""

    out_dir: str = "runs/tokenizer"
    global_batch_size: int = field(default=1024, metadata={"help": "summed over all processes (paper: 1024)"})
    epochs: float = 200.0
    max_steps: int = field(default=0, metadata={"help": "> 0 overrides epochs"})
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto", metadata={"help": "auto: bf16 autocast on CUDA, float32 on CPU"}
    )
    log_every: int = 20
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    tensorboard: bool = False
    max_bad_steps: int = field(default=5, metadata={"help": "stop after this many non-finite steps in a row"})
    progress: bool = True


class Task(Protocol):
    """What the engine trains. Modules named in `modules()` are checkpointed; `ema_module` gets an EMA."""

    ema_module: str

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizer_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]: ...

    def setup(self, info: dist.DistInfo, wrap) -> None: ...

    def step(self, batch: dict[str, Any], step: int, rng: torch.Generator) -> tuple[dict, dict]: ...


class NonFiniteLoss(RuntimeError):
    """Training produced non-finite losses for too many steps in a row."""


class StepSampler(Sampler[list[int]]):
    """Endless per-rank batches: epoch e is a permutation seeded by (seed, e), split across ranks.

    Starting at `start_step` skips the batches already consumed, so a resumed run sees exactly the
    data an uninterrupted run would have seen.
    """

    def __init__(self, n: int, per_rank: int, world: int, rank: int, seed: int, start_step: int = 0) -> None:
        self.n, self.per_rank, self.world, self.rank, self.seed = n, per_rank, world, rank, seed
        self.steps_per_epoch = n // (per_rank * world)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset of {n} images is smaller than one global batch of {per_rank * world}; "
                "lower train.global_batch_size or use more data"
            )
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            epoch, k = divmod(step, self.steps_per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            glob = self.per_rank * self.world
            for j in range(k, self.steps_per_epoch):
                chunk = perm[j * glob : (j + 1) * glob]  # the global batch of step j
                yield chunk[self.rank * self.per_rank : (self.rank + 1) * self.per_rank].tolist()
                step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs it for progress estimates
        return 2**62


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def rng_state(rng: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "task": rng.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    rng.set_state(state["task"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Hook(Protocol):
    """A periodic action inside `fit`: called on every rank after each step that is a multiple of `every`.

    It may read `trainer.modules` / `trainer.ema` (the live modules and their EMA) and returns numbers to
    log (written to metrics.jsonl by the main process) or None. It must not change the trained state.
    """

    every: int

    def __call__(self, trainer: Trainer, step: int) -> dict[str, float] | None: ...


class Trainer:
    """Runs a Task on a dataset: `Trainer(task, train_cfg, optim_cfg, kind, config).fit(dataset, resume)`."""

    def __init__(
        self,
        task: Task,
        train: TrainConfig,
        optim: OptimConfig,
        *,
        kind: str,
        config: dict[str, Any],
        collate=None,
        num_workers: int = 0,
        hooks: list[Hook] | None = None,
    ) -> None:
        self.task, self.cfg, self.optim_cfg = task, train, optim
        self.hooks = list(hooks or [])
        self.kind, self.config = kind, config
        self.collate, self.num_workers = collate, num_workers
        self.info = dist.init(train.device)
        self.run_dir = Path(train.out_dir)
        self.device = self.info.device

    # -- set-up ------------------------------------------------------------------------------------
    def _autocast(self):
        prec = self.cfg.precision
        if prec == "bf16" or (prec == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _wrap(self, module: nn.Module, find_unused: bool = False) -> nn.Module:
        if not self.info.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

    def _log(self, text: str) -> None:
        if self.info.is_main:
            tqdm.write(text)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, dataset: Dataset, resume: bool = False) -> dict[str, Any]:
        """Train to the configured length; returns a summary dict (also written as RUN/train_summary.json)."""
        cfg, info = self.cfg, self.info
        if cfg.global_batch_size % info.world:
            raise ValueError(f"global batch {cfg.global_batch_size} is not divisible by {info.world} processes")
        per_rank = cfg.global_batch_size // info.world
        n = len(dataset)  # type: ignore[arg-type]
        spe = n // cfg.global_batch_size
        if spe < 1:
            raise ValueError(
                f"dataset of {n} images is smaller than one global batch of {cfg.global_batch_size}; "
                "lower train.global_batch_size or use more data"
            )
        total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * spe))
        warmup = round(self.optim_cfg.warmup_epochs * spe)
        lr = self.optim_cfg.lr or self.optim_cfg.base_lr * cfg.global_batch_size / 256

        torch.manual_seed(cfg.seed * info.world + info.rank)
        rng = torch.Generator(device=self.device).manual_seed(cfg.seed * info.world + info.rank)
        modules = self.task.modules()
        for m in modules.values():
            m.to(self.device)
        self.task.setup(info, self._wrap)
        optimizers = {}
        for name, named in self.task.optimizer_params().items():
            groups = split_decay(named, self.optim_cfg.weight_decay, self.optim_cfg.no_decay)
            optimizers[name] = torch.optim.AdamW(groups, lr=lr, betas=self.optim_cfg.betas, foreach=True)
        ema = EMA(modules[self.task.ema_module], cfg.ema_decay)

        start = 0
        if resume:
            start = self._restore(modules, ema, optimizers, rng)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log(
            f"[detok] {self.kind}: {n} images, global batch {cfg.global_batch_size} = {info.world} process(es) x "
            f"{per_rank} per process, {spe} steps/epoch, {total} steps ({total / spe:.2f} epochs), "
            f"warmup {warmup} steps, peak lr {lr:.3g}, device {self.device}, "
            f"precision {'bf16 autocast' if not isinstance(self._autocast(), contextlib.nullcontext) else 'fp32'}"
            + (f", resuming at step {start}" if start else "")
        )

        sampler = StepSampler(n, per_rank, info.world, info.rank, cfg.seed, start)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        metrics_file = open(self.run_dir / "metrics.jsonl", "a") if info.is_main else None  # noqa: SIM115
        writer = self._tensorboard() if info.is_main and cfg.tensorboard else None
        bar = tqdm(total=total, initial=start, disable=not (info.is_main and cfg.progress), desc=self.kind)
        skipped: list[str] = []
        bad_streak, bad_total = 0, 0
        t0, seen, last = time.perf_counter(), 0, {}
        step = start
        data_iter = iter(loader)
        try:
            while step < total:
                batch = next(data_iter)
                for paths in batch.pop("skipped", []) or []:
                    skipped.extend([paths] if isinstance(paths, str) else paths)
                batch = _to_device(batch, self.device)
                cur_lr = lr_at(step, lr, total, warmup, self.optim_cfg.schedule, self.optim_cfg.min_lr)
                for opt in optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = cur_lr
                with self._autocast():
                    losses, logs = self.task.step(batch, step, rng)
                finite = all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())
                if dist.any_rank(not finite, self.device):
                    bad_streak, bad_total = bad_streak + 1, bad_total + 1
                    self._log(
                        f"[detok] step {step}: non-finite loss "
                        f"({ {k: float(v.detach()) for k, v in losses.items()} }); update skipped, "
                        f"last good checkpoint kept"
                    )
                    if bad_streak >= cfg.max_bad_steps:
                        raise NonFiniteLoss(
                            f"{bad_streak} non-finite steps in a row at step {step}; the last good checkpoint "
                            f"in {self.run_dir / 'checkpoints'} is untouched. Lower the lr or check the data."
                        )
                    step += 1
                    bar.update(1)
                    continue
                bad_streak = 0
                grad_norms = {}
                for name, loss in losses.items():
                    opt = optimizers[name]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    params = [p for g in opt.param_groups for p in g["params"]]
                    if self.optim_cfg.grad_clip > 0:
                        grad_norms[name] = float(torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip))
                    opt.step()
                ema.update(modules[self.task.ema_module])
                step += 1
                seen += cfg.global_batch_size
                bar.update(1)
                last = {k: float(v) for k, v in logs.items()}
                if step % cfg.log_every == 0 or step == total:
                    rec = {"step": step, "epoch": step / spe, "lr": cur_lr, **last}
                    rec.update({f"grad_norm_{k}": v for k, v in grad_norms.items()})
                    rec["img_per_s"] = seen / (time.perf_counter() - t0)
                    if metrics_file:
                        metrics_file.write(json.dumps(rec) + "\n")
                        metrics_file.flush()
                    if writer:
                        for k, v in rec.items():
                            writer.add_scalar(f"{self.kind}/{k}", v, step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(last.items())[:3]})
                if step % cfg.ckpt_every == 0 and step < total:
                    self._save(step, modules, ema, optimizers, rng)
                for hook in self.hooks:
                    if hook.every > 0 and step % hook.every == 0:
                        self.modules, self.ema = modules, ema
                        values = hook(self, step)  # every rank calls; the hook decides who works
                        if values and metrics_file:
                            metrics_file.write(json.dumps({"step": step, "epoch": step / spe, **values}) + "\n")
                            metrics_file.flush()
                        if values:
                            self._log(f"[detok] step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        finally:
            bar.close()
            if metrics_file:
                metrics_file.close()
            if writer:
                writer.close()
        seconds = time.perf_counter() - t0
        self.modules, self.ema = modules, ema
        if hasattr(self.task, "on_train_end"):
            self.task.on_train_end(self)
        self._save(step, modules, ema, optimizers, rng)
        summary = {
            "kind": self.kind,
            "steps": step,
            "epochs": step / spe,
            "seconds": seconds,
            "img_per_s": seen / seconds if seconds > 0 else 0.0,
            "global_batch_size": cfg.global_batch_size,
            "per_process_batch_size": per_rank,
            "processes": info.world,
            "final": last,
            "non_finite_steps": bad_total,
            "skipped_images": sorted(set(skipped)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if self.device.type == "cuda":
            summary["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if info.is_main:
            (self.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def ema_copy(self) -> nn.Module:
        """A deep copy of the EMA'd module carrying the EMA weights (after `fit`), in eval mode."""
        import copy

        model = copy.deepcopy(self.modules[self.task.ema_module])
        self.ema.copy_to(model)
        return model.eval()

    # -- checkpoints -------------------------------------------------------------------------------
    def _save(self, step, modules, ema, optimizers, rng) -> None:
        extra = getattr(self.task, "extra_state", lambda: {})()
        # RNG states differ per rank; each rank keeps its own in state-rank{r}.pt beside rank 0's checkpoint.
        if self.info.is_main:
            save_checkpoint(
                self.run_dir,
                step,
                kind=self.kind,
                weights={k: m.state_dict() for k, m in modules.items()},
                ema={self.task.ema_module: ema.state_dict()},
                state={
                    "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                    "rng": rng_state(rng),
                    "extra": extra,
                },
                config=self.config,
                keep=self.cfg.keep_checkpoints,
            )
        dist.barrier()
        if self.info.enabled:
            rank_dir = self.run_dir / "checkpoints" / "rank_rng"
            rank_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"step": step, "rng": rng_state(rng)}, rank_dir / f"rank{self.info.rank}.pt")
            dist.barrier()

    def _restore(self, modules, ema, optimizers, rng) -> int:
        try:
            ckpt = Checkpoint(find_checkpoint(self.run_dir))
        except FileNotFoundError:
            self._log(f"[detok] no checkpoint in {self.run_dir}; starting from scratch")
            return 0
        for name, m in modules.items():
            m.load_state_dict(ckpt.module_state(name, use_ema=False))
        ema.load_state_dict(ckpt.ema[self.task.ema_module])
        state = torch.load(ckpt.path / "state.pt", map_location="cpu", weights_only=True)
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        saved = state["rng"]
        rank_file = self.run_dir / "checkpoints" / "rank_rng" / f"rank{self.info.rank}.pt"
        if self.info.enabled and rank_file.exists():
            rank_state = torch.load(rank_file, weights_only=True)
            if rank_state["step"] == ckpt.step:
                saved = rank_state["rng"]
        set_rng_state(saved, rng)
        if hasattr(self.task, "load_extra_state"):
            self.task.load_extra_state(state.get("extra", {}))
        return ckpt.step

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("train.tensorboard=true needs `pip install tensorboard`") from e
        return SummaryWriter(str(self.run_dir / "tb"))
