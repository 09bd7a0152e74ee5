"""Sampler kind "ddim": the DDIM loop in NumPy around the ONNX denoiser graph (never torch).

The same arithmetic as genmodels/ddim.py's ``ddim_sample``, step for step (see its docstring for
the equations and the "trailing" timestep spacing), so for the same x_T the two agree up to the
ORT-vs-PyTorch rounding of the denoiser (tests/test_ddpm.py checks it). Imported at the end of
serving/samplers.py, which registers it.

The spec (written by genmodels.ddpm.DDPM.sampler(), export adds "graphs", "image_shape", ...)::

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

x_T is ``rng.standard_normal((n, C, H, W), dtype=float32)``; with eta > 0 each step's z is the
next ``standard_normal`` draw of the same shape. The result (in [-1, 1]) is mapped to [0, 1].
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from serving.samplers import SamplerSpecError, _check_direct, _output_name, _to_unit_range, draw_noise, register


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """Descending timesteps, "trailing" spacing: the same list as genmodels.ddim.ddim_timesteps."""
    return [round((i + 1) * timesteps / steps) - 1 for i in range(steps - 1, -1, -1)]


def ddim_coefficients(acp, t: int, t_prev: int, eta: float) -> tuple[float, float, float, float, float]:
    """(sqrt(a), sqrt(1-a), sqrt(a'), sqrt(1-a'-sigma^2), sigma) in float64 for one step t -> t_prev."""
    a = float(acp[t])
    a_prev = float(acp[t_prev]) if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(max(1 - a / a_prev, 0.0)) if eta else 0.0
    return math.sqrt(a), math.sqrt(1 - a), math.sqrt(a_prev), math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)), sigma


def _check_ddim(spec: Mapping[str, Any], graph_names: set[str]) -> None:
    _check_direct(spec, graph_names)  # graph present, noise {name, shape, distribution}
    if spec["noise"].get("distribution", "normal") != "normal":
        raise SamplerSpecError("ddim sampler: x_T noise must be 'normal'")
    if len(spec["noise"].get("shape", [])) != 3:
        raise SamplerSpecError(f"ddim sampler: noise shape must be [C, H, W], got {spec['noise'].get('shape')!r}")
    if spec.get("prediction", "epsilon") != "epsilon":
        raise SamplerSpecError(f"ddim sampler: prediction {spec.get('prediction')!r} is not implemented (epsilon)")
    if spec.get("timestep_spacing", "trailing") != "trailing":
        raise SamplerSpecError(f"ddim sampler: timestep_spacing {spec.get('timestep_spacing')!r} is not "
                               "implemented (trailing)")
    if spec.get("conditional"):
        raise SamplerSpecError("ddim sampler: conditional denoisers are not implemented")
    acp = spec.get("alphas_cumprod")
    if not isinstance(acp, (list, tuple)) or not acp or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and 0.0 < a < 1.0 for a in acp):
        raise SamplerSpecError("ddim sampler needs alphas_cumprod: a non-empty list of floats in (0, 1)")
    if any(b > a for a, b in zip(acp, acp[1:])):
        raise SamplerSpecError("ddim sampler: alphas_cumprod must be non-increasing")
    T = spec.get("timesteps", len(acp))
    if T != len(acp):
        raise SamplerSpecError(f"ddim sampler: timesteps={T!r} but alphas_cumprod has {len(acp)} entries")
    S = spec.get("sample_steps")
    if not (isinstance(S, int) and not isinstance(S, bool) and 1 <= S <= len(acp)):
        raise SamplerSpecError(f"ddim sampler: sample_steps must be an int in [1, {len(acp)}], got {S!r}")
    eta = spec.get("eta", 0.0)
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta) and eta >= 0):
        raise SamplerSpecError(f"ddim sampler: eta must be a number >= 0, got {eta!r}")
    if not isinstance(spec.get("clip", True), bool):
        raise SamplerSpecError(f"ddim sampler: clip must be true or false, got {spec.get('clip')!r}")


def _check_ddim_sessions(spec: Mapping[str, Any], sessions: Mapping[str, Any]) -> None:
    sess = sessions[spec["graph"]]
    inputs = {i.name: i for i in sess.get_inputs()}
    x_name, t_name = spec["noise"]["name"], spec.get("timestep_input", "t")
    if set(inputs) != {x_name, t_name}:
        raise SamplerSpecError(f"graph {spec['graph']!r} takes inputs {sorted(inputs)}, the ddim sampler feeds "
                               f"{sorted({x_name, t_name})}")
    if inputs[x_name].type != "tensor(float)":
        raise SamplerSpecError(f"input {x_name!r} is {inputs[x_name].type}, expected tensor(float)")
    if inputs[t_name].type not in ("tensor(int64)", "tensor(float)"):
        raise SamplerSpecError(f"timestep input {t_name!r} is {inputs[t_name].type}, expected tensor(int64)")
    expected = list(spec["noise"]["shape"])
    declared = list(inputs[x_name].shape[1:])
    if len(declared) != len(expected) or any(isinstance(d, int) and d != e for d, e in zip(declared, expected)):
        raise SamplerSpecError(f"input {x_name!r} has shape {inputs[x_name].shape}, sampler.json says "
                               f"(batch, {', '.join(map(str, expected))})")


@register("ddim", check=_check_ddim, check_sessions=_check_ddim_sessions)
def ddim(spec, sessions, n, rng, labels):
    """x_T ~ N(0, I), then S DDIM steps over the denoiser; images in [0, 1]."""
    sess = sessions[spec["graph"]]
    out_name = _output_name(spec, sess)
    x_name, t_name = spec["noise"]["name"], spec.get("timestep_input", "t")
    t_dtype = np.float32 if next(i.type for i in sess.get_inputs() if i.name == t_name) == "tensor(float)" \
        else np.int64
    acp = spec["alphas_cumprod"]
    eta, clip = float(spec.get("eta", 0.0)), bool(spec.get("clip", True))
    seq = ddim_timesteps(len(acp), int(spec["sample_steps"]))
    x = draw_noise(spec["noise"], n, rng)                      # N x C x H x W float32
    for i, t in enumerate(seq):
        t_prev = seq[i + 1] if i + 1 < len(seq) else -1
        sa, s1a, sa_prev, dir_coef, sigma = (np.float32(c) for c in ddim_coefficients(acp, t, t_prev, eta))
        eps = np.asarray(sess.run([out_name], {x_name: x, t_name: np.full(n, t, dtype=t_dtype)})[0],
                         dtype=np.float32)
        x0 = (x - eps * s1a) / sa
        if clip:  # the direction term keeps the model's eps, as genmodels/ddim.py does
            np.clip(x0, -1.0, 1.0, out=x0)
        x = x0 * sa_prev + eps * dir_coef
        if sigma > 0:
            x += rng.standard_normal(x.shape, dtype=np.float32) * sigma
    x += np.float32(1.0)
    x *= np.float32(0.5)
    return _to_unit_range(x)
