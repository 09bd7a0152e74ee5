"""Noise schedules and the DDIM / DPM-Solver++(2M) sampling loops in PyTorch (the "scheduler" half of "ddpm").

The network lives in ddpm.py; this module holds only the diffusion arithmetic, the diffusers
model/scheduler split. The schedule, the timesteps and the per-step coefficients live in
contracts/diffusion.py (torch-free), shared with serving/sampler_ddim.py, whose ``ddim_loop`` is
this loop's update in NumPy: tests/test_sampler_specs.py feeds the same eps and z through both and
fails when their trajectories drift apart (1e-5).

Conventions (Ho et al. 2020; Song et al. 2021, "DDIM"):
- ``alphas_cumprod[t]`` = prod_{s<=t} (1 - beta_s) for t = 0..T-1, computed in float64;
  x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps.
- The S sampling steps are "trailing" (diffusers' timestep_spacing="trailing"):
  t_i = round((i + 1) * T / S) - 1 for i = S-1 .. 0, so the loop starts at t = T-1 (pure noise,
  no brightness bias) and the last step jumps to "t = -1", whose alpha is 1 (set_alpha_to_one).
- One step, from t to the next (smaller) t' with a = a_t, a' = a_t' (eta = 0: deterministic):
      x0    = (x_t - sqrt(1 - a) eps) / sqrt(a)          clipped to [-1, 1] when clip
      sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')
      x_t'  = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z,   z ~ N(0, I)
  The per-step scalars are computed in float64 and applied to float32 tensors. The direction term
  uses the model's eps, not the one implied by the clipped x0 (diffusers' default,
  use_clipped_model_output=False): recomputing it carries the clipping error of the first steps,
  where 1/sqrt(a) amplifies every eps error ~150x, into x_t' as salt-and-pepper speckle that
  eta = 0 never removes (seen on mnist5k: a quarter of the samples of a short training run).
- DPM-Solver++(2M) (Lu et al. 2022; ``sampler="dpmpp_2m"``): the same timesteps, a second-order
  multistep update on the data prediction x0 (clipped when clip), deterministic; its per-step
  coefficients and derivation are in ``contracts.diffusion.dpmpp_2m_coefficients``:
      x_t = c_x x_s + c_cur x0_i + c_prev x0_{i-1}
  Both loops are checked step by step against diffusers' schedulers fed the same eps
  (tests/test_diffusion_samplers.py).
"""
from __future__ import annotations

from typing import Callable

import torch

# the schedule arithmetic is written once, torch-free, and shared with serving/sampler_ddim.py
from contracts.diffusion import (SAMPLERS, SCHEDULES, alphas_cumprod, ddim_coefficients, ddim_timesteps,
                                 dpmpp_2m_coefficients)

__all__ = ["SAMPLERS", "SCHEDULES", "alphas_cumprod", "ddim_coefficients", "ddim_sample", "ddim_timesteps"]


@torch.no_grad()
def ddim_sample(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_t: torch.Tensor,
                acp: list[float], steps: int, *, eta: float = 0.0, clip: bool = True,
                generator: torch.Generator | None = None, sampler: str = "ddim") -> torch.Tensor:
    """Run DDIM (or DPM-Solver++(2M)) from x_T (N x C x H x W, float32) down to x_0 in [-1, 1] (clip) or unbounded.

    ``denoiser(x, t)`` takes float32 x and int64 t of shape N and returns predicted eps.
    ``generator`` supplies z when eta > 0 (unused at eta = 0). ``sampler``: "ddim" | "dpmpp_2m"
    (``contracts.diffusion.SAMPLERS``); ValueError for another.
    """
    seq = ddim_timesteps(len(acp), steps)
    if sampler == "dpmpp_2m":
        return _dpmpp_2m_sample(denoiser, x_t, acp, seq, clip)
    if sampler != "ddim":
        raise ValueError(f"sampler {sampler!r} is not implemented (known: {', '.join(SAMPLERS)})")
    x = x_t.float()
    n = x.shape[0]
    for i, t in enumerate(seq):
        t_prev = seq[i + 1] if i + 1 < len(seq) else -1
        sa, s1a, sa_prev, dir_coef, sigma = ddim_coefficients(acp, t, t_prev, eta)
        eps = denoiser(x, torch.full((n,), t, dtype=torch.int64, device=x.device)).float()
        x0 = (x - eps * s1a) / sa
        if clip:  # the direction term keeps the model's eps (diffusers' use_clipped_model_output=False)
            x0 = x0.clamp(-1.0, 1.0)
        x = x0 * sa_prev + eps * dir_coef
        if sigma > 0:
            z = torch.randn(x.shape, generator=generator,
                            device=generator.device if generator is not None else x.device).to(x)
            x = x + z * sigma
    return x


def _dpmpp_2m_sample(denoiser, x_t: torch.Tensor, acp: list[float], seq: list[int], clip: bool) -> torch.Tensor:
    """DPM-Solver++(2M): x_t = c_x x_s + c_cur x0_i + c_prev x0_{i-1}, coefficients from contracts.diffusion."""
    x = x_t.float()
    n = x.shape[0]
    x0_prev = None
    for t, (sa, s1a, c_x, c_cur, c_prev) in zip(seq, dpmpp_2m_coefficients(acp, seq)):
        eps = denoiser(x, torch.full((n,), t, dtype=torch.int64, device=x.device)).float()
        x0 = (x - eps * s1a) / sa                  # the data prediction x0_i
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        x = x * c_x + x0 * c_cur
        if c_prev != 0:
            x = x + x0_prev * c_prev
        x0_prev = x0
    return x
