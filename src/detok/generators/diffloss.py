"""Per-token diffusion head ("Diffusion Loss") shared by MAR and RasterAR / RandomAR.

MAR, "Autoregressive Image Generation without Vector Quantization" (arXiv 2406.11838): a small MLP
with adaLN denoises one token at a time, conditioned on the backbone's output z for that token.
The MLP's parameter names equal upstream `SimpleMLPAdaLN`'s, so released weights load by name.

Axis letters: M tokens flattened over the batch, C token channels, W head width, Z condition width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detok.nn.dit_blocks import LN_EPS, FinalLayer, TimestepEmbedder, modulate
from detok.nn.linear import Linear
from detok.nn.random import randn
from detok.processes.gaussian import GaussianDiffusion

PRECOMPUTE_ELEMENTS = 1 << 23  # adaLN outputs kept at once while sampling (32 MB of float32)


class ResBlock(nn.Module):
    """x + gate * mlp(modulate(LN(x), shift, scale)), with (shift, scale, gate) from the condition y."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = nn.Sequential(Linear(width, width), nn.SiLU(), Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.adaLN_modulation(y))

    def modulated(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """The block given its adaLN output mod = adaLN_modulation(y) (M, 3W) instead of y."""
        shift, scale, gate = mod.chunk(3, dim=-1)  # 3 x (M, W)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class DiffLossMLP(nn.Module):
    """The denoiser f(x_t, t, z) -> [eps | v] (M, 2C): MAR's SimpleMLPAdaLN, same parameter names."""

    def __init__(self, channels: int, cond_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.channels = channels
        self.time_embed = TimestepEmbedder(width, linear=Linear)
        self.cond_embed = Linear(cond_channels, width)
        self.input_proj = Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        # eps and the learned-variance interpolant
        self.final_layer = FinalLayer(width, 2 * channels, linear=Linear)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier Linear weights, N(0, 0.02) time MLP, zero adaLN and output layers (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zero = [b.adaLN_modulation[-1] for b in self.res_blocks]
        zero += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (M, C) noisy tokens, t (M,) timestep indices, c (M, Z) conditions -> (M, 2C)."""
        return self.denoise(x, self.time_embed(t) + self.cond_embed(c))

    def denoise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (M, C) noisy tokens, y (M, W) summed time + condition embeddings -> (M, 2C).

        The training path: each adaLN output is used where it is made (no concatenated copy of all of them,
        which at the training batch is the largest tensor of the step, and its gradient another).
        """
        return self._denoise_parts(x, self._modulation_parts(y))

    def _modulation_parts(self, y: torch.Tensor) -> list[torch.Tensor]:
        """Every adaLN output for conditions y (..., W): [block 1 (..., 3W), ..., final (..., 2W)]."""
        layers = [b.adaLN_modulation for b in self.res_blocks] + [self.final_layer.adaLN_modulation]
        act = F.silu(y)  # every adaLN starts with SiLU, then its Linear
        return [m[1](act) for m in layers]

    def modulations(self, y: torch.Tensor) -> torch.Tensor:
        """Every adaLN output for conditions y (..., W) -> (..., MOD) = [block 1 (3W) | ... | final (2W)].

        They depend on (t, z) only, not on x: a sampler runs them for all its steps in one product.
        """
        return torch.cat(self._modulation_parts(y), dim=-1)  # (..., MOD)

    def denoise_modulated(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        """`denoise` with its adaLN outputs mods (M, MOD) from `modulations` given."""
        width = self.input_proj.out_features
        return self._denoise_parts(x, mods.split([3 * width] * len(self.res_blocks) + [2 * width], dim=-1))

    def _denoise_parts(self, x: torch.Tensor, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """x (M, C), parts: the adaLN outputs of every block and the final layer (`_modulation_parts`)."""
        h = self.input_proj(x)  # (M, W)
        for block, mod in zip(self.res_blocks, parts):
            h = block.modulated(h, mod)
        fl = self.final_layer
        shift, scale = parts[-1].chunk(2, dim=-1)  # 2 x (M, W)
        return fl.linear(modulate(fl.norm_final(h), shift, scale))  # (M, 2C)


class DiffLoss(nn.Module):
    """Per-token diffusion: cosine DDPM (1000 steps, learned sigma) for the loss, respaced for sampling."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        depth: int,
        width: int,
        num_sampling_steps: str = "100",
        batch_mul: int = 4,
        schedule: str = "cosine",
        train_steps: int = 1000,
        clip_xstart: float = 0.0,
    ) -> None:
        super().__init__()
        # > 0: sampling clamps the predicted x0 to +-clip_xstart (0: free, as upstream). The cosine schedule's
        # last step has abar ~ 2e-9, so x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies the head's eps
        # error by ~2e4 there; a respaced sampler's first jump (t 999 -> 979 at 50 steps) keeps ~600x of it in
        # x_{t-1} instead of ~30x at 1000 steps. A well-trained head (upstream's) makes that error tiny; a
        # CPU-budget head does not: its 50-step samples reached std 300-3000 (normalised units; docs/RESULTS.md).
        self.clip_xstart = float(clip_xstart)
        self.channels = channels
        self.batch_mul = batch_mul  # each token's condition is reused for this many (t, noise) draws
        self.num_sampling_steps = str(num_sampling_steps)
        self.net = DiffLossMLP(channels, cond_channels, width, depth)
        self.schedule, self.train_steps = schedule, train_steps
        self._processes: dict[str, GaussianDiffusion] = {}  # built on first use (so meta-device builds work)

    @property
    def process(self) -> GaussianDiffusion:
        """The training process: `train_steps` steps of the `schedule`, learned sigma."""
        if "train" not in self._processes:
            self._processes["train"] = GaussianDiffusion(self.schedule, self.train_steps, learn_sigma=True)
        return self._processes["train"]

    def sampler(self, steps: str | int | None = None) -> GaussianDiffusion:
        """The process respaced to `steps` (default `num_sampling_steps`), built once per value."""
        key = str(steps or self.num_sampling_steps)
        if key not in self._processes:
            self._processes[key] = self.process.respace(key)
        return self._processes[key]

    def loss(
        self,
        target: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scalar eps-MSE + VB loss of tokens target (M, C) given z (M, Z), averaged where mask (M,) set."""
        target = target.repeat(self.batch_mul, 1)  # (batch_mul * M, C)
        z = z.repeat(self.batch_mul, 1)  # (batch_mul * M, Z)
        # t ~ U{0..999} then noise, both from `generator` (drawn on its device)
        terms = self.process.training_losses(lambda x_t, t: self.net(x_t, t, z), target, rng=rng)
        loss = terms["loss"]  # (batch_mul * M,)
        if mask is None:
            return loss.mean()
        mask = mask.to(loss.dtype).repeat(self.batch_mul)
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        z_uncond: torch.Tensor | None = None,
        *,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        steps: str | int | None = None,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Tokens (M, C) for conditions z (M, Z); with z_uncond, eps = uncond + cfg_scale * (cond - uncond).

        As in MAR the guided variance output is the conditional half's, and the noise and the state are
        shared by both halves, so only the conditional trajectory is run and returned.
        """
        m = z.shape[0]
        noise = randn((m, self.channels), device=z.device, dtype=z.dtype, rng=rng)
        if m == 0:
            return noise
        sampler = self.sampler(steps)
        net = self.net
        # Everything but x is known before the loop: the condition embedding (fixed), the time embedding of
        # each step (one t for every row) and so every adaLN output (t, z) -> shift / scale / gate, which is
        # most of the head's weights. They are computed for a chunk of steps in one product (a few large
        # matmuls instead of one weight read per step), leaving only the x path in the loop.
        cond_emb = net.cond_embed(z if z_uncond is None else torch.cat([z, z_uncond]))  # (M', W)
        ts = sampler.timestep_map.to(z.device)  # (T,) the network's step index of loop index i
        rows, n_steps = cond_emb.shape[0], ts.shape[0]
        mod_dim = net.final_layer.adaLN_modulation[1].out_features + sum(
            b.adaLN_modulation[1].out_features for b in net.res_blocks
        )
        chunk = max(1, min(n_steps, PRECOMPUTE_ELEMENTS // max(1, rows * mod_dim)))
        cache: dict[int, torch.Tensor] = {}  # first loop index of a chunk -> (k, M', MOD)
        state = {"i": n_steps}  # p_sample_loop calls the model once per step, i = T-1 down to 0

        def mods_at(i: int) -> torch.Tensor:
            lo = (i // chunk) * chunk
            if lo not in cache:
                cache.clear()
                temb = net.time_embed(ts[lo : lo + chunk])  # (k, W)
                cache[lo] = net.modulations(temb[:, None] + cond_emb[None])  # (k, M', MOD)
            return cache[lo][i - lo]  # (M', MOD)

        def mods_for(t: torch.Tensor) -> torch.Tensor:
            state["i"] -= 1
            i = state["i"]
            if t.device.type == "cpu" and (i < 0 or int(t[0]) != int(ts[i])):  # free check on CPU (a sync on GPU)
                raise RuntimeError(f"the sampler called the head at step {int(t[0])}, expected loop index {i}")
            return mods_at(i)

        if z_uncond is None:

            def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return net.denoise_modulated(x, mods_for(t))

        else:
            c = self.channels

            def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                out = net.denoise_modulated(torch.cat([x, x]), mods_for(t))  # (2M, 2C)
                cond, uncond = out.chunk(2)  # (M, 2C) each
                eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
                return torch.cat([eps, cond[:, c:]], dim=1)

        return sampler.p_sample_loop(model_fn, noise, rng=rng, temperature=temperature, clip=self.clip_xstart or None)

    @torch.no_grad()
    def sample_plain(
        self,
        z: torch.Tensor,
        z_uncond: torch.Tensor | None = None,
        *,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        steps: str | int | None = None,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`sample` computed the straightforward way (the whole head at every step, as upstream): the
        reference that the precomputed path equals, and the no-cache baseline of the benchmarks."""
        m = z.shape[0]
        noise = randn((m, self.channels), device=z.device, dtype=z.dtype, rng=rng)
        if m == 0:
            return noise
        zz = z if z_uncond is None else torch.cat([z, z_uncond])  # (M', Z)
        c = self.channels

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            xx = x if z_uncond is None else torch.cat([x, x])  # (M', C)
            out = self.net(xx, t[:1].expand(xx.shape[0]), zz)  # (M', 2C)
            if z_uncond is None:
                return out
            cond, uncond = out.chunk(2)  # (M, 2C) each
            return torch.cat([uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c]), cond[:, c:]], dim=1)

        return self.sampler(steps).p_sample_loop(model_fn, noise, rng=rng, temperature=temperature, clip=self.clip_xstart or None)
