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
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from detok import dist
from detok.config import option
from detok.engine.ema import EMA
from detok.io import Checkpoint, find_checkpoint, save_checkpoint, write_json
from detok.nn.optim import adamw, lr_at, split_decay

log = logging.getLogger("detok")

# Parameter-name substrings excluded from weight decay (upstream l-DeTok's list; also every 1-D tensor).
UPSTREAM_NO_DECAY = ["ln", "bias", "embedding", "norm", "gamma", "embed", "token", "diffloss"]


@dataclass
class OptimConfig:
    """AdamW and its per-step schedule; lr = base_lr * global_batch / 256 unless `lr` is set."""

    base_lr: float = option(1e-4, "learning rate per 256 images: lr = base_lr * global_batch_size / 256", min=0)
    lr: float = option(0.0, "absolute learning rate; 0 = derived from base_lr (the paper's rule)", min=0)
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = field(default=50.0, metadata={"help": "paper: 25% of 200 epochs"})
    min_lr: float = 0.0
    grad_clip: float = 3.0
    no_decay: list[str] = field(default_factory=lambda: list(UPSTREAM_NO_DECAY))
    adamw: Literal["fused", "foreach", "single"] = option(
        "fused", "AdamW kernel: fused (one kernel over all tensors; ~6x faster than foreach on CPU), foreach, "
        "or single (a loop over tensors); the same update up to float rounding")


@dataclass
class TrainConfig:
    """Run length, batch, EMA, precision, logging and checkpoint cadence."""

    out_dir: str = "runs/tokenizer"
    global_batch_size: int = option(1024, "summed over all processes (paper: 1024)", min=1)
    epochs: float = option(200.0, "training length in epochs (max_steps > 0 overrides it)", min=0)
    max_steps: int = option(0, "> 0 overrides epochs", min=0)
    ema_decay: float = option(0.999, "EMA decay per step", min=0, max=1)
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto", metadata={"help": "auto: bf16 autocast on CUDA, float32 on CPU"}
    )
    log_every: int = option(20, "log metrics every this many steps", min=1)
    ckpt_every: int = option(1000, "checkpoint every this many steps", min=1)
    keep_checkpoints: int = option(2, "newest checkpoints kept (0 = all)", min=0)
    tensorboard: bool = False
    compile: Literal["none", "blocks"] = option(
        "none", "none (eager), or blocks: torch.compile (dynamic shapes) every transformer block in place before training; fuses "
        "the element-wise work around the matmuls, compiles once (about 45 s on a CPU at detok_ss), same math "
        "to float rounding; docs/benchmarks.md says where it pays")
    max_bad_steps: int = field(default=5, metadata={"help": "stop after this many non-finite steps in a row"})
    progress: bool = True


def compile_blocks(module: nn.Module) -> int:
    """torch.compile(dynamic=True) every element of every `nn.ModuleList` named `*blocks` (detok's models) or
    `layers` (a `transformers` Llama) in `module`, in place (parameter names and checkpoints unchanged); the
    number of blocks compiled.

    Dynamic shapes, because a masked encoder sees a different number of tokens every step: one graph serves
    every length instead of a recompilation per length.
    """
    n = 0
    for name, child in module.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(child, nn.ModuleList) and (last.endswith("blocks") or last == "layers"):
            for blk in child:
                blk.compile(dynamic=True)
                n += 1
    return n


class Task:
    """What the engine trains (subclass it). Modules named in `modules()` are checkpointed; `ema_module` gets
    an EMA. `extra_state` / `load_extra_state` carry task state (beyond modules, optimizers and RNG) through
    checkpoints; the defaults carry none."""

    ema_module: str = "model"

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizer_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        raise NotImplementedError

    def setup(self, info: dist.DistInfo, wrap) -> None:
        """Move what the task owns besides `modules()` to the device and DDP-wrap its forwards."""

    def step(self, batch: dict[str, Any], step: int, rng: torch.Generator) -> tuple[dict, dict]:
        """(losses per optimizer name, in update order; detached numbers to log)."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state


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


class Hook:
    """A declared trainer hook (subclass it and override what you need); every rank calls every hook.

    `on_step(trainer, step)` runs after each step that is a multiple of `every` (0 = never) and returns numbers
    to log (metrics.jsonl, main process) or None; it may read `trainer.modules` / `trainer.ema_copy()` but must
    not change the trained state. `on_train_end(trainer)` runs once after the last step, before the final
    checkpoint is written, and may change what is saved (e.g. set latent statistics on the model).
    """

    every: int = 0

    def on_step(self, trainer: Trainer, step: int) -> dict[str, float] | None:
        return None

    def on_train_end(self, trainer: Trainer) -> None:
        return None


@dataclass(frozen=True)
class Plan:
    """A run's length and batch arithmetic, fixed before the first step."""

    images: int
    per_rank: int
    steps_per_epoch: int
    total: int
    warmup: int
    lr: float


@dataclass
class _Progress:
    """What the loop accumulates: its log record and counters (reported in the summary)."""

    step: int
    seen: int = 0
    last: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    bad_streak: int = 0
    bad_total: int = 0


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
    def plan(self, images: int) -> Plan:
        """Batch split, steps per epoch, total and warmup steps, peak lr; errors for impossible settings."""
        cfg, info = self.cfg, self.info
        if cfg.global_batch_size % info.world:
            raise ValueError(f"global batch {cfg.global_batch_size} is not divisible by {info.world} processes")
        spe = images // cfg.global_batch_size
        if spe < 1:
            raise ValueError(
                f"dataset of {images} images is smaller than one global batch of {cfg.global_batch_size}; "
                "lower train.global_batch_size or use more data"
            )
        total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * spe))
        lr = self.optim_cfg.lr or self.optim_cfg.base_lr * cfg.global_batch_size / 256
        return Plan(images, cfg.global_batch_size // info.world, spe, total,
                    round(self.optim_cfg.warmup_epochs * spe), lr)

    def fit(self, dataset: Dataset, resume: bool = False) -> dict[str, Any]:
        """Train to the configured length; returns a summary dict (also written as RUN/train_summary.json)."""
        cfg, info = self.cfg, self.info
        plan = self.plan(len(dataset))  # type: ignore[arg-type]
        torch.manual_seed(cfg.seed * info.world + info.rank)
        rng = torch.Generator(device=self.device).manual_seed(cfg.seed * info.world + info.rank)
        self._build(plan)
        start, saved_rng = self._restore() if resume else (0, None)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_plan(plan, start)
        # The iterator draws its worker base seed from the global RNG when created: create it in the state an
        # uninterrupted run had at step 0, then restore the checkpoint's RNG, so a resumed run draws exactly as
        # the uninterrupted one (same worker seeds, same global RNG at every step).
        data_iter = iter(self._loader(dataset, plan, start))
        if saved_rng is not None:
            set_rng_state(saved_rng, rng)
        progress = _Progress(step=start)
        metrics_file = open(self.run_dir / "metrics.jsonl", "a") if info.is_main else None  # noqa: SIM115
        writer = self._tensorboard() if info.is_main and cfg.tensorboard else None
        bar = tqdm(total=plan.total, initial=start, disable=not (info.is_main and cfg.progress), desc=self.kind)
        t0 = time.perf_counter()
        try:
            while progress.step < plan.total:
                rec = self._train_step(next(data_iter), plan, progress, rng)
                bar.update(1)
                if rec is None:
                    continue
                step = progress.step
                if step % cfg.log_every == 0 or step == plan.total:
                    rec["img_per_s"] = progress.seen / (time.perf_counter() - t0)
                    self._write(metrics_file, writer, rec)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(progress.last.items())[:3]})
                if step % cfg.ckpt_every == 0 and step < plan.total:
                    self._save(step, rng)
                self._run_hooks(step, plan, metrics_file)
        finally:
            bar.close()
            if metrics_file:
                metrics_file.close()
            if writer:
                writer.close()
        seconds = time.perf_counter() - t0
        for hook in self.hooks:
            hook.on_train_end(self)
        self._save(progress.step, rng)
        return self._summary(plan, progress, seconds)

    def _build(self, plan: Plan) -> None:
        """Modules on the device, DDP wrappers, one AdamW per optimizer name, the EMA."""
        self.modules = self.task.modules()
        for m in self.modules.values():
            m.to(self.device)
        if self.cfg.compile == "blocks":
            n = sum(compile_blocks(m) for m in self.modules.values())
            self._log(f"[detok] train.compile=blocks: {n} blocks compiled with torch.compile(dynamic=True) on first use")
        self.task.setup(self.info, self._wrap)
        self.optimizers = {}
        for name, named in self.task.optimizer_params().items():
            groups = split_decay(named, self.optim_cfg.weight_decay, self.optim_cfg.no_decay)
            self.optimizers[name] = adamw(groups, plan.lr, self.optim_cfg.betas, self.optim_cfg.adamw)
        self.ema = EMA(self.modules[self.task.ema_module], self.cfg.ema_decay)

    def _loader(self, dataset: Dataset, plan: Plan, start: int) -> DataLoader:
        sampler = StepSampler(plan.images, plan.per_rank, self.info.world, self.info.rank, self.cfg.seed, start)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=self.collate,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _log_plan(self, plan: Plan, start: int) -> None:
        cfg, info = self.cfg, self.info
        precision = "bf16 autocast" if not isinstance(self._autocast(), contextlib.nullcontext) else "fp32"
        self._log(
            f"[detok] {self.kind}: {plan.images} images, global batch {cfg.global_batch_size} = {info.world} "
            f"process(es) x {plan.per_rank} per process, {plan.steps_per_epoch} steps/epoch, {plan.total} steps "
            f"({plan.total / plan.steps_per_epoch:.2f} epochs), warmup {plan.warmup} steps, peak lr {plan.lr:.3g}, "
            f"device {self.device}, precision {precision}" + (f", resuming at step {start}" if start else "")
        )

    def _train_step(self, batch: dict[str, Any], plan: Plan, progress: _Progress, rng: torch.Generator):
        """One optimisation step; returns its log record, or None when a non-finite loss skipped the update."""
        cfg, step = self.cfg, progress.step
        for paths in batch.pop("skipped", []) or []:
            progress.skipped.extend([paths] if isinstance(paths, str) else paths)
        batch = _to_device(batch, self.device)
        cur_lr = lr_at(step, plan.lr, plan.total, plan.warmup, self.optim_cfg.schedule, self.optim_cfg.min_lr)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = cur_lr
        with self._autocast():
            losses, logs = self.task.step(batch, step, rng)
        finite = all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())
        if dist.any_rank(not finite, self.device):
            progress.bad_streak += 1
            progress.bad_total += 1
            self._log(f"[detok] step {step}: non-finite loss ({ {k: float(v.detach()) for k, v in losses.items()} }); "
                      "update skipped, last good checkpoint kept")
            if progress.bad_streak >= cfg.max_bad_steps:
                raise NonFiniteLoss(
                    f"{progress.bad_streak} non-finite steps in a row at step {step}; the last good checkpoint "
                    f"in {self.run_dir / 'checkpoints'} is untouched. Lower the lr or check the data."
                )
            progress.step += 1
            return None
        progress.bad_streak = 0
        grad_norms = {}
        for name, loss in losses.items():
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.optim_cfg.grad_clip > 0:
                params = [p for g in opt.param_groups for p in g["params"]]
                grad_norms[name] = float(torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip))
            opt.step()
        self.ema.update(self.modules[self.task.ema_module])
        progress.step += 1
        progress.seen += cfg.global_batch_size
        progress.last = {k: float(v) for k, v in logs.items()}
        rec = {"step": progress.step, "epoch": progress.step / plan.steps_per_epoch, "lr": cur_lr, **progress.last}
        rec.update({f"grad_norm_{k}": v for k, v in grad_norms.items()})
        return rec

    def _write(self, metrics_file, writer, rec: dict[str, float]) -> None:
        if metrics_file:
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()
        if writer:
            for k, v in rec.items():
                writer.add_scalar(f"{self.kind}/{k}", v, rec["step"])

    def _run_hooks(self, step: int, plan: Plan, metrics_file) -> None:
        for hook in self.hooks:
            if hook.every > 0 and step % hook.every == 0:
                values = hook.on_step(self, step)  # every rank calls; the hook decides who works
                if values:
                    self._write(metrics_file, None, {"step": step, "epoch": step / plan.steps_per_epoch, **values})
                    self._log(f"[detok] step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def _summary(self, plan: Plan, progress: _Progress, seconds: float) -> dict[str, Any]:
        summary = {
            "kind": self.kind,
            "steps": progress.step,
            "epochs": progress.step / plan.steps_per_epoch,
            "seconds": seconds,
            "img_per_s": progress.seen / seconds if seconds > 0 else 0.0,
            "global_batch_size": self.cfg.global_batch_size,
            "per_process_batch_size": plan.per_rank,
            "processes": self.info.world,
            "final": progress.last,
            "non_finite_steps": progress.bad_total,
            "skipped_images": sorted(set(progress.skipped)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if self.device.type == "cuda":
            summary["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if self.info.is_main:
            write_json(self.run_dir / "train_summary.json", summary)
        return summary

    def ema_copy(self) -> nn.Module:
        """A deep copy of the EMA'd module carrying the EMA weights (after `fit`), in eval mode."""
        import copy

        model = copy.deepcopy(self.modules[self.task.ema_module])
        self.ema.copy_to(model)
        return model.eval()

    # -- checkpoints -------------------------------------------------------------------------------
    def _save(self, step: int, rng: torch.Generator) -> None:
        # RNG states differ per rank: every rank's state is gathered into rank 0's state.pt ("rank_rng"), so one
        # atomic write holds them all and a resume restores each rank's stream exactly.
        rank_rngs = self._gather(rng_state(rng))
        if self.info.is_main:
            save_checkpoint(
                self.run_dir,
                step,
                kind=self.kind,
                weights={k: m.state_dict() for k, m in self.modules.items()},
                ema={self.task.ema_module: self.ema.state_dict()},
                state={
                    "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                    "rng": rank_rngs[0],
                    "rank_rng": rank_rngs,
                    "extra": self.task.extra_state(),
                },
                config=self.config,
                keep=self.cfg.keep_checkpoints,
            )
        dist.barrier()

    def _gather(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's `state`, in rank order (a list of one without DDP)."""
        if not self.info.enabled:
            return [state]
        out: list[Any] = [None] * self.info.world
        torch.distributed.all_gather_object(out, state)
        return out

    def _restore(self) -> tuple[int, dict[str, Any] | None]:
        """Load modules, EMA, optimizers and task state of the latest checkpoint: (its step, this rank's RNG)."""
        try:
            ckpt = Checkpoint(find_checkpoint(self.run_dir))
        except FileNotFoundError:
            self._log(f"[detok] no checkpoint in {self.run_dir}; starting from scratch")
            return 0, None
        for name, m in self.modules.items():
            m.load_state_dict(ckpt.module_state(name, use_ema=False))
        self.ema.load_state_dict(ckpt.ema[self.task.ema_module])
        state = ckpt.training_state()
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        ranks = state.get("rank_rng") or self._legacy_rank_rngs(ckpt, state)
        self.task.load_extra_state(state.get("extra", {}))
        if len(ranks) == self.info.world:
            return ckpt.step, ranks[self.info.rank]
        self._log(f"[detok] {self.run_dir} was trained by {len(ranks)} process(es), this run has {self.info.world}: "
                  "weights and optimizers resume, the data order and random streams start anew (not bit-exact)")
        return ckpt.step, None

    def _legacy_rank_rngs(self, ckpt: Checkpoint, state: dict[str, Any]) -> list[dict[str, Any]]:
        """RNG states of checkpoints written before 0.2 (checkpoints/rank_rng/rank{r}.pt beside them)."""
        files = sorted((self.run_dir / "checkpoints" / "rank_rng").glob("rank*.pt"))
        ranks = [state["rng"]]
        for f in files[1:]:
            saved = torch.load(f, weights_only=True)
            if saved.get("step") != ckpt.step:
                return [state["rng"]]
            ranks.append(saved["rng"])
        return ranks

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("train.tensorboard=true needs `pip install tensorboard`") from e
        return SummaryWriter(str(self.run_dir / "tb"))
