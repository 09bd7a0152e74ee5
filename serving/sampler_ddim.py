"""Sampler kind "ddim": the DDIM loop in NumPy around the ONNX denoiser graph (never torch).

The timesteps and per-step coefficients come from ``contracts.diffusion`` (shared with
genmodels/ddim.py's PyTorch loop); the update below is the same arithmetic as ``ddim_sample``
there, step for step, and tests/test_sampler_specs.py feeds the same eps and noise through both
loops and compares the trajectories (1e-5), so the twins cannot drift. Imported at the end of
serving/samplers.py, which registers it.

The spec is ``contracts.samplers.DDIMSpec`` (JSON written by genmodels.ddpm.DDPM.sampler())::

    {"kind": "ddim", "graph": "denoiser",
     "noise": {"name": "x", "shape": [C, H, W], "distribution": "normal"},   # x_T, and the graph's x input
     "timestep_input": "t",                 # int64 N (float32 graphs are accepted too)
     "output": "eps",                       # optional, default: the graph's first output
     "prediction": "epsilon",               # the only one implemented
     "alphas_cumprod": [a_0, ..., a_{T-1}], # float64 list, the training schedule
     "timesteps": T, "sample_steps": S, "timestep_spacing": "trailing",
     "eta": 0.0,                            # > 0 adds fresh noise per step, drawn from the same rng
     "clip": true,                          # clip predicted x0 to [-1, 1] every step
     "conditional": false}

``sample_steps`` (option ``steps``), ``eta`` and ``clip`` are the model's sampling defaults;
``genforge generate --steps/--eta`` overrides them (``DDIMSpec.with_sampling``).
x_T is ``rng.standard_normal((n, C, H, W), dtype=float32)``; with eta > 0 each step's z is the
next ``standard_normal`` draw of the same shape. The result (in [-1, 1]) is mapped to [0, 1].
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from contracts.diffusion import ddim_coefficients, ddim_timesteps
from contracts.samplers import DDIMSpec, SamplerSpecError
from serving.samplers import check_noise_input, output_name, register, to_unit_range

__all__ = ["ddim_coefficients", "ddim_loop", "ddim_timesteps"]


def ddim_loop(eps_fn: Callable[[np.ndarray, int], np.ndarray], x_t: np.ndarray, acp: Sequence[float], steps: int,
              *, eta: float, clip: bool, rng) -> np.ndarray:
    """DDIM from x_T (float32 N x C x H x W) to x_0 in the [-1, 1] scale (float32, not clipped to it).

    ``eps_fn(x, t)`` gives the predicted eps for the current x at timestep t; ``rng`` supplies z as
    ``rng.standard_normal(shape, dtype=float32)`` when eta > 0. Twin of genmodels.ddim.ddim_sample.
    """
    seq = ddim_timesteps(len(acp), int(steps))
    x = np.array(x_t, dtype=np.float32)
    for i, t in enumerate(seq):
        t_prev = seq[i + 1] if i + 1 < len(seq) else -1
        sa, s1a, sa_prev, dir_coef, sigma = (np.float32(c) for c in ddim_coefficients(acp, t, t_prev, eta))
        eps = np.asarray(eps_fn(x, t), dtype=np.float32)
        x0 = (x - eps * s1a) / sa
        if clip:  # the direction term keeps the model's eps, as genmodels/ddim.py does
            np.clip(x0, -1.0, 1.0, out=x0)
        x = x0 * sa_prev + eps * dir_coef
        if sigma > 0:
            x += rng.standard_normal(x.shape, dtype=np.float32) * sigma
    return x


def _check_ddim_sessions(spec: DDIMSpec, sessions: Mapping[str, Any]) -> None:
    inputs = check_noise_input(spec, sessions[spec.graph], {spec.noise.name, spec.timestep_input})
    t_in = inputs[spec.timestep_input]
    if t_in.type not in ("tensor(int64)", "tensor(float)"):
        raise SamplerSpecError(f"timestep input {t_in.name!r} is {t_in.type}, expected tensor(int64)")


@register("ddim", check_sessions=_check_ddim_sessions)
def ddim(spec: DDIMSpec, sessions, n, rng, labels):
    """x_T ~ N(0, I), then S DDIM steps over the denoiser; images in [0, 1]."""
    sess = sessions[spec.graph]
    out_name = output_name(spec, sess)
    x_name, t_name = spec.noise.name, spec.timestep_input
    t_dtype = np.float32 if next(i.type for i in sess.get_inputs() if i.name == t_name) == "tensor(float)" \
        else np.int64

    def eps_fn(x, t):
        return sess.run([out_name], {x_name: x, t_name: np.full(n, t, dtype=t_dtype)})[0]

    x = ddim_loop(eps_fn, spec.noise.draw(n, rng), spec.alphas_cumprod, spec.sample_steps,
                  eta=spec.eta, clip=spec.clip, rng=rng)
    x += np.float32(1.0)
    x *= np.float32(0.5)
    return to_unit_range(x)
