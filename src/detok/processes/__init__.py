"""Noising processes: Gaussian diffusion (DDPM / IDDPM), linear flow matching, and guidance."""

from detok.processes.flow import FlowTransport, shift_time
from detok.processes.gaussian import GaussianDiffusion, beta_schedule, mean_flat, space_timesteps
from detok.processes.guidance import cfg_fn, linear_cfg

__all__ = [
    "FlowTransport",
    "GaussianDiffusion",
    "beta_schedule",
    "cfg_fn",
    "linear_cfg",
    "mean_flat",
    "shift_time",
    "space_timesteps",
]
