"""Diffusion schedule arithmetic written once, in plain Python floats, for both sampling loops.

genmodels/ddim.py (the PyTorch loop) and serving/sampler_ddim.py (the NumPy loop over the ONNX
denoiser) both take their timesteps and per-step coefficients from here, so the two loops cannot
drift on the schedule; tests/test_sampling_options.py feeds the same eps through both loops and
compares trajectories, and tests/test_diffusion_samplers.py checks both against diffusers'
``DDIMScheduler`` and ``DPMSolverMultistepScheduler``. Conventions: Ho et al. 2020 (DDPM), Song et
al. 2021 (DDIM), Lu et al. 2022 ("DPM-Solver++", arXiv:2211.01095); see the docstring of
genmodels/ddim.py for the DDIM step and ``dpmpp_2m_coefficients`` below for DPM-Solver++(2M).

Samplers (``SAMPLERS``, the ``sampler`` option of a ddim sampler spec): ``ddim`` (first order, eta
for stochasticity) and ``dpmpp_2m`` (DPM-Solver++ 2M, second-order multistep, deterministic). Both
visit the same S "trailing" timesteps and end at "t = -1" (alpha 1), where x is the last x0
prediction. Classifier-free guidance (``guided_eps``) acts on eps before either update, at the steps
``guided_at`` selects (all of them, or the noisier ones: a guidance interval).
"""
from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddim", "dpmpp_2m")  # the update rules of the ddim sampler kind (its option ``sampler``)


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


def dpmpp_2m_coefficients(acp, seq: list[int]) -> list[tuple[float, float, float, float, float]]:
    """Per-step scalars of DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, "midpoint" form) over ``seq``.

    ``seq`` is ``ddim_timesteps(T, S)`` (descending); step i goes from s = seq[i] to t = seq[i+1], the
    last one to "t = -1" (a = 1). Returns S tuples ``(sqrt(a_s), sqrt(1-a_s), c_x, c_cur, c_prev)`` in
    float64; with x0_i = (x - sqrt(1-a_s) eps_i) / sqrt(a_s) (the data prediction, clipped when the
    sampler clips) the update is

        x_t = c_x * x_s + c_cur * x0_i + c_prev * x0_{i-1}        (c_prev = 0 on first-order steps)

    derived as follows, with alpha = sqrt(a), sigma = sqrt(1 - a) (the VP parameterisation):
      1. lambda = log(alpha / sigma), the half log-SNR; h_i = lambda_t - lambda_s > 0.
      2. First order (the first step, and the last: sigma_t = 0, lambda_t = +inf, so e^-h = 0), eq. (9),
         DPM-Solver++(1) = DDIM with eta 0: x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h_i) x0_i.
      3. Second order (steps 1 .. S-2), eq. (10) / Algorithm 2: r_i = h_{i-1} / h_i and
         D_i = (1 + 1 / (2 r_i)) x0_i - (1 / (2 r_i)) x0_{i-1}, then step 2 with D_i in place of x0_i.
         So c_x = sigma_t / sigma_s, c_cur = alpha_t (1 - e^-h_i)(1 + 1/(2 r_i)),
         c_prev = -alpha_t (1 - e^-h_i) / (2 r_i).
    This is diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    solver_type="midpoint", final_sigmas_type="zero")``, whose last step is also first order.
    Raises ValueError for an empty or non-descending ``seq``.
    """
    if not seq or any(b >= a for a, b in zip(seq, seq[1:])):
        raise ValueError(f"timesteps must be a non-empty descending list, got {seq!r}")
    out, h_prev = [], None
    for i, s in enumerate(seq):
        a_s = float(acp[s])
        alpha_s, sigma_s = math.sqrt(a_s), math.sqrt(1.0 - a_s)
        if i + 1 == len(seq):  # to t = -1: alpha_t = 1, sigma_t = 0 -> x_t = x0_i (step 2 with e^-h = 0)
            out.append((alpha_s, sigma_s, 0.0, 1.0, 0.0))
            break
        a_t = float(acp[seq[i + 1]])
        alpha_t, sigma_t = math.sqrt(a_t), math.sqrt(1.0 - a_t)
        h = math.log(alpha_t / sigma_t) - math.log(alpha_s / sigma_s)          # step 1
        c_d = alpha_t * -math.expm1(-h)                                        # alpha_t (1 - e^-h)
        if h_prev is None:                                                     # step 2
            out.append((alpha_s, sigma_s, sigma_t / sigma_s, c_d, 0.0))
        else:                                                                  # step 3
            half_inv_r = 0.5 * h / h_prev                                      # 1 / (2 r_i)
            out.append((alpha_s, sigma_s, sigma_t / sigma_s, c_d * (1.0 + half_inv_r), -c_d * half_inv_r))
        h_prev = h
    return out


def guided_at(t: int, min_t: int | None) -> bool:
    """Whether the step at timestep ``t`` (0..T-1) is guided: t >= ``min_t`` (None or 0: every step).

    The others take the plain conditional prediction eps_c (w = 1: one denoiser call of N, not 2N).
    Guidance only at the noisier steps is the "guidance interval" of Kynkaanniemi et al. 2024
    (arXiv:2404.07724): the class is decided at high noise; at low noise guidance only amplifies the
    difference eps_c - eps_u of the last details, which leaves speckled backgrounds.
    """
    return min_t is None or t >= min_t


def guided_eps(eps_cond, eps_uncond, scale: float):
    """Classifier-free guidance (Ho & Salimans 2022): eps_u + w (eps_c - eps_u), for numpy or torch arrays.

    ``scale`` w is the "guidance scale" of diffusers / Stable Diffusion: w = 0 is the unconditional
    model, w = 1 the plain conditional model, w > 1 guides past it. It is Ho & Salimans' w plus one:
    their eq. (6) eps~ = (1 + w') eps_c - w' eps_u is this with w = 1 + w'. Shapes: any, equal.
    """
    if scale == 1.0:
        return eps_cond
    return eps_uncond + (eps_cond - eps_uncond) * scale
