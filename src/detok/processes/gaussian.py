"""DDPM / IDDPM Gaussian diffusion as DiT and MAR's diffusion head use it.

Conventions (those of IDDPM, Nichol & Dhariwal 2021, and its DiT / MAR copies; our own code):

- index t = 0 is the least noisy step, t = T - 1 the noisiest; x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
- The network predicts eps. With `learn_sigma` its output is [eps | v] on dim 1 (2C channels, for images
  (B, 2C, H, W) as for per-token (B, 2C)); v in [-1, 1] interpolates the log variance between the
  posterior variance (v = -1) and beta_t (v = +1) ("learned range").
- Training loss = MSE(eps) + VB, the VB term computed with the mean frozen (IDDPM "hybrid"), in bits.
- Respacing keeps a subset S of the original steps and redefines beta_i = 1 - abar_{S_i} / abar_{S_{i-1}};
  the network always sees ORIGINAL step indices (`timestep_map[t]`).
- Schedule tables are float64 on CPU; every use indexes them and casts to the input's device and dtype
  (at least float32, as upstream's `.float()`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from detok.nn.random import draw_device, randn_like

ModelFn = Callable[[Tensor, Tensor], Tensor]


def beta_schedule(name: str, steps: int) -> Tensor:
    """Betas (steps,) float64 of IDDPM's named schedules: "linear" (scaled to `steps`), "cosine"."""
    if name == "linear":
        scale = 1000 / steps
        start, end = scale * 0.0001, scale * 0.02
        betas = torch.arange(steps, dtype=torch.float64) * ((end - start) / max(steps - 1, 1)) + start
        betas[-1] = end  # computed as numpy.linspace does, so the table matches upstream to the last bit
        return betas
    if name == "cosine":

        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        max_beta = 0.999
        return torch.tensor(
            [min(1 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)],
            dtype=torch.float64,
        )
    raise ValueError(f"unknown beta schedule {name!r} (expected 'linear' or 'cosine')")


def space_timesteps(num_steps: int, spec: str | int) -> list[int]:
    """Sorted original steps kept by IDDPM's respacing: "ddimN" (even stride) or "a,b,..." per section."""
    spec = str(spec)
    if spec.startswith("ddim"):
        want = int(spec[len("ddim") :])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == want:
                return list(range(0, num_steps, stride))
        raise ValueError(f"cannot take {want} evenly strided steps out of {num_steps}")
    counts = [int(c) for c in spec.split(",")]
    size_per, extra = divmod(num_steps, len(counts))
    start, kept = 0, set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps out of a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.add(start + round(cur))  # Python's round (half to even), as upstream
            cur += stride
        start += size
    return sorted(kept)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)) in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by IDDPM's decoder likelihood."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-likelihood (nats) of x under a Gaussian discretised to 256 bins on [-1, 1]."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _progress(it: Sequence[int], on: bool) -> Sequence[int]:
    """Wrap an iterable in tqdm when asked."""
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it)


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion (eps prediction, optional learned-range sigma), possibly respaced."""

    def __init__(
        self,
        schedule: Literal["linear", "cosine"] = "linear",
        steps: int = 1000,
        learn_sigma: bool = True,
        use_timesteps: Sequence[int] | None = None,
    ) -> None:
        self.schedule, self.base_steps, self.learn_sigma = schedule, steps, learn_sigma
        base = beta_schedule(schedule, steps)  # (steps,) float64
        kept = torch.tensor(
            sorted({int(i) for i in (range(steps) if use_timesteps is None else use_timesteps)})
        )
        if len(kept) == 0 or kept[0] < 0 or kept[-1] >= steps:
            raise ValueError(f"use_timesteps must be a non-empty subset of range({steps})")
        # Betas are always re-derived from the kept abar, even with every step kept: DiT's create_diffusion
        # wraps its process in a SpacedDiffusion over all steps, so its betas differ from the schedule's
        # by float64 rounding; this reproduces its tables to the last bit.
        abar = torch.cumprod(1.0 - base, dim=0)[kept]  # (S,)
        betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
        self.timestep_map = kept.to(torch.int64)  # (T,) original index of each step
        self.num_timesteps = len(betas)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        ac, ac_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1).sqrt()
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        # the posterior variance is 0 at t = 0, so its log is clipped to the value at t = 1
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = (
            torch.cat([pv[1:2], pv[1:]]).log() if len(pv) > 1 else pv.new_zeros(0)
        )
        self.posterior_mean_coef1 = betas * ac_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * (1.0 - betas).sqrt() / (1.0 - ac)
        self.log_betas = betas.log()
        # learn_sigma=False: IDDPM's "fixed large" variance (beta_t, the t = 0 entry made finite)
        self.fixed_large_variance = torch.cat([pv[1:2], betas[1:]])

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(schedule={self.schedule!r}, steps={self.base_steps}, "
            f"learn_sigma={self.learn_sigma}, num_timesteps={self.num_timesteps})"
        )

    @staticmethod
    def _take(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """table[t] on x's device, in x's dtype but at least float32 (as upstream), shaped (B, 1, ...)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        return table.to(t.device)[t].to(device=x.device, dtype=dtype).view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise for step indices t (B,) of this process."""
        return (
            self._take(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._take(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
        mean = (
            self._take(self.posterior_mean_coef1, t, x_t) * x0
            + self._take(self.posterior_mean_coef2, t, x_t) * x_t
        )
        var = self._take(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = self._take(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = x_t / sqrt(abar_t) - sqrt(1 / abar_t - 1) eps."""
        return (
            self._take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._take(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t / sqrt(abar_t) - x0) / sqrt(1 / abar_t - 1)."""
        return (self._take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._take(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip: float | None = None
    ) -> dict[str, Tensor]:
        """Mean, variance, log variance of p(x_{t-1} | x_t) and pred_xstart from the network output.

        `clip` clamps pred_xstart to [-clip, clip] before the posterior mean (IDDPM's clip_denoised, with a
        range); None, as upstream MAR, leaves it free."""
        c = x_t.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * c:
                raise ValueError(
                    f"learn_sigma expects {2 * c} output channels on dim 1, got {model_output.shape[1]}"
                )
            eps, v = model_output.split(c, dim=1)  # (B, C, ...) each
            min_log = self._take(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._take(self.log_betas, t, x_t)
            frac = (v + 1) / 2  # v = -1 -> posterior variance, v = +1 -> beta_t
            log_var = frac * max_log + (1 - frac) * min_log
            var = torch.exp(log_var)
        else:
            eps = model_output
            var = self._take(self.fixed_large_variance, t, x_t).expand_as(x_t)
            log_var = self._take(self.fixed_large_variance.log(), t, x_t).expand_as(x_t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip is not None:
            pred_xstart = pred_xstart.clamp(-clip, clip)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_xstart": pred_xstart}

    def _vb_terms(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VB term in bits: KL(q || p) for t > 0, discretised decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x0, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model_fn: ModelFn,
        x0: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample (B,) "loss" = "mse" (+ "vb" with learned sigma); model_fn(x_t, original step index)."""
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), generator=rng, device=draw_device(rng, x0.device))
            t = t.to(x0.device)
        if noise is None:
            noise = randn_like(x0, rng)
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, self.timestep_map.to(t.device)[t])
        terms: dict[str, Tensor] = {}
        if self.learn_sigma:
            eps, v = out.split(x0.shape[1], dim=1)
            frozen = torch.cat([eps.detach(), v], dim=1)  # the VB term trains sigma only
            terms["vb"] = self._vb_terms(frozen, x0, x_t, t)
        else:
            eps = out
        terms["mse"] = mean_flat((noise - eps) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def respace(self, spec: str | int) -> GaussianDiffusion:
        """This schedule on a subset of the ORIGINAL steps: "250", 100, "10,20" (per section) or "ddim25"."""
        kept = space_timesteps(self.base_steps, spec)
        return GaussianDiffusion(self.schedule, self.base_steps, self.learn_sigma, use_timesteps=kept)

    def _model(self, model_fn: ModelFn, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Step index tensor t (B,) of this process and the network output at x for step i."""
        t = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
        return t, model_fn(x, self.timestep_map.to(x.device)[t])

    @torch.no_grad()
    def p_sample_loop(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        *,
        rng: torch.Generator | None = None,
        temperature: float = 1.0,
        progress: bool = False,
        clip: float | None = None,
    ) -> Tensor:
        """Ancestral sampling from x_T = noise; sampled noise scaled by `temperature` (MAR), none at t = 0;
        pred_xstart clamped to [-clip, clip] when `clip` is given (`p_mean_variance`)."""
        x = noise
        for i in _progress(range(self.num_timesteps - 1, -1, -1), progress):
            t, out = self._model(model_fn, x, i)
            pmv = self.p_mean_variance(out, x, t, clip)
            x = pmv["mean"]
            if i > 0:
                x = x + torch.exp(0.5 * pmv["log_variance"]) * randn_like(x, rng) * temperature
        return x

    def ddim_step(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, eta: float = 0.0, noise: Tensor | None = None
    ) -> Tensor:
        """One DDIM step x_t -> x_{t-1} (Song et al. eq. 12); eps re-derived from pred_xstart as upstream."""
        pred_xstart = self.p_mean_variance(model_output, x_t, t)["pred_xstart"]
        eps = self.predict_eps_from_xstart(x_t, t, pred_xstart)
        abar = self._take(self.alphas_cumprod, t, x_t)
        abar_prev = self._take(self.alphas_cumprod_prev, t, x_t)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        x = pred_xstart * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        if eta > 0:
            noise = torch.randn_like(x_t) if noise is None else noise
            x = x + (t != 0).to(x.dtype).view_as(sigma) * sigma * noise
        return x

    @torch.no_grad()
    def ddim_sample_loop(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        *,
        eta: float = 0.0,
        rng: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """DDIM sampling over this process's steps from x_T = noise (deterministic for eta = 0)."""
        x = noise
        for i in _progress(range(self.num_timesteps - 1, -1, -1), progress):
            t, out = self._model(model_fn, x, i)
            z = randn_like(x, rng) if eta > 0 and i > 0 else None
            x = self.ddim_step(out, x, t, eta=eta if i > 0 else 0.0, noise=z)
        return x
