"""A character LSTM (family "lstm"): the char-RNN of Karpathy (2015) with LSTM cells (Hochreiter & Schmidhuber
1997): token embedding -> stacked LSTM (dropout between layers) -> dropout -> linear output layer.

Class-conditional through its initial state: with classes in the data, (h0, c0) of every layer is a learned
vector per class (an embedding of the label); without, one learned vector.

Serving (``contracts.samplers.TokenAutoregressiveSpec``, cache "rnn"): ``prefill`` (tokens N x L [+ labels N]
-> logits N x L x V, h_next and c_next N x layers x hidden) and the ``decode`` step (token N x 1, h, c ->
logits N x V, h_next, c_next). Adam, gradient clipping, exponential learning-rate decay. Batches: textbase.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from genmodels.base import ModelConfig, arch, training
from genmodels.textbase import GradientTokenModel


@dataclass
class LSTMConfig(ModelConfig):
    layers: int = arch(2, ge=1)
    hidden: int = arch(256, ge=1)
    embed: int = arch(64, ge=1)
    dropout: float = arch(0.0, ge=0, lt=1)              # between layers and before the output layer
    lr: float = training(3e-3)
    lr_decay: float = training(0.9992, gt=0, le=1)      # per step: x0.12 over 4 names epochs (2650 steps)
    grad_clip: float = training(1.0, ge=0)
    batch_size: int = training(128)
    epochs: int = training(4)


class LSTM(GradientTokenModel):
    family: ClassVar[str] = "lstm"
    config_class: ClassVar[type[ModelConfig]] = LSTMConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"nll", "score", "conditional"})
    cache: ClassVar[str] = "rnn"
    state_pairs: ClassVar[tuple[tuple[str, str], ...]] = (("h", "h_next"), ("c", "c_next"))

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        cfg = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.emb = nn.Embedding(self.vocab_size, cfg.embed)
            self.rnn = nn.LSTM(cfg.embed, cfg.hidden, cfg.layers, batch_first=True,
                               dropout=cfg.dropout if cfg.layers > 1 else 0.0)
            self.init_state = nn.Embedding(max(self.num_classes, 1), 2 * cfg.layers * cfg.hidden)
            nn.init.zeros_(self.init_state.weight)
            self.drop = nn.Dropout(cfg.dropout)
            self.head = nn.Linear(cfg.hidden, self.vocab_size)
        self._opt = torch.optim.Adam(self.parameters(), lr=cfg.lr)
        self._sched = torch.optim.lr_scheduler.ExponentialLR(self._opt, gamma=cfg.lr_decay)

    def initial_state(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h0, c0), each N x layers x hidden, for labels N (zeros for an unconditional model's dummy class)."""
        s = self.init_state(labels).view(-1, 2, self.config.layers, self.config.hidden)
        return s[:, 0], s[:, 1]

    def run(self, idx: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """ids N x L from state (N x layers x hidden each) -> logits N x L x V, h_next, c_next."""
        out, (h2, c2) = self.rnn(self.emb(idx), (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()))
        return self.head(self.drop(out)) + self.mask, h2.transpose(0, 1), c2.transpose(0, 1)

    def _start(self, idx: torch.Tensor, labels: torch.Tensor | None):
        lab = labels if labels is not None else torch.zeros_like(idx[:, 0])
        return self.initial_state(lab)

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.run(x, *self._start(x, labels))[0]

    # --- training -----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self._opt}

    # --- serving ------------------------------------------------------------------------------
    def cache_shape(self) -> tuple[int, ...]:
        return (self.config.layers, self.config.hidden)

    def example_state(self, n: int, past: int) -> tuple[torch.Tensor, ...]:
        z = torch.zeros(n, self.config.layers, self.config.hidden, device=self.device)
        return z, z.clone()

    def prefill_module(self) -> nn.Module:
        return _Prefill(self)

    def decode_module(self, export: bool = False) -> nn.Module:
        return _Decode(self)


class _Prefill(nn.Module):
    def __init__(self, model: LSTM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None):
        return self.model.run(tokens, *self.model._start(tokens, labels))


class _Decode(nn.Module):
    def __init__(self, model: LSTM):
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        logits, h2, c2 = self.model.run(token, h, c)
        return logits[:, -1], h2, c2
