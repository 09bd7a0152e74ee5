"""A bigram count model (family "bigram"): the floor every text family must beat.

p(next = b | previous = a, class y) = (count(y, a, b) + alpha) / (count(y, a, .) + alpha * (V - 2)), over the
V - 2 tokens that can follow (``<pad>`` and ``<bos>`` never do): add-alpha (Lidstone) smoothing of the counts
of the training pairs, one table per class (one table without classes). Trained by counting: ``fit_step``
adds a batch's pairs (predicted positions only: up to and including ``<eos>``) to ``counts``; there is no
optimiser, and one epoch is the exact maximum-likelihood-plus-prior estimate (more epochs scale every count
alike, which changes only the weight of alpha).

Serving (cache "none"): ``prefill`` (tokens N x L, labels N -> logits N x L x V) and ``decode`` (token N x 1,
labels N -> logits N x V): row lookups of the log-probability table. Batches: textbase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from contracts.token_sampling import BOS, PAD
from genmodels.base import ModelConfig, arch, training
from genmodels.textbase import TokenModel, token_nll


@dataclass
class BigramConfig(ModelConfig):
    alpha: float = arch(0.01, gt=0)                     # add-alpha smoothing of every count (names test bpc: 0.001-0.01 best, 0.1 +0.003)
    batch_size: int = training(4096)
    epochs: int = training(1)

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"bigram: alpha must be a number > 0, got {self.alpha!r}")


class Bigram(TokenModel):
    family: ClassVar[str] = "bigram"
    config_class: ClassVar[type[ModelConfig]] = BigramConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"nll", "score", "conditional"})
    takes_labels_in_decode: ClassVar[bool] = True

    def __init__(self, config: BigramConfig):
        super().__init__(config)
        v = self.vocab_size
        self.register_buffer("counts", torch.zeros(max(self.num_classes, 1), v, v, dtype=torch.float64))

    def table(self) -> torch.Tensor:
        """log p(b | a, y): float32 K x V x V (-inf for <pad> and <bos>)."""
        c = self.counts + self.config.alpha
        c[..., [PAD, BOS]] = 0.0
        return (c / c.sum(-1, keepdim=True)).log().float()

    def _lab(self, idx: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            return torch.zeros_like(idx[:, 0])
        return labels

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.table()[self._lab(x, labels).unsqueeze(1), x]

    # --- training: counting -------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        x = x.to(self.device).long()
        labels = y.to(self.device).long() if self.conditional and y is not None else None
        if self.conditional and labels is None:
            raise ValueError("bigram: a conditional model trains on labelled batches")
        with torch.no_grad():
            loss = token_nll(self.logits(x[:, :-1], labels), x).sum() / (x[:, 1:] != PAD).sum().clamp_min(1)
            self.count_classes(labels)
            a, b = x[:, :-1], x[:, 1:]
            keep = b != PAD
            lab = self._lab(x, labels).unsqueeze(1).expand_as(a)
            self.counts.index_put_((lab[keep], a[keep], b[keep]),
                                   torch.ones(int(keep.sum()), dtype=torch.float64, device=x.device), accumulate=True)
        return {"loss": loss.item(), "bits_per_char": loss.item() / math.log(2)}

    # --- serving ------------------------------------------------------------------------------
    def prefill_module(self) -> nn.Module:
        return _Lookup(self.table(), self.conditional, step=False)

    def decode_module(self, export: bool = False) -> nn.Module:
        return _Lookup(self.table(), self.conditional, step=True)

    def example_state(self, n: int, past: int) -> tuple[torch.Tensor, ...]:
        return ()


class _Lookup(nn.Module):
    """Rows of the log-probability table: tokens N x L (+ labels N) -> N x L x V (step: N x 1 -> N x V)."""

    def __init__(self, table: torch.Tensor, conditional: bool, step: bool):
        super().__init__()
        self.register_buffer("table", table)
        self.conditional, self.step = conditional, step

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None):
        if self.conditional:
            out = self.table[labels.unsqueeze(1), tokens]
        else:
            out = self.table[0][tokens]
        return out[:, -1] if self.step else out
