"""The token sampling rule, written once: the PyTorch ``sample`` of the text families and serving's NumPy loop
(``serving/sampler_tokens.py``) both call ``draw_tokens``, so the same logits and the same uniforms give the
same tokens.

numpy only (contracts never import torch).

One step for a batch: logits float N x V (the model's, pad and bos already impossible), one uniform per row
``u`` (float32 in [0, 1)), then in float64:

1. ``temperature`` t > 0: logits / t;
2. ``top_k`` k (None or >= 1): keep the tokens whose logit is >= the k-th largest (ties at the boundary kept);
3. ``top_p`` p in (0, 1] (None = 1): sort the kept tokens by probability, descending (ties by id), keep the
   smallest prefix whose probability sums to >= p (the nucleus of Holtzman et al. 2020; the top token always);
4. inverse CDF: with w = exp(logit - max) over the kept tokens (0 elsewhere) and cdf its cumulative sum in id
   order, the token is ``#{j < V-1 : cdf[j] <= u * cdf[V-1]}``: the first id whose cdf exceeds u * total
   (a token of weight 0 is never drawn).

Rows that are finished (``done``) get ``PAD``; rows whose sequence is full (``force_eos``) get ``EOS``.
"""
from __future__ import annotations

import numpy as np

PAD, BOS, EOS = 0, 1, 2


def check_options(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int | None = None) -> None:
    """ValueError naming the option for a value out of range."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or null, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] or null, got {top_p!r}")


def filtered_weights(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> np.ndarray:
    """Unnormalised float64 sampling weights N x V after temperature, top-k and top-p (steps 1-3 above)."""
    lg = np.array(logits, dtype=np.float64)                     # a fresh float64 copy, then in place
    if temperature != 1:
        lg /= float(temperature)
    n, v = lg.shape
    if top_k is not None and top_k < v:
        kth = np.partition(lg, v - top_k, axis=1)[:, v - top_k][:, None]
        lg[lg < kth] = -np.inf
    lg -= lg.max(axis=1, keepdims=True)
    w = np.exp(lg, out=lg)
    if top_p is not None and top_p < 1.0:
        order = np.lexsort((np.broadcast_to(np.arange(v), w.shape), -w), axis=1)   # by weight desc, then id
        sorted_w = np.take_along_axis(w, order, axis=1)
        before = np.cumsum(sorted_w, axis=1) - sorted_w                            # mass of the better tokens
        keep_sorted = before < top_p * sorted_w.sum(axis=1, keepdims=True)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        w = np.where(keep, w, 0.0)
    return w


def draw_tokens(logits: np.ndarray, u: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, done: np.ndarray | None = None,
                force_eos: np.ndarray | bool = False) -> np.ndarray:
    """int64 N tokens from logits N x V and uniforms N (see the module docstring)."""
    w = filtered_weights(logits, temperature, top_k, top_p)
    cdf = np.cumsum(w, axis=1, out=w)
    target = np.asarray(u, dtype=np.float64) * cdf[:, -1]
    tok = np.count_nonzero(cdf[:, :-1] <= target[:, None], axis=1).astype(np.int64)
    tok = np.where(force_eos, EOS, tok)
    if done is not None:
        tok = np.where(done, PAD, tok)
    return tok
