"""The Tokenizer interface every generator consumes, and the diagonal Gaussian posterior.

Images are (B, 3, H, W) in [-1, 1]. Continuous latents are (B, C, h, w). A tokenizer carries its
own per-channel latent statistics (saved with its weights): generators train on
`normalize(encode(x))` and decode `decode(denormalize(z))`, so the statistics travel with the model.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # posterior log-variance clamp (LDM / l-DeTok)


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) over latents; `moments` = cat([mean, logvar]) on `dim`."""

    def __init__(self, moments: torch.Tensor, dim: int = 1) -> None:
        mean, logvar = moments.chunk(2, dim=dim)
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, rng: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps with eps ~ N(0, I) drawn from `generator`."""
        eps = torch.randn(self.mean.shape, generator=rng, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over all non-batch dims: (B,)."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


class Tokenizer(nn.Module):
    """Base of continuous tokenizers: encode / decode plus normalisation stats stored as buffers."""

    latent_channels: int
    latent_grid: int

    def __init__(self, latent_channels: int, latent_grid: int) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.latent_grid = latent_grid
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one image's latent."""
        return (self.latent_channels, self.latent_grid, self.latent_grid)

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior moments (B, 2C, h, w): mean channels then log-variance channels; no corruption."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, sample: bool = False, rng: torch.Generator | None = None):
        """Latents (B, C, h, w): the posterior mean, or a posterior sample when `sample`."""
        post = DiagonalGaussian(self.encode_moments(images))
        return post.sample(rng) if sample else post.mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in about [-1, 1] (not clamped) from raw latents (B, C, h, w)."""
        raise NotImplementedError

    # -- normalisation ---------------------------------------------------------------------------
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-channel latent statistics (C,)."""
        if mean.shape != (self.latent_channels,) or std.shape != (self.latent_channels,):
            raise ValueError(f"stats must have shape ({self.latent_channels},), got {tuple(mean.shape)}")
        if not torch.all(std > 0):
            raise ValueError("latent std must be positive")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """(z - mean_c) / std_c over the channel dim of (B, C, h, w)."""
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`."""
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the weights (not the latent stats): names a latent space, for cache checks."""
        return weights_fingerprint(self, skip=("latent_mean", "latent_std"))


def weights_fingerprint(module: nn.Module, skip: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex) of a module's state dict (entries named in `skip` left out)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if name in skip:
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


class DiscreteTokenizer(nn.Module):
    """Base of discrete tokenizers: images <-> K token ids in [0, codebook_size), in AR order (coarse first).

    The generator-facing interface mirrors `Tokenizer`: `latent_shape` is (K,), `encode` gives ids (B, K)
    long, `decode(ids, rng=)` images, and `normalize` / `denormalize` are the identity (ids need no
    statistics). `discrete` lets the engine and samplers tell the two kinds apart.
    """

    discrete = True
    num_tokens: int
    codebook_size: int
    token_order = "ar"  # the order `tokenize` returns: "ar" (coarse first, DDT) or "raster" (spatial VQ)
    prefix_order = True  # a prefix of the ids is a coarse image (DDT); False for raster ids

    @property
    def latent_shape(self) -> tuple[int]:
        """(K,): one image's token ids."""
        return (self.num_tokens,)

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> ids (B, K) long in AR order."""
        raise NotImplementedError

    def detokenize(self, ids: torch.Tensor, rng: torch.Generator | None = None, **options) -> torch.Tensor:
        """Ids (B, K) in AR order -> images (B, 3, H, W) in about [-1, 1]."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, sample: bool = False, rng: torch.Generator | None = None):
        """`tokenize` (quantization is deterministic: `sample` and `rng` do not apply)."""
        del sample, rng
        return self.tokenize(images)

    def decode(self, ids: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        return self.detokenize(ids, rng=rng)

    def normalize(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def denormalize(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def check_ids(self, ids: torch.Tensor) -> None:
        """A ValueError naming the problem unless ids is (B, K) integer with values in [0, codebook_size)."""
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be an integer tensor, got {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(f"token ids must have shape (B, {self.num_tokens}) (K = {self.num_tokens}), "
                             f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}) (the codebook size), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the weights: names a token space, for cache checks."""
        return weights_fingerprint(self)
