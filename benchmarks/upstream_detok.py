"""Upstream l-DeTok's own training step, imported from a local clone, for same-run A/B rows.

Nothing of upstream is vendored: `--upstream PATH` names a clone of Jiawei-Yang/DeTok that the user keeps
outside this repository; this module puts PATH on sys.path and imports `models.detok.DeTok` and
`models.ema.SimpleEMAModel` from it. The step it times is upstream's `train_one_epoch` body with the loss
reduced to the "model" flavour (pixel MSE in [0, 1] + kl_weight x KL), on CPU in float32:

    model.encode(x, sampling=True, mask_ratio=r) -> model.decoder(z, ids_restore)   (= DeTok.forward)
    loss.backward(); clip_grad_norm_(params, clip); AdamW(2 groups, torch's defaults: single-tensor on CPU)
    .step(); zero_grad(set_to_none=True); SimpleEMAModel.step(model)

What differs from upstream's script, by design: the mask ratio r of each step is the one detok's draw
gives for the same seed (so both sides run the same number of visible tokens L in every timed repeat, hence
identical counted FLOPs), the random h-flip is done in the step as detok's task does it (upstream's data
loader does it), and there is no GradScaler (a no-op on CPU: upstream constructs it for "cuda").
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchlib import BenchError


def import_upstream(path: str | Path) -> tuple[type, type]:
    """(DeTok, SimpleEMAModel) from the clone at `path`; BenchError naming what is missing."""
    root = Path(path).expanduser().resolve()
    if not (root / "models" / "detok.py").is_file():
        raise BenchError(
            f"--upstream {path}: no models/detok.py there; pass the root of a Jiawei-Yang/DeTok clone"
        )
    sys.path.insert(0, str(root))
    try:
        from models.detok import DeTok as UpstreamDeTok  # type: ignore[import-not-found]
        from models.ema import SimpleEMAModel  # type: ignore[import-not-found]
    except ImportError as err:
        raise BenchError(f"--upstream {path}: importing its models package failed: {err}") from None
    finally:
        sys.path.remove(str(root))
    return UpstreamDeTok, SimpleEMAModel


def ratio_for_keep(keep: int, n_tok: int) -> float:
    """The mask ratio r for which upstream's `ceil(N (1 - r))` keeps exactly `keep` of `n_tok` tokens."""
    if keep >= n_tok:
        return 0.0  # upstream's unmasked path (ids_restore None), as detok's keep == N
    r = 1.0 - keep / n_tok + 1e-9
    if math.ceil(n_tok * (1.0 - r)) != keep:
        raise RuntimeError(f"no mask ratio keeps {keep} of {n_tok}")
    return r


class UpstreamTrainBench:
    """Upstream's model, optimizer and EMA at detok's config; `step(seed, keep, flip)` mirrors TrainBench.step."""

    def __init__(self, path: str | Path, cfg: Any, batch: int, seed: int = 0) -> None:
        UpstreamDeTok, SimpleEMAModel = import_upstream(path)
        tok, o = cfg.tokenizer, cfg.optim
        torch.manual_seed(seed)
        self.model = UpstreamDeTok(
            img_size=tok.image_size,
            patch_size=tok.patch_size,
            vit_enc_model_size=tok.encoder_size,
            vit_dec_model_size=tok.decoder_size,
            token_channels=tok.latent_dim,
            mask_ratio=tok.mask_ratio,
            gamma=tok.gamma,
            use_additive_noise=tok.noise == "additive",
        ).train()
        self.n_tok = (tok.image_size // tok.patch_size) ** 2
        named = list(self.model.named_parameters())
        words = ["ln", "bias", "embedding", "norm", "gamma", "embed", "token", "diffloss"]  # upstream's list
        plain = [p for n, p in named if p.ndim < 2 or any(w in n for w in words)]
        decay = [p for n, p in named if not (p.ndim < 2 or any(w in n for w in words))]
        lr = o.lr or o.base_lr * cfg.train.global_batch_size / 256
        self.optimizer = torch.optim.AdamW(
            [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": o.weight_decay}],
            lr=lr,
            betas=tuple(o.betas),
        )
        self.grad_clip = o.grad_clip
        self.kl_weight = cfg.loss.kl_weight
        self.ema = SimpleEMAModel(self.model, decay=cfg.train.ema_decay)
        size = tok.image_size
        g = torch.Generator().manual_seed(seed + 2)
        self.images = torch.rand(batch, 3, size, size, generator=g) * 2 - 1

    def forward_backward(self, seed: int, keep: int, flip: torch.Tensor) -> torch.Tensor:
        """Upstream's forward (DeTok.forward with an explicit mask ratio), the model-flavour loss, backward."""
        torch.manual_seed(seed)  # upstream draws its mask order, posterior sample and noise from the global RNG
        x = torch.where(flip[:, None, None, None], self.images.flip(-1), self.images)
        z, posteriors, ids_restore = self.model.encode(
            x, sampling=True, mask_ratio=ratio_for_keep(keep, self.n_tok)
        )
        recon = self.model.decoder(z, ids_restore=ids_restore)
        loss = F.mse_loss(recon * 0.5 + 0.5, x * 0.5 + 0.5) + self.kl_weight * posteriors.kl().mean()
        loss.backward()
        return loss.detach()

    def step(self, seed: int, keep: int, flip: torch.Tensor) -> dict[str, float]:
        """One upstream training step; phase times (s). `keep` visible tokens, `flip` (B,) h-flip draws."""
        t0 = time.perf_counter()
        loss = self.forward_backward(seed, keep, flip)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite upstream loss at seed {seed}")
        t1 = time.perf_counter()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        te = time.perf_counter()
        self.ema.step(self.model)
        t2 = time.perf_counter()
        return {"total": t2 - t0, "forward_backward": t1 - t0, "optimizer": te - t1, "ema": t2 - te}
