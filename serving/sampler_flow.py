"""The ``flow`` sampler: standard normal z -> the flow's inverse graph -> images in [0, 1].

numpy + onnxruntime sessions only (never torch). Registered in ``serving.samplers`` on import
(serving/samplers.py imports this module at its end).

The spec is ``contracts.samplers.FlowSpec`` (JSON written by genmodels/realnvp.py's ``sampler()``)::

    {"kind": "flow", "graph": "inverse", "output": "images",
     "noise": {"name": "z", "shape": [C, H, W], "distribution": "normal"},
     "temperature": 1.0,          # optional sampling default (omitted when 1): z is scaled by it
                                  # (1 = the model's own distribution); `genforge generate --temperature`
     "conditional": false}

z is ``rng.standard_normal((n, C, H, W), dtype=float32)`` (``Noise.draw``), the
same draw as the ``direct`` sampler; RealNVP.sample() draws it with torch.randn and runs the same
inverse, so the same z gives the same images (within the export's parity tolerance).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from contracts.samplers import FlowSpec, SamplerSpecError, as_spec
from serving.samplers import check_noise_input, output_name, register, to_unit_range


def images_from_noise(spec: FlowSpec | Mapping[str, Any], sessions: Mapping[str, Any], z: np.ndarray) -> np.ndarray:
    """Run the inverse graph on z (float32 N x C x H x W), scaled by the spec's temperature:
    images float32 N x C x H x W in [0, 1]."""
    spec = as_spec(spec)
    sess = sessions[spec.graph]
    z = np.ascontiguousarray(z, dtype=np.float32)
    if spec.temperature != 1.0:
        z = z * np.float32(spec.temperature)
    return to_unit_range(sess.run([output_name(spec, sess)], {spec.noise.name: z})[0])


def _check_sessions(spec: FlowSpec, sessions: Mapping[str, Any]) -> None:
    sess = sessions[spec.graph]
    check_noise_input(spec, sess, {spec.noise.name})
    if spec.output is not None and spec.output not in {o.name for o in sess.get_outputs()}:
        raise SamplerSpecError(f"graph {spec.graph!r} has no output {spec.output!r}")


@register("flow", check_sessions=_check_sessions)
def flow(spec: FlowSpec, sessions, n, rng, labels):
    """n images: z ~ N(0, I) from rng (float32), then one call of the inverse graph."""
    return images_from_noise(spec, sessions, spec.noise.draw(n, rng))
