"""Token quantizer of the discrete DDT tokenizer: a thin adapter over `vector-quantize-pytorch`.

Two kinds, chosen by `QuantizerConfig.kind`:

- "vq" (Selftok's quantizer, the default): a cosine-similarity codebook. Inputs and codes are
  l2-normalised and the nearest code is the one with the largest dot product. The codebook is a buffer
  updated by EMA (decay 0.99), never by gradient. It is k-means-initialised on the first batch, and dead
  codes are restarted from batch vectors. The threshold for "dead" is relative, as in Selftok. The loss is
  the commitment MSE ||sg(q) - h_hat||^2, where h_hat = h / |h| is the normalised input the codebook sees,
  times `commitment_weight`. The gradient is a plain straight-through estimator, as in Selftok.
- "fsq": finite scalar quantization. Each of len(levels) dimensions is bounded and rounded to levels[i]
  values. The codebook is implicit, of size prod(levels), and there is no loss.

The library does the quantizing; this file only fixes its options, turns the relative dead-code threshold
into the library's absolute one, and checks ids.

Randomness: the library's k-means init and dead-code restarts draw batch vectors with torch's global RNG
(randperm / randint; the library takes no torch.Generator). Its random codebook init (kmeans_init=False)
draws from the same RNG at construction. This is the one exception to house rule 7, accepted for a
third-party layer. Seed torch's global RNG for reproducible codebooks.

Axis letters: B batch, K tokens per image, E = code_dim the code dimension, C = codebook_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from detok.config import option
from detok.dist import rank_world

if TYPE_CHECKING:  # imported where a quantizer is built: the package pulls in torch._dynamo (about 1 s)
    from vector_quantize_pytorch import FSQ, VectorQuantize

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class QuantizerConfig:
    """Kind and settings of the token quantizer. The vq defaults are Selftok's, except the commitment weight."""

    kind: Literal["vq", "fsq"] = option("vq", "vq: cosine codebook with EMA updates (Selftok); "
                                        "fsq: finite scalar quantization")
    codebook_size: int = option(1024, "codes in the vq codebook (fsq: prod(fsq_levels), this field unused)", min=1)
    code_dim: int = option(8, "E, the dimension of the encoder output handed in and of the codes handed out", min=1)
    decay: float = option(0.99, "EMA decay of the vq codebook (Selftok: 0.99)", min=0, max=1)
    kmeans_init: bool = option(True, "k-means init of the vq codebook on the first training batch (Selftok: on)")
    kmeans_iters: int = option(10, "k-means iterations of that init (Selftok: 10)", min=0)
    dead_code_threshold: float = option(
        0.2, "relative, as in Selftok: a vq code is dead (and restarted from a batch vector) when its EMA "
        "cluster size < threshold * (tokens per batch / codebook_size); 0 = no restarts", min=0)
    commitment_weight: float = option(0.25, "weight of the commitment MSE ||sg(q) - h||^2 (Selftok: 1.0)", min=0)
    fsq_levels: list[int] = option(help="levels per FSQ dimension, each >= 3; codebook size prod(levels)",
                                   factory=lambda: [8, 5, 5, 5])
    stats_every: int = option(50, "how often (steps) the tokenizer task logs code usage (perplexity, used, "
                              "dead); the quantizer only computes them when asked", min=1)


@dataclass
class QuantOut:
    """What the quantizer hands out for h (B, K, E)."""

    codes: Tensor  # (B, K, E) quantized vectors, straight-through in train mode (the gradient reaches h)
    ids: Tensor  # (B, K) long in [0, codebook_size)
    loss: Tensor  # () commitment loss times commitment_weight; 0 for fsq and in eval mode


def _check_ids(ids: Tensor, codebook_size: int) -> None:
    """ValueError unless `ids` is an integer tensor with every value in [0, codebook_size)."""
    if not isinstance(ids, Tensor) or ids.dtype not in INTEGER_DTYPES:
        kind = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"token ids must be an integer tensor with values in [0, {codebook_size}), got {kind}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= codebook_size):
        raise ValueError(f"token ids must lie in [0, {codebook_size}) (the codebook size), "
                         f"got values from {int(ids.min())} to {int(ids.max())}")


class TokenQuantizer(nn.Module):
    """h (B, K, E) -> QuantOut(codes (B, K, E), ids (B, K), loss ()), by VQ (EMA cosine codebook) or FSQ."""

    def __init__(self, cfg: QuantizerConfig) -> None:
        from vector_quantize_pytorch import FSQ, VectorQuantize

        super().__init__()
        self.cfg = cfg
        self.code_dim = cfg.code_dim
        self.vq: VectorQuantize | None = None
        self.fsq: FSQ | None = None
        if cfg.kind == "vq":
            self.vq = VectorQuantize(
                dim=cfg.code_dim,
                codebook_size=cfg.codebook_size,  # codebook_dim = dim: no projections, codes live in E
                use_cosine_sim=True,
                decay=cfg.decay,
                kmeans_init=cfg.kmeans_init,
                kmeans_iters=cfg.kmeans_iters,
                # The library takes an ABSOLUTE threshold and fixes `has_dead_code_replacement = threshold > 0`
                # at construction, so a positive placeholder goes in here. It is replaced by the absolute value
                # at the first training forward (_calibrate_dead_codes), before any restart can happen.
                threshold_ema_dead_code=cfg.dead_code_threshold,
                commitment_weight=cfg.commitment_weight,
                rotation_trick=False,  # plain straight-through as Selftok; the library's default for dim > 1 rotates
                # sync_codebook is left to the library: synced across ranks (as Selftok) when a process group
                # of more than one rank is initialised when this module is built.
            )
            self.codebook_size = cfg.codebook_size
        elif cfg.kind == "fsq":
            levels = list(cfg.fsq_levels)
            if not levels or any(int(n) != n or n < 3 for n in levels):
                raise ValueError(f"fsq_levels must be integers >= 3, got {levels}")
            self.fsq = FSQ(levels=levels, dim=cfg.code_dim)  # learned projections E <-> len(levels) if they differ
            self.codebook_size = math.prod(levels)
        else:
            raise ValueError(f"quantizer kind must be 'vq' or 'fsq', got {cfg.kind!r}")
        self._dead_codes_calibrated = False  # not saved: recomputed at the first training forward after a load

    def _calibrate_dead_codes(self, tokens: int) -> None:
        """Turn the relative dead-code threshold into the library's absolute one for batches of `tokens` = B*K.

        The library keeps an EMA of each code's per-batch count in the buffer `Codebook.cluster_size`. That
        count is summed over ranks when the codebook is synced. At every training step, after the EMA update,
        `Codebook.expire_codes_` replaces the codes whose cluster size is below the plain float attribute
        `threshold_ema_dead_code` with batch vectors. It then sets their cluster size to the float
        `reset_cluster_size`. Both attributes are read at each call, so setting them here takes effect.
        The expected cluster size of a code is tokens * world / C. Selftok multiplies both the threshold and
        the reset size by it, once, at the first training step.
        """
        assert self.vq is not None
        codebook = self.vq._codebook
        world = rank_world()[1] if codebook.use_ddp else 1
        absolute = self.cfg.dead_code_threshold * tokens * world / self.codebook_size
        codebook.threshold_ema_dead_code = absolute
        codebook.reset_cluster_size = absolute
        self._dead_codes_calibrated = True

    def forward(self, h: Tensor) -> QuantOut:
        """Quantize h (B, K, E). In train mode only, vq k-means-inits its codebook (first batch), updates it by
        EMA and restarts dead codes; an eval-mode forward never changes it."""
        if h.ndim != 3 or h.shape[-1] != self.code_dim:
            raise ValueError(f"quantizer input must be (B, K, {self.code_dim}), got {tuple(h.shape)}")
        if self.fsq is not None:
            codes, ids = self.fsq(h)  # (B, K, E), (B, K) int32
            return QuantOut(codes, ids.long(), h.new_zeros(()))
        assert self.vq is not None
        if self.training and self.cfg.dead_code_threshold > 0 and not self._dead_codes_calibrated:
            self._calibrate_dead_codes(h.shape[0] * h.shape[1])
        # VectorQuantize (1.32) returns (quantize, indices, loss). The loss already includes commitment_weight.
        # It is computed in train mode only, and the straight-through estimator is applied in train mode only.
        codebook = self.vq._codebook
        if self.training or bool(codebook.initted):
            codes, ids, loss = self.vq(h)  # (B, K, E) unit-norm, (B, K) long, ()
        else:
            # The library k-means-inits on the first forward in any mode. Here the mode is eval and the codebook
            # has not been initialised, so mark it initialised for this call only. It then stays as built
            # (zeros, or random codes when kmeans_init=False) until the first training batch.
            codebook.initted.fill_(True)
            try:
                codes, ids, loss = self.vq(h)  # (B, K, E), (B, K), ()
            finally:
                codebook.initted.fill_(False)
        if not (self.training and self.cfg.commitment_weight > 0):
            loss = h.new_zeros(())  # the library would hand out its shared `zero` buffer here
        return QuantOut(codes, ids, loss)

    def codes_from_ids(self, ids: Tensor) -> Tensor:
        """ids (B, K) -> codes (B, K, E). These equal `forward(h).codes` for `ids = forward(h).ids`, with the
        codebook as it was at that forward."""
        _check_ids(ids, self.codebook_size)
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (B, K), got shape {tuple(ids.shape)}")
        ids = ids.long()  # uint8 would index as a mask
        if self.fsq is not None:
            return self.fsq.indices_to_codes(ids)  # (B, K, E)
        assert self.vq is not None
        return self.vq.get_output_from_indices(ids)  # (B, K, E): codebook rows (no output projection)

    @property
    def codebook(self) -> Tensor:
        """Every code, (C, E), as a new tensor: a copy of the EMA codebook (vq) or the decoded FSQ grid (fsq)."""
        device = next(self.buffers()).device
        return self.codes_from_ids(torch.arange(self.codebook_size, device=device)[None])[0]  # (1, C) -> (C, E)

    @staticmethod
    def usage(ids: Tensor, codebook_size: int) -> dict[str, float]:
        """Code usage of a set of ids: perplexity = exp(entropy of the id histogram) (C when uniform, 1 for one
        code); used = fraction of the C codes that occur; dead = number of codes that do not occur."""
        _check_ids(ids, codebook_size)
        if ids.numel() == 0:
            raise ValueError("usage() needs at least one token id")
        counts = torch.bincount(ids.flatten().long(), minlength=codebook_size).double()  # (C,)
        p = counts[counts > 0] / counts.sum()
        distinct = int((counts > 0).sum())
        return {
            "perplexity": math.exp(float(-(p * p.log()).sum())),
            "used": distinct / codebook_size,
            "dead": float(codebook_size - distinct),
        }

