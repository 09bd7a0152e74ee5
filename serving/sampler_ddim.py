"""Sampler kind "ddim": the DDIM and DPM-Solver++(2M) loops in NumPy around the ONNX denoiser graph (never torch).

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
     "eta": 0.0,                            # > 0 adds fresh noise per step, drawn from the same rng (ddim)
     "clip": true,                          # clip predicted x0 to [-1, 1] every step
     "conditional": false,
     "sampler": "ddim",                     # or "dpmpp_2m"; absent (files before it) = "ddim"
     # conditional denoisers only (graph inputs x, t, labels):
     "labels_input": "labels", "null_label": K, "guidance_scale": w,
     "guidance_min_t": 200}                 # optional: guided only at steps with t >= 200 (absent: every step)

``sample_steps`` (option ``steps``), ``eta``, ``clip``, ``sampler``, ``guidance_scale`` and ``guidance_min_t`` are the
model's sampling defaults; ``genforge generate --sampler/--steps/--eta/--guidance-scale`` overrides them
(``DDIMSpec.with_sampling``). Guidance: one ORT call of 2N per step (``guided_eps_fn``).
x_T is ``rng.standard_normal((n, C, H, W), dtype=float32)``; with eta > 0 each step's z is the
next ``standard_normal`` draw of the same shape. The result (in [-1, 1]) is mapped to [0, 1].
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from contracts.diffusion import SAMPLERS, ddim_coefficients, ddim_timesteps, dpmpp_2m_coefficients, guided_at, guided_eps
from contracts.samplers import DDIMSpec, SamplerSpecError
from serving.samplers import check_noise_input, output_name, register, to_unit_range

__all__ = ["ddim_coefficients", "ddim_loop", "ddim_timesteps", "guided_eps_fn"]


def ddim_loop(eps_fn: Callable[[np.ndarray, int], np.ndarray], x_t: np.ndarray, acp: Sequence[float], steps: int,
              *, eta: float, clip: bool, rng, sampler: str = "ddim") -> np.ndarray:
    """DDIM or DPM-Solver++(2M) from x_T (float32 N x C x H x W) to x_0 in the [-1, 1] scale (float32).

    ``eps_fn(x, t)`` gives the predicted eps for the current x at timestep t; ``rng`` supplies z as
    ``rng.standard_normal(shape, dtype=float32)`` when eta > 0 (ddim only). ``sampler``: one of
    ``contracts.diffusion.SAMPLERS``. Twin of genmodels.ddim.ddim_sample. Raises ValueError for an
    unknown sampler or steps outside [1, T].
    """
    seq = ddim_timesteps(len(acp), int(steps))
    if sampler == "dpmpp_2m":
        return _dpmpp_2m_loop(eps_fn, x_t, acp, seq, clip)
    if sampler != "ddim":
        raise ValueError(f"sampler {sampler!r} is not implemented (known: {', '.join(SAMPLERS)})")
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


def _dpmpp_2m_loop(eps_fn, x_t: np.ndarray, acp: Sequence[float], seq: list[int], clip: bool) -> np.ndarray:
    """DPM-Solver++(2M) with the coefficients of ``contracts.diffusion.dpmpp_2m_coefficients``."""
    x = np.array(x_t, dtype=np.float32)
    x0_prev = None
    for t, coefs in zip(seq, dpmpp_2m_coefficients(acp, seq)):
        sa, s1a, c_x, c_cur, c_prev = (np.float32(c) for c in coefs)
        eps = np.asarray(eps_fn(x, t), dtype=np.float32)
        x0 = (x - eps * s1a) / sa                  # the data prediction x0_i
        if clip:
            np.clip(x0, -1.0, 1.0, out=x0)
        x = x * c_x + x0 * c_cur
        if c_prev != 0:
            x += x0_prev * c_prev
        x0_prev = x0
    return x


def _check_ddim_sessions(spec: DDIMSpec, sessions: Mapping[str, Any]) -> None:
    feeds = {spec.noise.name, spec.timestep_input} | ({spec.labels_input} if spec.conditional else set())
    inputs = check_noise_input(spec, sessions[spec.graph], feeds)
    t_in = inputs[spec.timestep_input]
    if t_in.type not in ("tensor(int64)", "tensor(float)"):
        raise SamplerSpecError(f"timestep input {t_in.name!r} is {t_in.type}, expected tensor(int64)")
    if spec.conditional and inputs[spec.labels_input].type != "tensor(int64)":
        raise SamplerSpecError(f"labels input {spec.labels_input!r} is {inputs[spec.labels_input].type}, "
                               f"expected tensor(int64)")


def guided_eps_fn(run: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray], n: int,
                  labels: np.ndarray | None, scale: float | None, null_label: int | None,
                  min_t: int | None = None) -> Callable[[np.ndarray, int], np.ndarray]:
    """eps_fn(x, t) for the loop over ``run(x, t_vector, labels_or_None) -> eps``.

    Unconditional (labels None): one call of N. Conditional: classifier-free guidance with scale w
    (``contracts.diffusion.guided_eps``): ONE call of 2N, x twice, labels then the null class, split into
    eps_c and eps_u; w = 1 (only eps_c) and w = 0 (only eps_u) need one call of N. ``min_t``: guided only
    at steps with t >= min_t, eps_c alone below (``contracts.diffusion.guided_at``; None or 0: every step;
    w = 0 and 1 do not guide, so min_t leaves them unchanged).
    """
    if labels is None:
        return lambda x, t: run(x, np.full(n, t, dtype=np.int64), None)
    if min_t and scale not in (0.0, 1.0):  # w = 0 stays the unconditional model at every step
        guided, plain = guided_eps_fn(run, n, labels, scale, null_label), guided_eps_fn(run, n, labels, 1.0, null_label)
        return lambda x, t: guided(x, t) if guided_at(t, min_t) else plain(x, t)
    null = np.full(n, null_label, dtype=np.int64)
    if scale in (0.0, 1.0):
        fixed = labels if scale == 1.0 else null
        return lambda x, t: run(x, np.full(n, t, dtype=np.int64), fixed)
    both = np.concatenate([labels, null])

    def eps_fn(x, t):
        eps = run(np.concatenate([x, x]), np.full(2 * n, t, dtype=np.int64), both)
        return guided_eps(eps[:n], eps[n:], np.float32(scale))
    return eps_fn


@register("ddim", check_sessions=_check_ddim_sessions)
def ddim(spec: DDIMSpec, sessions, n, rng, labels):
    """x_T ~ N(0, I), then S DDIM / DPM-Solver++ steps over the denoiser (guided when conditional);
    images in [0, 1]. ``labels``: int64 N in [0, num_classes) for conditional specs, else None."""
    sess = sessions[spec.graph]
    out_name = output_name(spec, sess)
    x_name, t_name = spec.noise.name, spec.timestep_input
    t_dtype = np.float32 if next(i.type for i in sess.get_inputs() if i.name == t_name) == "tensor(float)" \
        else np.int64
    if spec.conditional and labels is None:
        raise ValueError("conditional sampler needs labels")
    if not spec.conditional:
        labels = None

    def run(x, t, y):
        feed = {x_name: x, t_name: t.astype(t_dtype, copy=False)}
        if y is not None:
            feed[spec.labels_input] = y
        return sess.run([out_name], feed)[0]

    eps_fn = guided_eps_fn(run, n, labels, spec.guidance_scale, spec.null_label, spec.guidance_min_t)
    x = ddim_loop(eps_fn, spec.noise.draw(n, rng), spec.alphas_cumprod, spec.sample_steps,
                  eta=spec.eta, clip=spec.clip, rng=rng, sampler=spec.sampler)
    x += np.float32(1.0)
    x *= np.float32(0.5)
    return to_unit_range(x)
