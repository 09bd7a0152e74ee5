"""Test-split bits per character of a tokens model, from its exact negative log-likelihood.

``bits_per_char = total NLL (nats) / (ln 2 * (characters + one <eos> per text))``: the end token counts as
one character, as char-RNN practice does (Karpathy's char-rnn, nanoGPT's shakespeare_char report the loss per
predicted token, the newline/end included). Characters are the tokens between ``<bos>`` and ``<eos>`` (a
character outside the vocabulary is its UTF-8 byte tokens). The model's ``nll(ids)`` gives nats per
predicted token (every position after ``<bos>`` up to and including ``<eos>``): per text (N,), or one number
for the whole batch (its token-weighted mean); both are weighted back to a total here. No labels are given
(the model's label-free likelihood), so conditional and unconditional models are compared on the same terms.
"""
from __future__ import annotations

import math

import numpy as np

from evaluation.suite.base import EvalContext, Metric, Result

UNIT = "bits per character, <eos> counted as one character"


def predicted_tokens(ids: np.ndarray) -> np.ndarray:
    """Predicted positions per row of stored ids (N x T, <bos> first, <pad> = 0 after <eos>): the non-pad
    tokens after <bos>, i.e. characters + 1."""
    return (np.asarray(ids) != 0).sum(axis=1) - 1


class BitsPerChar(Metric):
    name = "bits_per_char"
    modality = "tokens"
    needs = frozenset({"nll"})
    outputs = ("bits_per_char", "nats_per_char")
    settings = {"bits_per_char": {"max_texts": None, "batch_size": 500}}

    def check(self, ctx: EvalContext) -> None:
        from contracts.errors import ConfigError

        cfg = ctx.settings["bits_per_char"]
        for key in ("max_texts", "batch_size"):
            value = cfg.get(key)
            if (value is not None or key == "batch_size") and (isinstance(value, bool) or not isinstance(value, int)
                                                               or value < 1):
                raise ConfigError(f"evaluation.bits_per_char.{key}", f"expected an integer >= 1"
                                  f"{' or null (every test text)' if key == 'max_texts' else ''}, got {value!r}")
        if len(ctx.test[0]) == 0:
            raise ConfigError("evaluation.metrics", f"bits_per_char: the test split of {ctx.data.name} is empty")

    def compute(self, ctx: EvalContext) -> Result:
        import torch

        cfg = ctx.settings["bits_per_char"]
        ids = ctx.test[0] if cfg.get("max_texts") is None else ctx.test[0][:int(cfg["max_texts"])]
        counts = predicted_tokens(ids)
        total, bs = 0.0, int(cfg["batch_size"])
        with torch.no_grad():
            for i in range(0, len(ids), bs):
                batch = torch.from_numpy(np.ascontiguousarray(ids[i:i + bs]).astype(np.int64)).to(ctx.device)
                nll = ctx.model.nll(batch).double().cpu().numpy()
                m = counts[i:i + bs]
                total += float(nll * m.sum()) if nll.ndim == 0 else float((nll.reshape(-1) * m).sum())
        nats = total / float(counts.sum())
        setting = {"n_texts": int(len(ids)), "split": "test", "predicted_tokens": int(counts.sum()),
                   "labels": "not given (label-free likelihood)"}
        return {"bits_per_char": (nats / math.log(2), {**setting, "unit": UNIT}),
                "nats_per_char": (nats, {**setting, "unit": "nats per character, <eos> counted as one character"})}
