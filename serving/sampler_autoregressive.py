"""The ``autoregressive`` sampler: fill pixels one at a time in raster order over ONNX Runtime.

numpy + onnxruntime sessions only (never torch). Registered in ``serving.samplers`` on import
(serving/samplers.py imports this module at its end).

The spec is ``contracts.samplers.AutoregressiveSpec`` (JSON written by genmodels/pixelcnn.py's ``sampler()``)::

    {"kind": "autoregressive", "graph": "logits", "input": "x", "output": "logits",
     "pixels": "binary" | "256", "categories": 2 | 256,
     "uniforms": {"shape": [C, H, W], "dtype": "float32", "order": "raster"},
     "cache": {"row_graph": "row", "pixel_graph": "pixel", "row_window": R0 + 1, "left_window": R0,
               "layers": L, "channels": P, "history": R} | null,
     "conditional": false}

Randomness: one uniform per pixel and channel, ``rng.random((n, C, H, W), dtype=float32)``, drawn
up front; pixel (i, j), channel c uses ``u[:, c, i, j]``. The rule (``draw_pixels``, in float64):
binary, x = 1 if u < sigmoid(logit) else 0; "256", the inverse CDF of softmax(logits),
k = #{k' < 255 : cdf(k') <= u * cdf(255)}, x = k / 255. PixelCNN.sample() draws the same
uniforms with torch.rand and applies the same rule, so the same uniforms give the same images.

Two loops, the same images:
- cached (``cache`` set; the default export): per image row one call of the ``row`` graph (the
  vertical stack for the row just completed, with its cache of earlier rows), then per pixel one
  call of the ``pixel`` graph (the horizontal stack for one column, with its cache of earlier
  columns). About one network evaluation per sample; every call takes the whole batch.
- plain (``cache`` null, or ``cached=False``): per pixel one call of the full ``logits`` graph on the
  rows filled so far, ``x[:, :, :i+1]`` (the graph's height axis is dynamic, and the network is
  causal, so those rows give the same logits as the whole image). H*W network evaluations per
  sample: for checks and for models exported without the step graphs.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from contracts.samplers import AutoregressiveSpec, SamplerSpecError, as_spec
from serving.samplers import register


def draw_pixels(logits: np.ndarray, u: np.ndarray, binary: bool) -> np.ndarray:
    """Pixel values: logits N x C (binary) or N x C x K, u N x C in [0, 1) -> float32 N x C."""
    u = u.astype(np.float64)
    lg = np.asarray(logits, dtype=np.float64)
    if binary:
        return (u < 1.0 / (1.0 + np.exp(-lg))).astype(np.float32)
    cdf = np.cumsum(np.exp(lg - lg.max(axis=-1, keepdims=True)), axis=-1)
    k = (cdf[..., :-1] <= (u * cdf[..., -1])[..., None]).sum(axis=-1)
    return (k / 255.0).astype(np.float32)


def sample_from_uniforms(spec: AutoregressiveSpec | Mapping[str, Any], sessions: Mapping[str, Any], u: np.ndarray,
                         cached: bool | None = None) -> np.ndarray:
    """Images (float32 N x C x H x W) from given uniforms u (N x C x H x W), pixel by pixel.

    ``cached`` None: the cached loop when the spec has a cache. Raises ValueError for u of another shape.
    """
    spec = as_spec(spec)
    u = np.ascontiguousarray(u, dtype=np.float32)
    if u.ndim != 4 or tuple(u.shape[1:]) != spec.uniforms.shape:
        raise ValueError(f"uniforms of shape {u.shape}, sampler.json says (N, {list(spec.uniforms.shape)})")
    binary = spec.pixels == "binary"
    if cached is None:
        cached = spec.cache is not None
    if cached:
        return _cached_loop(spec, sessions, u, binary)
    return _plain_loop(spec, sessions, u, binary)


def _plain_loop(spec, sessions, u, binary) -> np.ndarray:
    sess = sessions[spec.graph]
    name, out = spec.input, spec.output
    n, c, h, w = u.shape
    img = np.zeros((n, c, h, w), dtype=np.float32)
    for i in range(h):
        for j in range(w):
            logits = sess.run([out], {name: img[:, :, :i + 1]})[0]          # N x C x (i+1) x W [x K]
            img[:, :, i, j] = draw_pixels(logits[:, :, i, j], u[:, :, i, j], binary)
    return img


def _cached_loop(spec, sessions, u, binary) -> np.ndarray:
    cache = spec.cache
    row, pixel = sessions[cache.row_graph], sessions[cache.pixel_graph]
    n, c, h, w = u.shape
    r0 = cache.left_window                           # k0 // 2: rows above / pixels left the first layer sees
    layers, p, r = cache.layers, cache.channels, cache.history
    img = np.zeros((n, c, h + r0, w + r0), dtype=np.float32)   # zero padding above and left
    v_hist = np.zeros((n, layers - 1, p, r, w), dtype=np.float32)
    cond = np.zeros((n, layers, 2 * p, w), dtype=np.float32)  # row 0: the link sees only padding (no bias)
    h_zero = np.zeros((n, layers - 1, p, r), dtype=np.float32)
    for i in range(h):
        if i > 0:
            x_rows = np.ascontiguousarray(img[:, :, i - 1:i + r0, r0:])   # image rows i-1-r0..i-1
            cond, v_hist = row.run(None, {"x_rows": x_rows, "v_hist": v_hist})
        cond_cols = np.ascontiguousarray(np.moveaxis(cond, -1, 0))      # W x N x L x 2p
        h_hist = h_zero
        for j in range(w):
            x_left = np.ascontiguousarray(img[:, :, i + r0, j:j + r0])  # pixels (i, j-r0..j-1)
            logits, h_hist = pixel.run(None, {"cond": cond_cols[j], "x_left": x_left, "h_hist": h_hist})
            img[:, :, i + r0, j + r0] = draw_pixels(logits, u[:, :, i, j], binary)
    return np.ascontiguousarray(img[:, :, r0:, r0:])


# --- checks ---------------------------------------------------------------------------------
def _check_sessions(spec: AutoregressiveSpec, sessions: Mapping[str, Any]) -> None:
    c, h, w = spec.uniforms.shape
    k = 256 if spec.pixels == "256" else None
    _expect(sessions[spec.graph], {spec.input: [c, None, w]},
            {spec.output: [c, None, w] + ([k] if k else [])}, spec.graph)
    cache = spec.cache
    if cache:
        L, p, r, r0 = cache.layers, cache.channels, cache.history, cache.left_window
        _expect(sessions[cache.row_graph], {"x_rows": [c, r0 + 1, w], "v_hist": [L - 1, p, r, w]},
                {"cond": [L, 2 * p, w], "v_hist_next": [L - 1, p, r, w]}, cache.row_graph)
        _expect(sessions[cache.pixel_graph], {"cond": [L, 2 * p], "x_left": [c, r0], "h_hist": [L - 1, p, r]},
                {"logits": [c] + ([k] if k else []), "h_hist_next": [L - 1, p, r]}, cache.pixel_graph)


def _expect(sess, inputs: dict[str, list], outputs: dict[str, list], graph: str) -> None:
    """Names, float type and the non-batch dims (None = any) of a session's inputs and outputs."""
    for kind, got, want in (("inputs", sess.get_inputs(), inputs), ("outputs", sess.get_outputs(), outputs)):
        have = {a.name: a for a in got}
        if set(have) != set(want):
            raise SamplerSpecError(f"graph {graph!r} has {kind} {sorted(have)}, the autoregressive sampler "
                                   f"expects {sorted(want)}")
        for name, dims in want.items():
            a = have[name]
            if a.type != "tensor(float)":
                raise SamplerSpecError(f"graph {graph!r}: {name} is {a.type}, expected tensor(float)")
            declared = list(a.shape[1:])
            if len(declared) != len(dims) or any(isinstance(d, int) and e is not None and d != e
                                                 for d, e in zip(declared, dims)):
                raise SamplerSpecError(f"graph {graph!r}: {name} has shape {a.shape}, expected (batch, "
                                       f"{', '.join('*' if e is None else str(e) for e in dims)})")


@register("autoregressive", check_sessions=_check_sessions)
def autoregressive(spec: AutoregressiveSpec, sessions, n, rng, labels):
    """n images: uniforms from rng (float32, N x C x H x W, drawn first), then the pixel loop."""
    u = rng.random((n, *spec.uniforms.shape), dtype=np.float32)
    return sample_from_uniforms(spec, sessions, u)
