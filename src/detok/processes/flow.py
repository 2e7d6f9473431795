"""Flow matching on the linear path, as SiT's and LightningDiT's `transport/` use it (our own code).

Conventions (those of SiT's `create_transport("Linear", "velocity")`):

- x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I) the noise and x1 the data: t = 0 is noise, t = 1 is data.
- The network predicts the velocity v(x_t, t) and regresses u_t = x1 - x0; sampling integrates dx/dt = v
  forward from t = 0 to t = 1.
- Time sampling for training: uniform (SiT) or logit-normal t = sigmoid(N(t_mean, t_std)) (LightningDiT),
  then mapped to [train_eps, 1 - train_eps] (SiT maps to [t0, t1]; for linear + velocity t0 = 0, t1 = 1).
- Sampling starts at t = sample_eps; the ODE ends at 1 - sample_eps (0 reproduces upstream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from detok.nn.random import draw_device, randn_like
from detok.processes.gaussian import _progress, mean_flat

ModelFn = Callable[[Tensor, Tensor], Tensor]


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """Per-sample t (B,) as (B, 1, ...) in x's dtype to broadcast against x."""
    return t.to(dtype=x.dtype, device=x.device).view(-1, *([1] * (x.ndim - 1)))


def shift_time(t: Tensor, shift: float) -> Tensor:
    """LightningDiT's timestep shift t' = s t / (1 + (s - 1) t) of the time grid (s = 1: identity).

    From LightningDiT `transport/integrators.py` (`ode.__init__`, `compute_tm`), applied to the
    linspace grid with t = 1 data. With s < 1 (LightningDiT uses 0.3) steps crowd near the noise end t = 0.
    In noise level sigma = 1 - t it is sigma' = sigma / (s + (1 - s) sigma), SD3's shift with factor 1 / s.
    """
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


class FlowTransport:
    """Linear-path flow matching, velocity prediction; Euler / Heun / dopri5 ODE, Euler-Maruyama SDE."""

    def __init__(
        self,
        t_sampling: Literal["uniform", "logit_normal"] = "uniform",
        t_mean: float = 0.0,
        t_std: float = 1.0,
        train_eps: float = 0.0,
        sample_eps: float = 0.0,
    ) -> None:
        if t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"t_sampling must be 'uniform' or 'logit_normal', got {t_sampling!r}")
        self.t_sampling, self.t_mean, self.t_std = t_sampling, t_mean, t_std
        self.train_eps, self.sample_eps = train_eps, sample_eps

    def __repr__(self) -> str:
        return (
            f"FlowTransport(t_sampling={self.t_sampling!r}, t_mean={self.t_mean}, t_std={self.t_std}, "
            f"train_eps={self.train_eps}, sample_eps={self.sample_eps})"
        )

    # --- path and conversions -------------------------------------------------------------------------

    @staticmethod
    def plan(t: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """x_t = t x1 + (1 - t) x0 and the target velocity u_t = x1 - x0, for t (B,)."""
        tt = _bcast(t, x1)
        return tt * x1 + (1 - tt) * x0, x1 - x0

    @staticmethod
    def velocity_to_data(v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Predicted data x1 = x_t + (1 - t) v."""
        return x_t + (1 - _bcast(t, x_t)) * v

    @staticmethod
    def velocity_to_noise(v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Predicted noise x0 = x_t - t v."""
        return x_t - _bcast(t, x_t) * v

    @staticmethod
    def data_noise_to_velocity(x1: Tensor, x0: Tensor) -> Tensor:
        """Velocity u = x1 - x0 of the straight path through (x0, x1)."""
        return x1 - x0

    @staticmethod
    def score_from_velocity(v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Score -E[x0 | x_t] / (1 - t) = (t v - x_t) / (1 - t), as SiT's get_score_from_velocity."""
        tt = _bcast(t, x_t)
        return (tt * v - x_t) / (1 - tt)

    # --- training -------------------------------------------------------------------------------------

    def sample_t(
        self, n: int, device: torch.device | str, rng: torch.Generator | None = None
    ) -> Tensor:
        """Training times (n,) float32 in [train_eps, 1 - train_eps], uniform or logit-normal."""
        gen_device = draw_device(rng, device)
        if self.t_sampling == "uniform":
            u = torch.rand(n, generator=rng, device=gen_device)
        else:
            u = torch.sigmoid(
                self.t_mean + self.t_std * torch.randn(n, generator=rng, device=gen_device)
            )
        return (self.train_eps + (1 - 2 * self.train_eps) * u).to(device)

    def training_losses(
        self,
        model_fn: ModelFn,
        x1: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        rng: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample (B,) "loss" = mean (v - u_t)^2, "cos_loss" = mean of 1 - cos(v, u_t) over dim 1."""
        if t is None:
            t = self.sample_t(x1.shape[0], x1.device, rng)
        t = t.to(device=x1.device, dtype=x1.dtype)
        x0 = randn_like(x1, rng) if noise is None else noise
        x_t, u_t = self.plan(t, x0, x1)
        v = model_fn(x_t, t)
        return {
            "loss": mean_flat((v - u_t) ** 2),
            # LightningDiT's use_cosine_loss term: cosine over channels (dim 1), averaged over positions
            "cos_loss": mean_flat(1 - F.cosine_similarity(v, u_t, dim=1)),
        }

    # --- sampling -------------------------------------------------------------------------------------

    def time_grid(self, steps: int, like: Tensor, shift: float = 1.0, t1: float | None = None) -> Tensor:
        """linspace(sample_eps, t1, steps) (t1 defaults to 1 - sample_eps), shifted; float32 at least."""
        if steps < 2:
            raise ValueError(f"need at least 2 time points, got {steps}")
        dtype = torch.promote_types(like.dtype, torch.float32)
        t1 = 1 - self.sample_eps if t1 is None else t1
        return shift_time(torch.linspace(self.sample_eps, t1, steps, dtype=dtype, device=like.device), shift)

    @torch.no_grad()
    def sample_ode(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        *,
        steps: int = 50,
        method: Literal["euler", "heun", "dopri5"] = "euler",
        atol: float = 1e-6,
        rtol: float = 1e-3,
        shift: float = 1.0,
        progress: bool = False,
    ) -> Tensor:
        """Integrate dx/dt = v(x, t) from noise (t = 0) to t = 1 over `steps` time points.

        The grid is linspace(0, 1, steps) (steps - 1 intervals), then `shift_time(grid, shift)`.
        euler / heun (Heun's second order, trapezoidal) step on the grid; dopri5 is torchdiffeq's adaptive
        solver with the grid as output times (the number of model calls is then set by atol / rtol).
        """
        grid = self.time_grid(steps, noise, shift)  # (steps,)
        b = noise.shape[0]

        def vel(x: Tensor, t: Tensor) -> Tensor:
            return model_fn(x, t.expand(b).to(grid.dtype))

        if method == "dopri5":
            from torchdiffeq import odeint

            return odeint(lambda t, x: vel(x, t), noise, grid, method="dopri5", atol=atol, rtol=rtol)[-1]
        if method not in ("euler", "heun"):
            raise ValueError(f"method must be 'euler', 'heun' or 'dopri5', got {method!r}")
        x = noise
        for i in _progress(range(steps - 1), progress):
            dt = grid[i + 1] - grid[i]
            v0 = vel(x, grid[i])
            if method == "euler":
                x = x + dt * v0
            else:
                v1 = vel(x + dt * v0, grid[i + 1])
                x = x + 0.5 * dt * (v0 + v1)
        return x

    @torch.no_grad()
    def sample_sde(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        *,
        steps: int = 250,
        rng: torch.Generator | None = None,
        diffusion_norm: float = 1.0,
        last_step_size: float = 0.04,
        progress: bool = False,
    ) -> Tensor:
        """SiT's SDE sampler: Euler-Maruyama on dx = [v + w(t) s] dt + sqrt(2 w(t)) dW, then a mean step.

        w(t) = diffusion_norm * (1 - t) (SiT's default `--diffusion-form sigma`), s the score from v.
        The noise term is sqrt(2 w dt) z, as in SiT's code (with drift v + w s it keeps the ODE's marginals).
        steps - 1 stochastic steps over linspace(sample_eps, 1 - last_step_size, steps), then the last step
        x + (v + w s) * last_step_size without noise (SiT's `--last-step Mean`): `steps` model calls in all.
        """
        t1 = 1 - last_step_size if last_step_size > 0 else 1 - self.sample_eps
        grid = self.time_grid(steps, noise, t1=t1)  # (steps,)
        b = noise.shape[0]

        def drift(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            tb = t.expand(b).to(grid.dtype)
            v = model_fn(x, tb)
            w = diffusion_norm * (1 - _bcast(tb, x))
            return v + w * self.score_from_velocity(v, x, tb), w

        x = noise
        dt = grid[1] - grid[0]
        for i in _progress(range(steps - 1), progress):
            d, w = drift(x, grid[i])
            x = x + d * dt + torch.sqrt(2 * w) * randn_like(x, rng) * torch.sqrt(dt).to(x.dtype)
        if last_step_size > 0:
            x = x + drift(x, grid[-1])[0] * last_step_size
        return x
