"""Sampling loops over ONNX Runtime sessions, keyed by the sampler kind of ``sampler.json``.

numpy + onnxruntime sessions only (never torch): the batch generator imports this module.

A sampler is a function ``fn(spec, sessions, n, rng, labels) -> float32 N x C x H x W in [0, 1]``
registered under its kind with ``@register("kind")``. ``run_sampler`` dispatches on
``spec["kind"]``; ``check_spec`` validates a spec against the graphs a model folder holds before
anything runs, so a bad ``sampler.json`` fails before a single file is written.

Kinds implemented: ``direct`` (noise -> image in one graph call: VAE decoder, GAN generator).
Kinds reserved by the model contract, to be added as functions here: ``ddim`` (a loop over the
denoiser graph), ``autoregressive`` (a loop over the logits graph), ``flow`` (inverse transform).

The ``direct`` spec (written by the model's ``sampler()``)::

    {"kind": "direct", "graph": "decoder",
     "noise": {"name": "z", "shape": [16], "distribution": "normal"},   # or "uniform" (+ "low", "high")
     "conditional": false,                 # true: the graph also takes int64 labels, shape N
     "labels_input": "labels",             # optional, the name of that input (default "labels")
     "output": "images"}                   # optional, default: the graph's first output

Noise is drawn as float32 straight from the given ``numpy.random.Generator``
(``standard_normal(dtype=float32)``, or ``random(dtype=float32)`` scaled to [low, high)), so the
same generator state gives the same noise on every machine and thread count.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

SamplerFn = Callable[[Mapping[str, Any], Mapping[str, Any], int, np.random.Generator, "np.ndarray | None"], np.ndarray]

SAMPLERS: dict[str, SamplerFn] = {}
# spec checkers, per kind: fn(spec, graph_names) -> None, raising SamplerSpecError
_CHECKERS: dict[str, Callable[[Mapping[str, Any], set[str]], None]] = {}
# session checkers, per kind: fn(spec, sessions) -> None (inputs the loop feeds exist, shapes fit)
_SESSION_CHECKERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], None]] = {}

RESERVED_KINDS = ("ddim", "autoregressive", "flow")


class SamplerSpecError(ValueError):
    """sampler.json does not describe a runnable sampler (unknown kind, missing keys, bad noise)."""


def register(kind: str, check: Callable[[Mapping[str, Any], set[str]], None] | None = None,
             check_sessions: Callable[[Mapping[str, Any], Mapping[str, Any]], None] | None = None):
    """Decorator: register ``fn`` as the sampler for ``kind``, with optional spec/session checkers."""
    def deco(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[kind] = fn
        if check is not None:
            _CHECKERS[kind] = check
        if check_sessions is not None:
            _SESSION_CHECKERS[kind] = check_sessions
        return fn
    return deco


def check_spec(spec: Mapping[str, Any], graph_names: set[str]) -> None:
    """Raise SamplerSpecError unless ``spec`` can run on a model holding ``graph_names``."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
        raise SamplerSpecError("sampler spec has no 'kind'")
    kind = spec["kind"]
    if kind not in SAMPLERS:
        hint = " (reserved by the model contract, not implemented in serving yet)" if kind in RESERVED_KINDS else ""
        raise SamplerSpecError(f"unknown sampler kind {kind!r}{hint}; implemented: {', '.join(sorted(SAMPLERS))}")
    checker = _CHECKERS.get(kind)
    if checker is not None:
        checker(spec, graph_names)


def check_sessions(spec: Mapping[str, Any], sessions: Mapping[str, Any]) -> None:
    """Raise SamplerSpecError unless the loaded sessions take the inputs the sampler feeds."""
    check_spec(spec, set(sessions))
    checker = _SESSION_CHECKERS.get(spec["kind"])
    if checker is not None:
        checker(spec, sessions)


def run_sampler(spec: Mapping[str, Any], sessions: Mapping[str, Any], n: int,
                rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
    """Run the sampler ``spec["kind"]`` for ``n`` samples; float32 N x C x H x W in [0, 1].

    ``sessions`` maps graph name -> onnxruntime.InferenceSession; ``labels`` is int64 of shape
    N for conditional samplers, None otherwise.
    """
    check_spec(spec, set(sessions))
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    out = SAMPLERS[spec["kind"]](spec, sessions, n, rng, labels)
    if out.ndim != 4 or out.shape[0] != n:
        raise ValueError(f"sampler {spec['kind']!r} returned shape {out.shape}, expected ({n}, C, H, W)")
    return out


# --- helpers ---------------------------------------------------------------------------------
def draw_noise(noise: Mapping[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """float32 noise of shape (n, *noise["shape"]) from ``rng``."""
    shape = (n, *(int(s) for s in noise.get("shape", [])))
    dist = noise.get("distribution", "normal")
    if dist == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    if dist == "uniform":
        low, high = float(noise.get("low", 0.0)), float(noise.get("high", 1.0))
        x = rng.random(shape, dtype=np.float32)
        if (low, high) != (0.0, 1.0):
            x *= np.float32(high - low)
            x += np.float32(low)
        return x
    raise SamplerSpecError(f"unknown noise distribution {dist!r} (known: normal, uniform)")


def _output_name(spec: Mapping[str, Any], session) -> str:
    return spec.get("output") or session.get_outputs()[0].name


def _to_unit_range(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.clip(x, 0.0, 1.0, out=x if x.flags.writeable else None)


# --- direct: noise -> image ------------------------------------------------------------------
def _check_direct(spec: Mapping[str, Any], graph_names: set[str]) -> None:
    graph = spec.get("graph")
    if graph not in graph_names:
        raise SamplerSpecError(f"direct sampler names graph {graph!r}, the model has {sorted(graph_names)}")
    noise = spec.get("noise")
    if not isinstance(noise, Mapping) or not isinstance(noise.get("name"), str):
        raise SamplerSpecError("direct sampler needs noise: {name, shape, distribution}")
    shape = noise.get("shape", [])
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise SamplerSpecError(f"noise shape must be a list of positive ints, got {shape!r}")
    if noise.get("distribution", "normal") not in ("normal", "uniform"):
        raise SamplerSpecError(f"unknown noise distribution {noise.get('distribution')!r} (known: normal, uniform)")


def _check_direct_sessions(spec: Mapping[str, Any], sessions: Mapping[str, Any]) -> None:
    sess = sessions[spec["graph"]]
    inputs = {i.name: i for i in sess.get_inputs()}
    want = {spec["noise"]["name"]}
    if spec.get("conditional"):
        want.add(spec.get("labels_input", "labels"))
    if set(inputs) != want:
        raise SamplerSpecError(f"graph {spec['graph']!r} takes inputs {sorted(inputs)}, the direct sampler "
                               f"feeds {sorted(want)}")
    noise_in = inputs[spec["noise"]["name"]]
    if noise_in.type != "tensor(float)":
        raise SamplerSpecError(f"noise input {noise_in.name!r} is {noise_in.type}, expected tensor(float)")
    expected = list(spec["noise"].get("shape", []))
    declared = list(noise_in.shape[1:])
    if len(declared) != len(expected) or any(isinstance(d, int) and d != e for d, e in zip(declared, expected)):
        raise SamplerSpecError(f"noise input {noise_in.name!r} has shape {noise_in.shape}, sampler.json says "
                               f"(batch, {', '.join(map(str, expected))})")
    if spec.get("conditional"):
        lab = inputs[spec.get("labels_input", "labels")]
        if lab.type != "tensor(int64)":
            raise SamplerSpecError(f"labels input {lab.name!r} is {lab.type}, expected tensor(int64)")


@register("direct", check=_check_direct, check_sessions=_check_direct_sessions)
def direct(spec, sessions, n, rng, labels):
    """One graph call: images = graph(noise[, labels])."""
    sess = sessions[spec["graph"]]
    feed = {spec["noise"]["name"]: draw_noise(spec["noise"], n, rng)}
    if spec.get("conditional"):
        if labels is None:
            raise ValueError("conditional sampler needs labels")
        feed[spec.get("labels_input", "labels")] = labels
    return _to_unit_range(sess.run([_output_name(spec, sess)], feed)[0])
from serving import sampler_ddim  # noqa: E402,F401  registers "ddim"
from serving import sampler_autoregressive  # noqa: E402,F401
from serving import sampler_flow  # noqa: E402,F401
