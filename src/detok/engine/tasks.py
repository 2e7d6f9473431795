"""Tasks: the science the one engine trains. Each returns losses per optimizer, in update order."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from detok.engine.trainer import Task
from detok.losses.gan import hinge_d_loss
from detok.losses.tokenizer_loss import TokenizerLoss
from detok.multimodal.sequences import TASKS, build, pack
from detok.tokenizers.ddt import DDT
from detok.tokenizers.detok import DeTok
from detok.tokenizers.latents import LatentCache

log = logging.getLogger(__name__)


class _DiscriminatorPair(nn.Module):
    """D on real and on (detached) fake images in one module call, so DDP sees a single forward."""

    def __init__(self, disc: nn.Module) -> None:
        super().__init__()
        self.disc = disc

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(real.device.type, enabled=False):  # the loss side runs in float32, as upstream
            return self.disc(real.float()), self.disc(fake.float())


INFLATION_CHECK_EVERY = 25  # steps between latent-inflation checks (TokenizerTask._check_inflation)


class TokenizerTask(Task):
    """l-DeTok training: corrupted reconstruction + perceptual + KL (+ GAN from `disc_start_step`)."""

    ema_module = "model"

    def __init__(self, model: DeTok, loss: TokenizerLoss, disc_start_step: int, hflip: bool = True,
                 anneal_steps: tuple[int, int] | None = None) -> None:
        self.model, self.loss = model, loss
        self.disc_start_step = disc_start_step
        self.anneal_steps = anneal_steps  # (first, last) step of the corruption anneal, or None (off)
        self.hflip = hflip
        self.forward_model: nn.Module = model
        self.forward_disc: nn.Module = _DiscriminatorPair(loss.discriminator)
        self._warned = False

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "disc": self.loss.discriminator}

    def optimizer_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {
            "ae": list(self.model.named_parameters()),
            "disc": [("disc." + n, p) for n, p in self.loss.discriminator.named_parameters()],
        }

    def _check_inflation(self, mean_std: float, step: int) -> None:
        """Warn once when the latents outgrow the noise scale gamma: the noise then corrupts them less than the
        recipe intends (gamma assumes latents of about unit scale)."""
        gamma, limit = float(self.model.cfg.gamma), self.loss.cfg.inflation_warn
        if self._warned or limit <= 0 or gamma <= 0 or self.model.cfg.noise == "none" or mean_std <= limit * gamma:
            return
        self._warned = True
        warnings.warn(f"step {step}: the encoder's posterior means have std {mean_std:.3g} > {limit:g} x gamma "
                      f"({gamma:g}): the latent noise corrupts them less than intended (consider "
                      "loss.kl_scale=latent_size or a larger kl_weight)", RuntimeWarning, stacklevel=2)

    def setup(self, info, wrap) -> None:
        self.loss.to(info.device)
        # Masking draws a ratio per rank; with m = 0 the mask token is unused, hence find_unused.
        self.forward_model = wrap(self.model, find_unused=True)
        self.forward_disc = wrap(_DiscriminatorPair(self.loss.discriminator))

    def strength(self, step: int) -> float:
        """Corruption strength at `step`: 1 until the anneal starts, then linearly down to 0 at its last step."""
        if self.anneal_steps is None or step < self.anneal_steps[0]:
            return 1.0
        first, last = self.anneal_steps
        return max(0.0, 1.0 - (step - first + 1) / max(1, last - first + 1))

    def step(self, batch: dict[str, Any], step: int, rng: torch.Generator):
        x = batch["image"]  # (B, 3, H, W) in [-1, 1]
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=rng, device=x.device) < 0.5  # (B,)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        strength = self.strength(step)
        recon, kl, corruption = self.forward_model(x, rng=rng, strength=strength)
        gan = step >= self.disc_start_step
        out = self.loss.generator_loss(x, recon, kl, gan_active=gan)
        losses = {"ae": out["loss"]}
        logs = {k: v.detach() for k, v in out.items()}
        logs["mask_ratio"] = corruption.mask_ratio.mean()
        logs["tau"] = corruption.tau.mean()
        if self.anneal_steps is not None:
            logs["corruption_strength"] = torch.tensor(strength)
        if corruption.mean_std is not None:
            logs["latent_mean_std"] = corruption.mean_std
            # every INFLATION_CHECK_EVERY steps: float() is a host sync on GPUs (and impossible on meta)
            if step % INFLATION_CHECK_EVERY == 0 and not corruption.mean_std.is_meta:
                self._check_inflation(float(corruption.mean_std), step)
        if gan:
            real, fake = self.forward_disc(x, recon.detach())
            d_loss = hinge_d_loss(real, fake)
            losses["disc"] = d_loss
            logs.update(disc_loss=d_loss.detach(), logits_real=real.mean().detach(), logits_fake=fake.mean().detach())
        return losses, logs


class DDTTask(Task):
    """DDT tokenizer training: velocity MSE of the token-conditioned decoder + the quantizer's commitment loss.

    Every `usage_every` steps the batch's codebook usage (perplexity, used fraction, dead codes) is logged.
    """

    ema_module = "model"

    def __init__(self, model: DDT, hflip: bool = True, usage_every: int = 50) -> None:
        self.model, self.hflip, self.usage_every = model, hflip, usage_every
        self.forward_model: nn.Module = model

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizer_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {"main": [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]}

    def setup(self, info, wrap) -> None:
        # token_drop / the schedule can leave token embeddings of high indices unused in a step
        self.forward_model = wrap(self.model, find_unused=True)

    def step(self, batch: dict[str, Any], step: int, rng: torch.Generator):
        x = batch["image"]  # (B, 3, H, W) in [-1, 1]
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=rng, device=x.device) < 0.5  # (B,)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        out = self.forward_model(x, rng=rng)
        ids = out.pop("ids")
        logs = {k: v.detach() for k, v in out.items()}
        if self.usage_every and (step + 1) % self.usage_every == 0 and not ids.is_meta:  # logged at step + 1
            logs.update({f"code_{k}": torch.tensor(float(v)) for k, v in self.model.usage(ids).items()})
        return {"main": out["loss"]}, logs


class _GeneratorLoss(nn.Module):
    """`generator.loss` as a module forward, so DDP can wrap any generator whatever its own forward is."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None):
        return self.generator.loss(latents, labels, rng)


class GeneratorTask(Task):
    """Generator training on posterior samples (or means) of a frozen tokenizer's latents (online or cached)."""

    ema_module = "model"

    def __init__(self, generator: nn.Module, tokenizer: nn.Module, use_cache: bool, hflip: bool = True,
                 posterior: str = "sample") -> None:
        if posterior not in ("sample", "mean"):
            raise ValueError(f"posterior must be 'sample' or 'mean', got {posterior!r}")
        self.generator, self.tokenizer = generator, tokenizer.eval().requires_grad_(False)
        self.use_cache, self.hflip, self.posterior = use_cache, hflip, posterior
        self.forward_model: nn.Module = _GeneratorLoss(generator)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.generator}

    def optimizer_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {"main": list(self.generator.named_parameters())}

    def setup(self, info, wrap) -> None:
        self.tokenizer.to(info.device)
        self.forward_model = wrap(_GeneratorLoss(self.generator))

    @torch.no_grad()
    def latents(self, batch: dict[str, Any], rng: torch.Generator) -> torch.Tensor:
        """Normalised posterior samples (or means) (B, C, h, w): from cached moments (+ flips) or by encoding."""
        if getattr(self.tokenizer, "discrete", False):
            return self._token_ids(batch, rng)
        if self.use_cache:
            moments = batch["moments"]  # (B, 2C, h, w)
            if self.hflip:
                flip = torch.rand(moments.shape[0], generator=rng, device=moments.device) < 0.5
                moments = torch.where(flip[:, None, None, None], batch["moments_flip"], moments)
            z = LatentCache.sample(moments, rng) if self.posterior == "sample" else moments[:, : moments.shape[1] // 2]
        else:
            x = batch["image"]
            if self.hflip:
                flip = torch.rand(x.shape[0], generator=rng, device=x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            z = self.tokenizer.encode(x, sample=self.posterior == "sample", rng=rng)
        return self.tokenizer.normalize(z.float())

    def _token_ids(self, batch: dict[str, Any], rng: torch.Generator) -> torch.Tensor:
        """Token ids (B, K) in AR order of a discrete tokenizer: from a token cache (+ flips) or by tokenizing."""
        if self.use_cache:
            ids = batch["ids"]  # (B, K)
            if self.hflip:
                flip = torch.rand(ids.shape[0], generator=rng, device=ids.device) < 0.5
                ids = torch.where(flip[:, None], batch["ids_flip"], ids)
            return ids.long()
        x = batch["image"]
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=rng, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return self.tokenizer.tokenize(x)

    def step(self, batch: dict[str, Any], step: int, rng: torch.Generator):
        z = self.latents(batch, rng)
        out = self.forward_model(z, batch["label"], rng=rng)
        return {"main": out["loss"]}, {k: v.detach() for k, v in out.items()}


class _MLLMLoss(nn.Module):
    """`model.loss(ids, loss_mask)` as a module forward, for DDP."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, loss_mask: torch.Tensor):
        return self.model.loss(ids, loss_mask)


class MLLMTask(Task):
    """Multimodal LM training: each row of a batch becomes one task's sequence (t2i, i2t, image, text, edit).

    The task of each row is drawn from `ratios` (TASKS order) with the engine's rng, and in t2i / edit the
    text is dropped to the null prompt with the model's `text_dropout` (classifier-free guidance). No
    horizontal flips: the captions name left and right. Logs the loss and each task's share of the batch.
    """

    ema_module = "model"

    def __init__(self, model: nn.Module, ratios: list[float]) -> None:
        if len(ratios) != len(TASKS) or min(ratios) < 0 or sum(ratios) <= 0:
            raise ValueError(f"ratios must be {len(TASKS)} non-negative shares ({', '.join(TASKS)}), got {ratios}")
        self.model = model
        self.ratios = torch.tensor(ratios, dtype=torch.float64) / sum(ratios)
        self.forward_model: nn.Module = _MLLMLoss(model)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizer_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {"main": list(self.model.named_parameters())}

    def setup(self, info, wrap) -> None:
        self.forward_model = wrap(_MLLMLoss(self.model))

    def sequences(self, batch: dict[str, Any], rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(ids (B, S), loss_mask (B, S), the task of each row) of a token batch (see MLLMTokenDataset)."""
        model = self.model
        vocab, slot, drop = model.vocab, model.cfg.text_slot, model.cfg.text_dropout
        codes, targets = batch["codes"].cpu(), batch["target_codes"].cpu()  # (B, K) each
        n = codes.shape[0]
        picks = torch.multinomial(self.ratios, n, replacement=True, generator=_cpu(rng)).tolist()  # (B,)
        dropped = (torch.rand(n, generator=_cpu(rng)) < drop).tolist()  # (B,)
        rows, names = [], []
        for b in range(n):
            task = TASKS[picks[b]]
            text = batch["instruction"][b] if task == "edit" else batch["caption"][b]
            if task in ("t2i", "edit") and dropped[b]:
                text = None
            rows.append(build(task, vocab, slot, text=text, image=codes[b], target=targets[b]))
            names.append(task)
        ids, mask = pack(rows, vocab.pad)  # (B, S) each
        return ids, mask, names

    def step(self, batch: dict[str, Any], step: int, rng: torch.Generator):
        ids, mask, names = self.sequences(batch, rng)
        device = batch["codes"].device
        out = self.forward_model(ids.to(device), mask.to(device))
        logs = {k: v.detach() for k, v in out.items()}
        for task in TASKS:
            logs[f"share_{task}"] = torch.tensor(names.count(task) / len(names))
        return {"main": out["loss"]}, logs


def _cpu(rng: torch.Generator) -> torch.Generator:
    """`rng` if it is a CPU generator; else a CPU generator seeded from it (sequence building runs on the CPU)."""
    if rng.device.type == "cpu":
        return rng
    seed = int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device).item())
    return torch.Generator().manual_seed(seed)
