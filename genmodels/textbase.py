"""What the text families (gpt, lstm, bigram) share: the likelihood of a token batch, the class handling, the
sampling loop over a prefill + decode step with a cache, and the ``token_autoregressive`` sampler spec.

Batches are int64 N x T in the stored layout of the tokens modality (``contracts/modalities/tokens.py``):
``<bos>`` first, the characters, ``<eos>``, then ``<pad>``. Position t predicts token t+1; the predicted
positions are those whose target is not ``<pad>`` (every character and the ``<eos>``). The model gives
``<pad>`` and ``<bos>`` probability 0 (their logits are -inf), so the NLL is that of the distribution the
sampler draws from.

Conditional models (data with classes) see the class before the first character (each family in its own way:
a class token, an initial state, a per-class table). ``nll``/``score`` with labels are log p(x | y); without
labels they are exact marginals, -log sum_y p(y) p(x | y), with p(y) the training class shares (a buffer
filled by ``fit_step``; uniform before any).

A family implements ``prefill_module()`` and ``decode_module()`` (``nn.Module``s with the graph signatures of
``contracts.samplers.TokenAutoregressiveSpec``), ``state_pairs``/``cache`` and ``training_nll``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contracts.samplers import TokenAutoregressiveSpec
from contracts.token_sampling import BOS, EOS, PAD, draw_tokens
from genmodels.base import GenerativeModel, ModelConfig, OnnxGraph, ScheduledTraining


def require_tokens(family: str, config: ModelConfig) -> tuple[int, int]:
    """(vocab size V, stored length T) of token data; ValueError naming the family for anything else."""
    spec = config.data
    if spec.modality != "tokens":
        raise ValueError(f"{family} models tokens data, not {spec.modality}")
    if len(spec.shape) != 1 or spec.shape[0] < 3:
        raise ValueError(f"{family} needs token sequences of length T >= 3 (<bos>, a character, <eos>), "
                         f"got shape {list(spec.shape)}")
    if spec.vocab_size < 4:
        raise ValueError(f"{family} needs a vocabulary of <pad> <bos> <eos> and characters, got {spec.vocab_size} tokens")
    return spec.vocab_size, spec.shape[0]


def impossible_mask(vocab_size: int) -> torch.Tensor:
    """float V: -inf at <pad> and <bos> (never predicted), 0 elsewhere; added to every logit."""
    m = torch.zeros(vocab_size)
    m[[PAD, BOS]] = float("-inf")
    return m


def token_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sequence NLL in nats (N) of x (N x T) from logits of positions 0..T-2 (N x (T-1) x V)."""
    target = x[:, 1:]
    return F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD, reduction="none").sum(1)


def predicted_tokens(x: torch.Tensor) -> torch.Tensor:
    """How many tokens of each sequence are predicted (characters + <eos>): N."""
    return (x[:, 1:] != PAD).sum(1)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


class TokenModel(GenerativeModel):
    """Base of the text families (see the module docstring)."""

    modalities: ClassVar[frozenset[str]] = frozenset({"tokens"})
    sampling_options: ClassVar[dict[str, Any]] = {"temperature": 1.0, "top_k": None, "top_p": None, "max_len": None}
    cache: ClassVar[str] = "none"
    state_pairs: tuple[tuple[str, str], ...] = ()   # (input, output) names of the decode state
    cache_length_axis: ClassVar[int] = 2               # kv caches: the axis that grows by one per step

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.vocab_size, self.length = require_tokens(self.family, config)
        self.num_classes = int(config.data.num_classes)
        self.register_buffer("mask", impossible_mask(self.vocab_size), persistent=False)
        self.register_buffer("class_counts", torch.zeros(max(self.num_classes, 1), dtype=torch.float64))
        if not self.conditional:  # unlabelled data: the class token / state / table is one, and not a capability
            self.capabilities = self.capabilities - {"conditional"}
        self.sampling["max_len"] = self.length - 2

    @property
    def device(self) -> torch.device:
        return self.mask.device  # the bigram has buffers only

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    # --- the family's part --------------------------------------------------------------------
    def logits(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Next-token logits (mask included) at every position: N x L ids -> N x L x V (differentiable)."""
        raise NotImplementedError

    def prefill_module(self) -> nn.Module:
        raise NotImplementedError

    def decode_module(self, export: bool = False) -> nn.Module:
        """The one-token step; ``export``: the module the decode graph is exported from and checked against
        (a family whose sampling loop updates its state in place returns copies there)."""
        raise NotImplementedError

    def cache_shape(self) -> tuple[int, ...]:
        return ()

    def example_state(self, n: int, past: int) -> tuple[torch.Tensor, ...]:
        return ()

    # --- likelihood ---------------------------------------------------------------------------
    def count_classes(self, y: torch.Tensor | None) -> None:
        if self.conditional and y is not None:
            self.class_counts += torch.bincount(y.long().cpu(), minlength=self.num_classes).double().to(self.class_counts.device)

    def log_prior(self) -> torch.Tensor:
        """log p(y), K: the training class shares (uniform before training)."""
        c = self.class_counts
        p = c / c.sum() if float(c.sum()) > 0 else torch.full_like(c, 1.0 / len(c))
        return p.clamp_min(1e-300).log()

    def sequence_nll(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x [| y]) in nats per sequence (N); no grad needed; marginal over classes without labels."""
        x = x.to(self.device).long()
        if not self.conditional:
            return token_nll(self.logits(x[:, :-1], None), x)
        if labels is not None:
            return token_nll(self.logits(x[:, :-1], self.requested_labels(labels, len(x))), x)
        per_class = torch.stack([token_nll(self.logits(x[:, :-1], torch.full((len(x),), k, device=x.device)), x)
                                 for k in range(self.num_classes)], dim=1)                      # N x K
        return -torch.logsumexp(self.log_prior().to(per_class) - per_class.double(), dim=1).float()

    @torch.no_grad()
    def score(self, x: torch.Tensor, labels: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
        """Anomaly score: the sequence's NLL in nats (N), -log p(x) (marginal over classes without labels)."""
        self.eval()
        parts = [self.sequence_nll(x[i:i + chunk], None if labels is None else labels[i:i + chunk])
                 for i in range(0, len(x), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0)

    @torch.no_grad()
    def nll(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact NLL in nats per predicted token of each sequence (N): ``score`` / (characters + 1 for <eos>).
        bits per character of a set = sum(score) / (ln 2 * sum(characters + 1))."""
        return self.score(x, labels) / predicted_tokens(x.to(self.device)).clamp_min(1)

    def bits_per_char(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> float:
        """sum of sequence NLLs / (ln 2 * (characters + one <eos> per sequence)): the end token counts as one
        character, as in char-RNN practice."""
        return float(self.score(x, labels).double().sum()) / (math.log(2) * float(predicted_tokens(x).sum()))

    # --- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               **sampling: Any) -> torch.Tensor:
        """int64 N x T in the stored layout; one float32 uniform per row and position, drawn up front with
        torch.rand (N x (T-1)); options temperature, top_k, top_p, max_len override the defaults."""
        spec = self.sampling_spec(sampling)
        u = torch.rand((n, self.length - 1), generator=generator,
                       device=generator.device if generator is not None else self.device)
        labels = self.requested_labels(labels, n) if self.conditional else None
        return self.sample_from_uniforms(u.cpu().numpy(), labels, spec)

    @torch.no_grad()
    def sample_from_uniforms(self, u: np.ndarray, labels: torch.Tensor | None,
                             spec: TokenAutoregressiveSpec | None = None) -> torch.Tensor:
        """The loop of serving/sampler_tokens.py with PyTorch modules: prefill on <bos>, then decode steps."""
        self.eval()
        spec = spec or self.sampler()
        n = len(u)
        out = np.full((n, self.length), PAD, dtype=np.int64)
        out[:, 0] = BOS
        prefill, decode = self.prefill_module(), self.decode_module()
        first = torch.full((n, 1), BOS, dtype=torch.long, device=self.device)
        lab = labels.to(self.device) if labels is not None else None
        res = _as_tuple(prefill(first, lab) if self.conditional else prefill(first))
        logits, state = res[0][:, -1], tuple(res[1:])
        done = np.zeros(n, dtype=bool)
        for t in range(1, self.length):
            tok = draw_tokens(logits.float().cpu().numpy(), u[:, t - 1], spec.temperature, spec.top_k, spec.top_p,
                              done=done, force_eos=(t - 1) >= spec.max_len)
            out[:, t] = tok
            done |= tok == EOS
            if done.all() or t == self.length - 1:
                break
            step = torch.from_numpy(tok).to(self.device).view(n, 1)
            if self.cache == "kv_static":  # the new token's position, then the T-long caches it writes in place
                step = (step, torch.tensor(t, device=self.device))
            else:
                step = (step,)
            res = _as_tuple(decode(*step, *state, lab) if self.takes_labels_in_decode else decode(*step, *state))
            logits, state = res[0], tuple(res[1:])
        return torch.from_numpy(out).to(self.device)

    takes_labels_in_decode: ClassVar[bool] = False

    # --- export / serving ---------------------------------------------------------------------
    def onnx_graphs(self) -> list[OnnxGraph]:
        dev = self.device
        v = self.vocab_size
        ids = torch.tensor([[1, 3, 4, 5, 2], [1, v - 1, 3, 2, 0]], device=dev)   # values span 0..V-1 for parity
        labels = torch.tensor([0, max(self.num_classes - 1, 0)], device=dev)
        outs = [o for _, o in self.state_pairs]
        ins = [i for i, _ in self.state_pairs]
        lab_in = ["labels"] if self.conditional else []
        lab_ex = (labels,) if self.conditional else ()
        batch = {0: "batch"}
        prefill_axes = {"tokens": {0: "batch", 1: "length"}, "logits": {0: "batch", 1: "length"},
                        **({"labels": batch} if self.conditional else {})}
        ax = self.cache_length_axis
        state_axes = {0: "batch", ax: "past"} if self.cache == "kv" else batch
        grow_axes = {0: "batch", ax: "past_plus_one"} if self.cache == "kv" else batch
        prefill_axes.update({o: ({0: "batch", ax: "length"} if self.cache == "kv" else batch) for o in outs})
        dec_lab = self.conditional and self.takes_labels_in_decode
        decode_axes = {"token": batch, "logits": batch, **{i: state_axes for i in ins}, **{o: grow_axes for o in outs},
                       **({"labels": batch} if dec_lab else {})}
        pos_in, pos_ex = (["position"], (torch.tensor(3, device=dev),)) if self.cache == "kv_static" else ([], ())
        return [
            OnnxGraph(name="prefill", module=self.prefill_module().eval(), example_inputs=(ids, *lab_ex),
                      input_names=["tokens", *lab_in], output_names=["logits", *outs], dynamic_axes=prefill_axes),
            OnnxGraph(name="decode", module=self.decode_module(export=True).eval(),
                      example_inputs=(torch.tensor([[3], [v - 1]], device=dev), *pos_ex, *self.example_state(2, 3),
                                      *(lab_ex if dec_lab else ())),
                      input_names=["token", *pos_in, *ins, *(lab_in if dec_lab else [])], output_names=["logits", *outs],
                      dynamic_axes=decode_axes),
        ]

    def sampler(self) -> TokenAutoregressiveSpec:
        return TokenAutoregressiveSpec(
            graph="decode", prefill="prefill", state=self.state_pairs, cache=self.cache, cache_shape=self.cache_shape(),
            vocab_size=self.vocab_size, length=self.length, bos=BOS, eos=EOS, pad=PAD, conditional=self.conditional,
            **{k: v for k, v in getattr(self, "sampling", self.sampling_options).items()})


class GradientTokenModel(ScheduledTraining, TokenModel):
    """A token family trained by gradient descent on its own NLL (gpt, lstm): the optimizer in `self._opt`
    (named by `optimizers()`), a learning-rate schedule in `self._sched` stepped once per batch, gradients
    clipped at `config.grad_clip` (0: no clipping). One step: mean NLL in nats per predicted token of
    int64 N x T batches (`logits` on the tokens before the last), labels required when conditional."""

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        x = x.to(self.device).long()
        labels = y.to(self.device).long() if self.conditional and y is not None else None
        if self.conditional and labels is None:
            raise ValueError(f"{self.family}: a conditional model trains on labelled batches")
        self.count_classes(labels)
        nll = token_nll(self.logits(x[:, :-1], labels), x)
        loss = nll.sum() / (x[:, 1:] != 0).sum().clamp_min(1)          # nats per predicted token
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.config.grad_clip)
        self._opt.step()
        self._sched.step()
        return {"loss": loss.item(), "bits_per_char": loss.item() / math.log(2)}
