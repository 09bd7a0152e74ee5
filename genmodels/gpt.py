"""A character-level decoder-only transformer (family "gpt"), in the spirit of Karpathy's nanoGPT ``model.py``.

Causal multi-head self-attention, learned absolute positions, pre-norm blocks (LayerNorm -> attention ->
residual, LayerNorm -> MLP with GELU -> residual), a final LayerNorm, the output layer tied to the token
embedding, dropout on the embeddings, attention weights and residual branches; weights N(0, 0.02), the
residual projections N(0, 0.02 / sqrt(2 * layers)) (GPT-2). AdamW with weight decay on the matrices only,
linear warm-up then cosine decay of the learning rate, gradient clipping.

Class-conditional through a class token: with classes in the data, position 0 (the ``<bos>`` slot) holds the
class's embedding instead of ``<bos>``'s, so every later position attends to the class.

Serving runs two graphs with a KV cache (``contracts.samplers.TokenAutoregressiveSpec``, cache "kv"):
``prefill`` (tokens N x L [+ labels N] -> logits N x L x V, present_key_i/present_value_i per layer i,
N x heads x L x head_dim) and ``decode`` (one token N x 1, past_key_i/past_value_i N x heads x P x head_dim
-> logits N x V,
the caches with P + 1 positions; the position of the new token is P). The prefill graph alone, rerun on the
whole prefix each step, is the no-cache baseline of benchmarks/text_generate.py. Batches: see textbase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.base import ModelConfig, training
from genmodels.textbase import GradientTokenModel


@dataclass
class GPTConfig(ModelConfig):
    layers: int = 4
    heads: int = 4
    embed: int = 128                  # model width (heads x head_dim)
    mlp_ratio: int = 4
    dropout: float = 0.0              # a few epochs of names in the default budget: no need (0.1-0.2 for more)
    bias: bool = False                # biases in Linear and LayerNorm layers (nanoGPT: False is a bit better)
    lr: float = training(3e-3)
    min_lr: float = training(1e-4)
    warmup_steps: int = training(50)
    decay_steps: int = training(2650)  # cosine decay from lr to min_lr over these steps (then min_lr): epochs x
                                       # steps per epoch (names: 663 at batch 128)
    weight_decay: float = training(0.1)
    beta2: float = training(0.99)
    grad_clip: float = training(1.0)
    batch_size: int = training(128)
    epochs: int = training(4)

    def __post_init__(self):
        super().__post_init__()
        if self.layers < 1 or self.heads < 1 or self.embed < 1 or self.mlp_ratio < 1:
            raise ValueError("gpt: layers, heads, embed and mlp_ratio must be >= 1")
        if self.embed % self.heads:
            raise ValueError(f"gpt: embed ({self.embed}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"gpt: dropout must be in [0, 1), got {self.dropout}")


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.embed, 3 * cfg.embed, bias=cfg.bias)
        self.proj = nn.Linear(cfg.embed, cfg.embed, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor | None = None, past_v: torch.Tensor | None = None):
        """x N x L x C -> (N x L x C, keys and values N x H x (P+L) x D). With a past, L = 1 (one decode step)."""
        n, length, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (t.view(n, length, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        if past_k is None:  # training and prefill: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:  # one decode step: the new query against the cache; scaling the 1 x P scores, not the keys
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
            att = torch.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])), dim=-1)
            y = att @ v
        y = y.transpose(1, 2).reshape(n, length, c)
        return self.resid_drop(self.proj(y)), k, v


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.embed, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.embed, bias=cfg.bias)
        self.mlp = nn.Sequential(nn.Linear(cfg.embed, cfg.mlp_ratio * cfg.embed, bias=cfg.bias), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.embed, cfg.embed, bias=cfg.bias), nn.Dropout(cfg.dropout))

    def forward(self, x, past_k=None, past_v=None):
        a, k, v = self.attn(self.ln1(x), past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


class GPT(GradientTokenModel):
    family: ClassVar[str] = "gpt"
    config_class: ClassVar[type[ModelConfig]] = GPTConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"nll", "score", "conditional"})
    cache: ClassVar[str] = "kv"

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        cfg = config
        with torch.random.fork_rng(devices=[]):  # same config -> same weights; the global RNG untouched
            torch.manual_seed(cfg.seed)
            self.wte = nn.Embedding(self.vocab_size, cfg.embed)
            self.wpe = nn.Embedding(self.length, cfg.embed)
            self.cls = nn.Embedding(max(self.num_classes, 1), cfg.embed)
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
            self.ln_f = nn.LayerNorm(cfg.embed, bias=cfg.bias)
            self.head = nn.Linear(cfg.embed, self.vocab_size, bias=False)
            self.head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
        # one key and one value tensor per layer, N x heads x P x head_dim (no split or stack of a joint cache)
        self.state_pairs = tuple(pair for i in range(cfg.layers) for pair in
                                 ((f"past_key_{i}", f"present_key_{i}"), (f"past_value_{i}", f"present_value_{i}")))
        decay = [p for p in self.parameters() if p.dim() >= 2]
        other = [p for p in self.parameters() if p.dim() < 2]
        self._opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2))
        self._sched = torch.optim.lr_scheduler.LambdaLR(self._opt, self._lr_factor)

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.decay_steps - cfg.warmup_steps))
        return (cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * t)) * (cfg.lr - cfg.min_lr)) / cfg.lr

    # --- the network --------------------------------------------------------------------------
    def run(self, idx: torch.Tensor, labels: torch.Tensor | None = None, past: tuple[torch.Tensor, ...] | None = None,
            keep: bool = False):
        """Logits N x L x V for ids N x L (positions P.. P+L-1, P = past length); ``past``: key_0, value_0, key_1,
        ... (N x H x P x D each); with ``keep`` returns (logits, those caches with P+L positions). ``labels``
        (prefill only) puts the class token at position 0."""
        p0 = 0 if past is None else past[0].shape[2]
        pos = torch.arange(p0, p0 + idx.shape[1], device=idx.device)
        x = self.wte(idx)
        if labels is not None:
            x = torch.cat([self.cls(labels).unsqueeze(1), x[:, 1:]], dim=1)
        x = self.drop(x + self.wpe(pos))
        caches: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, None if past is None else past[2 * i], None if past is None else past[2 * i + 1])
            if keep:
                caches += [k, v]
        logits = self.head(self.ln_f(x)) + self.mask
        if not keep:
            return logits
        return logits, tuple(caches)

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.run(x, labels)

    # --- training -----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self._opt}

    # --- serving ------------------------------------------------------------------------------
    def cache_shape(self) -> tuple[int, ...]:
        cfg = self.config
        return (cfg.layers, cfg.heads, cfg.embed // cfg.heads)

    def example_state(self, n: int, past: int) -> tuple[torch.Tensor, ...]:
        layers, heads, d = self.cache_shape()
        return tuple(torch.zeros(n, heads, past, d, device=self.device) for _ in range(2 * layers))

    def prefill_module(self) -> nn.Module:
        return _Prefill(self)

    def decode_module(self) -> nn.Module:
        return _Decode(self)


class _Prefill(nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None):
        logits, caches = self.model.run(tokens, labels, keep=True)
        return (logits, *caches)


class _Decode(nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, *past: torch.Tensor):
        logits, caches = self.model.run(token, None, past, keep=True)
        return (logits[:, -1], *caches)
