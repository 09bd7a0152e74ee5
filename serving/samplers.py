"""Sampling loops over ONNX Runtime sessions, keyed by the sampler kind of ``sampler.json``.

numpy + onnxruntime sessions only (never torch): the batch generator imports this module.

A sampler is a function ``fn(spec, sessions, n, rng, labels) -> N x sample shape`` (images: float32 in [0, 1])
registered under its kind with ``@register("kind")``; it receives the typed spec
(``contracts.samplers``: ``DirectSpec``, ``DDIMSpec``, ``AutoregressiveSpec``, ``FlowSpec``), which
validated every key of sampler.json when it was read. ``run_sampler`` dispatches on ``spec.kind``;
``check_spec`` checks a spec against the graphs a model folder holds and ``check_sessions`` against
the loaded sessions' inputs, so a bad ``sampler.json`` fails before a single file is written. Every
function here takes a typed spec or a sampler.json dict (read with ``SamplerSpec.from_json``).

Kinds implemented: ``direct`` (noise -> image in one graph call: VAE decoder, GAN generator),
``ddim`` (serving/sampler_ddim.py), ``autoregressive`` (serving/sampler_autoregressive.py),
``flow`` (serving/sampler_flow.py), ``token_autoregressive`` (serving/sampler_tokens.py: int64 N x T ids). Noise is drawn as float32 straight from the given
``numpy.random.Generator`` (``Noise.draw``), so the same generator state gives the same noise on
every machine and thread count.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from contracts.samplers import SamplerSpec, SamplerSpecError, as_spec

SamplerFn = Callable[[Any, Mapping[str, Any], int, np.random.Generator, "np.ndarray | None"], np.ndarray]

SAMPLERS: dict[str, SamplerFn] = {}
# session checkers, per kind: fn(spec, sessions) -> None (inputs the loop feeds exist, shapes fit)
_SESSION_CHECKERS: dict[str, Callable[[Any, Mapping[str, Any]], None]] = {}

__all__ = ["SAMPLERS", "SamplerSpecError", "check_sessions", "check_spec", "register", "run_sampler"]


def register(kind: str, check_sessions: Callable[[Any, Mapping[str, Any]], None] | None = None):
    """Decorator: register ``fn`` as the sampler for ``kind``, with an optional session checker."""
    def deco(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[kind] = fn
        if check_sessions is not None:
            _SESSION_CHECKERS[kind] = check_sessions
        return fn
    return deco


def check_spec(spec: SamplerSpec | Mapping[str, Any], graph_names: Iterable[str]) -> SamplerSpec:
    """The typed spec, checked to run on a model holding ``graph_names``; raises SamplerSpecError."""
    spec = as_spec(spec)
    if spec.kind not in SAMPLERS:
        raise SamplerSpecError(f"sampler kind {spec.kind!r} is not implemented in serving; "
                               f"implemented: {', '.join(sorted(SAMPLERS))}")
    spec.check_graphs(graph_names)
    return spec


def check_sessions(spec: SamplerSpec | Mapping[str, Any], sessions: Mapping[str, Any]) -> SamplerSpec:
    """The typed spec, checked against the loaded sessions' inputs; raises SamplerSpecError."""
    spec = check_spec(spec, sessions)
    checker = _SESSION_CHECKERS.get(spec.kind)
    if checker is not None:
        checker(spec, sessions)
    return spec


def run_sampler(spec: SamplerSpec | Mapping[str, Any], sessions: Mapping[str, Any], n: int,
                rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
    """Run the sampler ``spec.kind`` for ``n`` samples: N x the sample shape, as the model produces them
    (images: float32 N x C x H x W in [0, 1]; tokens: int64 N x T ids).

    ``sessions`` maps graph name -> onnxruntime.InferenceSession; ``labels`` is int64 of shape
    N for conditional samplers, None otherwise. Raises SamplerSpecError for a bad spec, ValueError
    for bad n or labels.
    """
    spec = check_spec(spec, sessions)
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    out = SAMPLERS[spec.kind](spec, sessions, n, rng, labels)
    if out.ndim < 2 or out.shape[0] != n:
        raise ValueError(f"sampler {spec.kind!r} returned shape {out.shape}, expected ({n}, <sample shape>)")
    return out


# --- helpers ---------------------------------------------------------------------------------
def output_name(spec: SamplerSpec, session) -> str:
    """The output the loop reads: ``spec.output``, or the graph's first output when it names none."""
    return getattr(spec, "output", None) or session.get_outputs()[0].name


def to_unit_range(x: np.ndarray) -> np.ndarray:
    """float32 x clipped to [0, 1] (in place when writable)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(x, 0.0, 1.0, out=x if x.flags.writeable else None)


def check_noise_input(spec: SamplerSpec, sess, feeds: set[str]) -> dict[str, Any]:
    """The session's inputs, checked to be exactly ``feeds`` with a float noise input of the spec's shape."""
    inputs = {i.name: i for i in sess.get_inputs()}
    if set(inputs) != feeds:
        raise SamplerSpecError(f"graph {spec.graph!r} takes inputs {sorted(inputs)}, the {spec.kind} sampler "
                               f"feeds {sorted(feeds)}")
    noise_in = inputs[spec.noise.name]
    if noise_in.type != "tensor(float)":
        raise SamplerSpecError(f"noise input {noise_in.name!r} is {noise_in.type}, expected tensor(float)")
    expected = list(spec.noise.shape)
    declared = list(noise_in.shape[1:])
    if len(declared) != len(expected) or any(isinstance(d, int) and d != e for d, e in zip(declared, expected)):
        raise SamplerSpecError(f"noise input {noise_in.name!r} has shape {noise_in.shape}, sampler.json says "
                               f"(batch, {', '.join(map(str, expected))})")
    return inputs


# --- direct: noise -> image ------------------------------------------------------------------
def _check_direct_sessions(spec, sessions: Mapping[str, Any]) -> None:
    feeds = {spec.noise.name} | ({spec.labels_input} if spec.conditional else set())
    inputs = check_noise_input(spec, sessions[spec.graph], feeds)
    if spec.conditional:
        lab = inputs[spec.labels_input]
        if lab.type != "tensor(int64)":
            raise SamplerSpecError(f"labels input {lab.name!r} is {lab.type}, expected tensor(int64)")


@register("direct", check_sessions=_check_direct_sessions)
def direct(spec, sessions, n, rng, labels):
    """One graph call: images = graph(noise[, labels])."""
    sess = sessions[spec.graph]
    feed = {spec.noise.name: spec.noise.draw(n, rng)}
    if spec.conditional:
        if labels is None:
            raise ValueError("conditional sampler needs labels")
        feed[spec.labels_input] = labels
    return to_unit_range(sess.run([output_name(spec, sess)], feed)[0])


from serving import sampler_ddim  # noqa: E402,F401  registers "ddim"
from serving import sampler_autoregressive  # noqa: E402,F401
from serving import sampler_flow  # noqa: E402,F401
from serving import sampler_tokens  # noqa: E402,F401
