"""The ``token_autoregressive`` sampler: token ids one at a time over ONNX Runtime, with the model's cache.

numpy + onnxruntime sessions only (never torch). Registered in ``serving.samplers`` on import.

The spec is ``contracts.samplers.TokenAutoregressiveSpec`` (written by the text families' ``sampler()``,
genmodels/textbase.py). The loop, for N sequences of T stored positions:

1. uniforms ``u = rng.random((N, T-1), dtype=float32)``, drawn up front (position t uses ``u[:, t-1]``);
2. ``prefill`` on the first token ``<bos>`` (N x 1, + labels when the graph takes them) -> logits, state;
3. for t = 1 .. T-1: token t = ``contracts.token_sampling.draw_tokens`` (temperature, top-k, top-p; ``<eos>``
   forced once ``max_len`` characters are out; ``<pad>`` after ``<eos>``); stop when every row has ended;
   otherwise one ``decode`` step on token t with the state (+ labels) -> logits, the next state.

So a sequence costs one decode call per token, whatever its length (the KV cache of the transformer, the (h, c)
of the LSTM). With cache "kv_static" the decode step also takes the token's position t, and runs over an
``io_binding``: each state output bound to its input's ``OrtValue`` (ONNX Runtime's GroupQueryAttention then
writes the new key/value into that buffer: nothing is copied per token), the token, position and logits bound
once to numpy buffers that the loop refills. With ``cached=False`` the loop reruns ``prefill`` on the whole prefix at every step instead (the
no-cache baseline; same tokens). The family's PyTorch ``sample`` runs the same loop on the same modules with
the same rule, so the same uniforms give the same tokens (tests/test_text_models.py).

Returns int64 N x T: ``<bos>``, the tokens, ``<eos>``, ``<pad>``... (the stored layout of the tokens modality).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from contracts.samplers import SamplerSpecError, TokenAutoregressiveSpec, as_spec
from contracts.token_sampling import draw_tokens
from serving.samplers import register


def ort_value(a: np.ndarray):
    """An onnxruntime OrtValue over a numpy array (CPU)."""
    import onnxruntime

    return onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a))


def _inputs(sess) -> set[str]:
    return {i.name for i in sess.get_inputs()}


def sample_from_uniforms(spec: TokenAutoregressiveSpec | Mapping[str, Any], sessions: Mapping[str, Any],
                         u: np.ndarray, labels: np.ndarray | None = None, cached: bool = True) -> np.ndarray:
    """int64 N x T token ids from uniforms u (float32 N x (T-1)); ValueError for u of another shape or missing
    labels of a conditional model."""
    spec = as_spec(spec)
    u = np.ascontiguousarray(u, dtype=np.float32)
    n, length = len(u), spec.length
    if u.shape != (n, length - 1):
        raise ValueError(f"uniforms of shape {u.shape}, the sampler needs (N, {length - 1})")
    if spec.conditional and labels is None:
        raise ValueError("a conditional sampler needs labels")
    prefill, decode = sessions[spec.prefill], sessions[spec.graph]
    lab = {spec.labels_input: np.ascontiguousarray(labels, dtype=np.int64)} if spec.conditional else {}
    pre_lab = lab if spec.labels_input in _inputs(prefill) else {}
    dec_lab = lab if spec.labels_input in _inputs(decode) else {}
    ins = [i for i, _ in spec.state]
    outs = [spec.output, *(o for _, o in spec.state)]
    seq = np.full((n, length), spec.pad, dtype=np.int64)
    seq[:, 0] = spec.bos
    # the state stays in ONNX Runtime's own tensors between steps (run_with_ort_values): no copy of the cache
    # into numpy and back per token; only the logits come out
    ov = ort_value
    res = prefill.run_with_ort_values(outs, {spec.tokens_input: ov(seq[:, :1]), **{k: ov(v) for k, v in pre_lab.items()}})
    logits, state = res[0].numpy()[:, -1], res[1:]
    dec_lab = {k: ov(v) for k, v in dec_lab.items()}
    step = _InPlaceStep(spec, decode, state, dec_lab, n) if cached and spec.cache == "kv_static" else None
    done = np.zeros(n, dtype=bool)
    for t in range(1, length):
        tok = draw_tokens(logits, u[:, t - 1], spec.temperature, spec.top_k, spec.top_p, done=done,
                          force_eos=(t - 1) >= spec.max_len)
        seq[:, t] = tok
        done |= tok == spec.eos
        if done.all() or t == length - 1:
            break
        if step is not None:
            logits = step(tok, t)
        elif cached:
            res = decode.run_with_ort_values(outs, {spec.token_input: ov(np.ascontiguousarray(seq[:, t:t + 1])),
                                                    **dict(zip(ins, state)), **dec_lab})
            logits, state = res[0].numpy(), res[1:]
        else:
            logits = prefill.run([spec.output], {spec.tokens_input: seq[:, :t + 1], **pre_lab})[0][:, -1]
    return seq


class _InPlaceStep:
    """The decode step of a "kv_static" cache over one io_binding: the state OrtValues are bound as input and
    as output (updated in place by the graph), the token (int64 N x 1), position (int64 scalar) and logits
    (float32 N x V) are numpy buffers shared with their OrtValues. ``step(tokens N, t)`` -> logits N x V (the
    same buffer each call: read it before the next)."""

    def __init__(self, spec: TokenAutoregressiveSpec, decode, state, labels: Mapping[str, Any], n: int):
        self.token = np.zeros((n, 1), dtype=np.int64)
        self.position = np.zeros((), dtype=np.int64)
        self.logits = np.zeros((n, spec.vocab_size), dtype=np.float32)
        self._keep = [ort_value(a) for a in (self.token, self.position, self.logits)]  # share the numpy memory
        self.decode, self.binding = decode, decode.io_binding()
        self.binding.bind_ortvalue_input(spec.token_input, self._keep[0])
        self.binding.bind_ortvalue_input(spec.position_input, self._keep[1])
        for k, v in labels.items():
            self.binding.bind_ortvalue_input(k, v)
        for (i, o), buf in zip(spec.state, state):
            self.binding.bind_ortvalue_input(i, buf)
            self.binding.bind_ortvalue_output(o, buf)
        self.binding.bind_ortvalue_output(spec.output, self._keep[2])
        self._state = state

    def __call__(self, tokens: np.ndarray, t: int) -> np.ndarray:
        self.token[:, 0] = tokens
        self.position[...] = t
        self.decode.run_with_iobinding(self.binding)
        return self.logits


def _check_sessions(spec: TokenAutoregressiveSpec, sessions: Mapping[str, Any]) -> None:
    """The prefill and decode graphs take the inputs the loop feeds (int64 ids, the state, labels when
    conditional) and return logits over the spec's vocabulary."""
    state_in = {i for i, _ in spec.state}
    state_out = [o for _, o in spec.state]
    if spec.cache == "kv_static":
        state_in = state_in | {spec.position_input}
    for name, ids, extra in ((spec.prefill, spec.tokens_input, set()), (spec.graph, spec.token_input, state_in)):
        sess = sessions[name]
        have = {i.name: i for i in sess.get_inputs()}
        allowed = {ids, *extra} | ({spec.labels_input} if spec.conditional else set())
        if not ({ids, *extra} <= set(have) <= allowed):
            raise SamplerSpecError(f"graph {name!r} takes inputs {sorted(have)}, the token_autoregressive sampler "
                                   f"feeds {sorted(allowed)}")
        if have[ids].type != "tensor(int64)":
            raise SamplerSpecError(f"graph {name!r}: {ids} is {have[ids].type}, expected tensor(int64)")
        outs = {o.name: o for o in sess.get_outputs()}
        missing = [o for o in (spec.output, *state_out) if o not in outs]
        if missing:
            raise SamplerSpecError(f"graph {name!r} has outputs {sorted(outs)}, the sampler reads {missing}")
        v = outs[spec.output].shape[-1]
        if isinstance(v, int) and v != spec.vocab_size:
            raise SamplerSpecError(f"graph {name!r}: logits over {v} tokens, sampler.json says {spec.vocab_size}")
    if spec.conditional and spec.labels_input not in _inputs(sessions[spec.prefill]) | _inputs(sessions[spec.graph]):
        raise SamplerSpecError(f"conditional sampler, but neither graph takes {spec.labels_input!r}")


@register("token_autoregressive", check_sessions=_check_sessions)
def token_autoregressive(spec: TokenAutoregressiveSpec, sessions, n, rng, labels):
    """n sequences: uniforms from rng (float32 N x (T-1), drawn first), then the cached loop."""
    u = rng.random((n, spec.length - 1), dtype=np.float32)
    return sample_from_uniforms(spec, sessions, u, labels)
