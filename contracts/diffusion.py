"""Diffusion schedule arithmetic written once, in plain Python floats, for both sampling loops.

genmodels/ddim.py (the PyTorch loop) and serving/sampler_ddim.py (the NumPy loop over the ONNX
denoiser) both take their timesteps and per-step coefficients from here, so the two loops cannot
drift on the schedule; tests/test_sampler_specs.py feeds the same eps through both loops and
compares trajectories. Conventions: Ho et al. 2020 (DDPM) and Song et al. 2021 (DDIM); see the
docstring of genmodels/ddim.py for the step equations.
"""
from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine")


def alphas_cumprod(schedule: str, timesteps: int) -> list[float]:
    """a_t = prod_{s<=t} (1 - beta_s) for t = 0..T-1, float64 Python floats, length ``timesteps``.

    linear: betas from 1e-4 to 0.02 at T = 1000, scaled by 1000/T for other T (so the total
    noise stays the same; improved-DDPM's convention). cosine: Nichol & Dhariwal 2021,
    a_t = f(t + 1) / f(0) with f(t) = cos((t/T + s) / (1 + s) * pi/2)^2, s = 0.008, betas capped at 0.999.
    Raises ValueError for T < 1 or an unknown schedule.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if schedule == "linear":
        scale = 1000.0 / timesteps
        lo, hi = scale * 1e-4, min(scale * 0.02, 0.999)
        betas = [lo + (hi - lo) * i / max(timesteps - 1, 1) for i in range(timesteps)]
    elif schedule == "cosine":
        s = 0.008
        f = [math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2 for t in range(timesteps + 1)]
        betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(timesteps)]
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return out


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The S timesteps the sampler visits, descending ("trailing" spacing): starts at T-1.

    t_i = round((i + 1) * T / S) - 1 for i = S-1 .. 0. Raises ValueError unless 1 <= S <= T.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sample_steps must be in [1, timesteps={timesteps}], got {steps}")
    return [round((i + 1) * timesteps / steps) - 1 for i in range(steps - 1, -1, -1)]


def ddim_coefficients(acp, t: int, t_prev: int, eta: float) -> tuple[float, float, float, float, float]:
    """(sqrt(a), sqrt(1-a), sqrt(a'), sqrt(1-a'-sigma^2), sigma) in float64 for one step t -> t_prev.

    a = acp[t], a' = acp[t_prev] (1 when t_prev < 0), sigma = eta sqrt((1-a')/(1-a)) sqrt(1 - a/a').
    """
    a = float(acp[t])
    a_prev = float(acp[t_prev]) if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(max(1 - a / a_prev, 0.0)) if eta else 0.0
    return math.sqrt(a), math.sqrt(1 - a), math.sqrt(a_prev), math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)), sigma
