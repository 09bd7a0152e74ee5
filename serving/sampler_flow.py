"""The ``flow`` sampler: standard normal z -> the flow's inverse graph -> images in [0, 1].

numpy + onnxruntime sessions only (never torch). Registered in ``serving.samplers`` on import
(serving/samplers.py imports this module at its end).

The spec (written by genmodels/realnvp.py's ``sampler()``)::

    {"kind": "flow", "graph": "inverse", "output": "images",
     "noise": {"name": "z", "shape": [C, H, W], "distribution": "normal"},
     "temperature": 1.0,          # optional: z is scaled by it (1 = the model's own distribution)
     "conditional": false}

z is ``rng.standard_normal((n, C, H, W), dtype=float32)`` (``serving.samplers.draw_noise``), the
same draw as the ``direct`` sampler; RealNVP.sample() draws it with torch.randn and runs the same
inverse, so the same z gives the same images (within the export's parity tolerance).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from serving.samplers import SamplerSpecError, draw_noise, register


def images_from_noise(spec: Mapping[str, Any], sessions: Mapping[str, Any], z: np.ndarray) -> np.ndarray:
    """Run the inverse graph on z (float32 N x C x H x W): images float32 N x C x H x W in [0, 1]."""
    sess = sessions[spec["graph"]]
    z = np.ascontiguousarray(z, dtype=np.float32)
    temperature = float(spec.get("temperature", 1.0))
    if temperature != 1.0:
        z = z * np.float32(temperature)
    out = spec.get("output") or sess.get_outputs()[0].name
    x = np.asarray(sess.run([out], {spec["noise"]["name"]: z})[0], dtype=np.float32)
    return np.clip(x, 0.0, 1.0, out=x)


def _check(spec: Mapping[str, Any], graph_names: set[str]) -> None:
    if spec.get("graph") not in graph_names:
        raise SamplerSpecError(f"flow sampler names graph {spec.get('graph')!r}, the model has {sorted(graph_names)}")
    noise = spec.get("noise")
    if not isinstance(noise, Mapping) or not isinstance(noise.get("name"), str):
        raise SamplerSpecError("flow sampler needs noise: {name, shape, distribution}")
    shape = noise.get("shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise SamplerSpecError(f"flow sampler: noise shape must be [C, H, W] positive ints, got {shape!r}")
    if noise.get("distribution", "normal") != "normal":
        raise SamplerSpecError(f"flow sampler: noise must be 'normal', got {noise.get('distribution')!r}")
    t = spec.get("temperature", 1.0)
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0):
        raise SamplerSpecError(f"flow sampler: temperature must be a number > 0, got {t!r}")
    if spec.get("conditional"):
        raise SamplerSpecError("flow sampler: conditional models are not supported")


def _check_sessions(spec: Mapping[str, Any], sessions: Mapping[str, Any]) -> None:
    sess = sessions[spec["graph"]]
    inputs = {i.name: i for i in sess.get_inputs()}
    name = spec["noise"]["name"]
    if set(inputs) != {name}:
        raise SamplerSpecError(f"graph {spec['graph']!r} takes inputs {sorted(inputs)}, the flow sampler feeds [{name!r}]")
    z = inputs[name]
    if z.type != "tensor(float)":
        raise SamplerSpecError(f"noise input {name!r} is {z.type}, expected tensor(float)")
    want = list(spec["noise"]["shape"])
    declared = list(z.shape[1:])
    if len(declared) != 3 or any(isinstance(d, int) and d != e for d, e in zip(declared, want)):
        raise SamplerSpecError(f"noise input {name!r} has shape {z.shape}, sampler.json says (batch, {want})")
    out = spec.get("output")
    if out is not None and out not in {o.name for o in sess.get_outputs()}:
        raise SamplerSpecError(f"graph {spec['graph']!r} has no output {out!r}")


@register("flow", check=_check, check_sessions=_check_sessions)
def flow(spec, sessions, n, rng, labels):
    """n images: z ~ N(0, I) from rng (float32), then one call of the inverse graph."""
    return images_from_noise(spec, sessions, draw_noise(spec["noise"], n, rng))
