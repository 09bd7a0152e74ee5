"""A character-level decoder-only transformer (family "gpt"), in the spirit of Karpathy's nanoGPT ``model.py``.

Causal multi-head self-attention, learned absolute positions, pre-norm blocks (LayerNorm -> attention ->
residual, LayerNorm -> MLP with GELU -> residual), a final LayerNorm, the output layer tied to the token
embedding, dropout on the embeddings, attention weights and residual branches; weights N(0, 0.02), the
residual projections N(0, 0.02 / sqrt(2 * layers)) (GPT-2). AdamW with weight decay on the matrices only,
linear warm-up then cosine decay of the learning rate, gradient clipping.

Class-conditional through a class token: with classes in the data, position 0 (the ``<bos>`` slot) holds the
class's embedding instead of ``<bos>``'s, so every later position attends to the class.

Serving runs two graphs with a KV cache preallocated to the stored length T (``contracts.samplers.
TokenAutoregressiveSpec``, cache "kv_static"): ``prefill`` (tokens N x L [+ labels N] -> logits N x L x V,
present_key_i/present_value_i per layer i, N x heads x T x head_dim, positions L.. zero) and ``decode`` (one
token N x 1, its ``position`` P (int64 scalar, 0 < P < T), past_key_i/past_value_i N x heads x T x head_dim ->
logits N x V, the caches with the new token's key and value written at P). Decode attends to positions 0..P.
Its attention is exported as ONNX Runtime's ``com.microsoft`` ``GroupQueryAttention`` (num_heads =
kv_num_heads: plain multi-head attention), which writes the new key/value into the cache buffer itself when the
caller binds each ``present`` output to its ``past`` input (serving/sampler_tokens.py): no copy of the cache per
token, where a growing cache (torch.cat / ONNX Concat) copies all of it at every step. PyTorch eager runs the
same step in place (``cached_attention``). The prefill graph alone, rerun on the whole prefix each step, is the
no-cache baseline of benchmarks/text_generate.py. Batches: see textbase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.base import ModelConfig, arch, training
from genmodels.textbase import GradientTokenModel


@dataclass
class GPTConfig(ModelConfig):
    layers: int = arch(4, ge=1)
    heads: int = arch(4, ge=1)
    embed: int = arch(128, ge=1)                  # model width (heads x head_dim)
    mlp_ratio: int = arch(4, ge=1)
    dropout: float = arch(0.0, ge=0, lt=1)              # a few epochs of names in the default budget: no need (0.1-0.2 for more)
    bias: bool = False                # biases in Linear and LayerNorm layers (nanoGPT: False is a bit better)
    lr: float = training(3e-3)
    min_lr: float = training(1e-4)
    warmup_steps: int = training(50, ge=0)
    decay_steps: int = training(2650, ge=1)  # cosine decay from lr to min_lr over these steps (then min_lr): epochs x
                                       # steps per epoch (names: 663 at batch 128)
    weight_decay: float = training(0.1, ge=0)
    beta2: float = training(0.99)
    grad_clip: float = training(1.0, ge=0)
    batch_size: int = training(128)
    epochs: int = training(4)

    def __post_init__(self):
        super().__post_init__()
        if self.embed % self.heads:
            raise ValueError(f"gpt: embed ({self.embed}) must be divisible by heads ({self.heads})")


def cached_attention(q, k, v, cache_k, cache_v, position, heads: int):
    """One decode step of multi-head attention over a preallocated KV cache, writing the cache in place.

    q, k, v: N x 1 x C (heads x head_dim, the projections of the new token); cache_k, cache_v: N x H x T x D;
    position: int64 scalar P. Writes k, v at P, attends from q to positions 0..P (scaled by 1/sqrt(D)),
    returns (N x 1 x C, cache_k, cache_v), the caches the same tensors, modified.
    """
    n, _, c = q.shape
    d, p = c // heads, int(position)
    cache_k[:, :, p] = k.view(n, heads, d)
    cache_v[:, :, p] = v.view(n, heads, d)
    y = F.scaled_dot_product_attention(q.view(n, heads, 1, d), cache_k[:, :, :p + 1], cache_v[:, :, :p + 1])
    return y.view(n, 1, c), cache_k, cache_v                                          # N x H x 1 x D -> N x 1 x C


class _GroupQueryAttention(torch.autograd.Function):
    """``cached_attention`` for the ONNX exporter (on copies of the caches): exported as ONNX Runtime's
    ``GroupQueryAttention`` (com.microsoft, opset 1; num_heads = kv_num_heads; seqlens_k = P per row,
    total_sequence_length = P + 1; the caches in its shared-buffer layout N x H x max_length x D)."""

    @staticmethod
    def forward(ctx, q, k, v, cache_k, cache_v, position, heads: int):
        return cached_attention(q, k, v, cache_k.clone(), cache_v.clone(), position, heads)

    @staticmethod
    def symbolic(g, q, k, v, cache_k, cache_v, position, heads: int):
        pos = g.op("Cast", position, to_i=6)                                              # int32
        total = g.op("Add", pos, g.op("Constant", value_t=torch.tensor(1, dtype=torch.int32)))
        seqlens = g.op("Expand", pos, g.op("Shape", q, start_i=0, end_i=1))             # int32 N
        y, present_k, present_v = g.op("com.microsoft::GroupQueryAttention", q, k, v, cache_k, cache_v, seqlens,
                                       total, num_heads_i=heads, kv_num_heads_i=heads, outputs=3)
        for out, like in ((y, q), (present_k, cache_k), (present_v, cache_v)):  # the exporter cannot infer them
            out.setType(like.type())
        return y, present_k, present_v


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.embed, 3 * cfg.embed, bias=cfg.bias)
        self.proj = nn.Linear(cfg.embed, cfg.embed, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                position: torch.Tensor | None = None):
        """x N x L x C -> (N x L x C, keys and values N x H x L x D). With a cache (N x H x T x D each) and the
        new token's position: L = 1, one decode step that writes the cache in place and returns it."""
        n, length, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        if cache is not None:
            step = _GroupQueryAttention.apply if torch.jit.is_tracing() else cached_attention
            y, k, v = step(q, k, v, cache[0], cache[1], position, self.heads)
            return self.resid_drop(self.proj(y)), k, v
        q, k, v = (t.view(n, length, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        if torch.jit.is_tracing():  # the exported prefill: the exporter's SDPA scales q and k^T apart, and ONNX
            # Runtime multiplies k^T (last axis 1) element by element (a third of a prefill of <bos>); one scale on q
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            att = ((q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)).masked_fill(causal, float("-inf"))
            y = torch.softmax(att, dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
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

    def forward(self, x, cache=None, position=None):
        a, k, v = self.attn(self.ln1(x), cache, position)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


class GPT(GradientTokenModel):
    family: ClassVar[str] = "gpt"
    config_class: ClassVar[type[ModelConfig]] = GPTConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"nll", "score", "conditional"})
    cache: ClassVar[str] = "kv_static"

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
    def run(self, idx: torch.Tensor, labels: torch.Tensor | None = None, cache: tuple[torch.Tensor, ...] | None = None,
            position: torch.Tensor | None = None, keep: bool = False):
        """Logits N x L x V for ids N x L at positions 0..L-1; ``labels`` puts the class token at position 0.
        With ``keep`` returns (logits, key_0, value_0, key_1, ... N x H x T x D each: the prefix's keys and
        values, zero after L). With ``cache`` (those T-long tensors) and ``position`` P (int64 scalar): one decode
        step, ids N x 1 at position P, the caches written in place and returned."""
        p0 = 0 if position is None else position
        x = self.wte(idx)
        if labels is not None:
            x = torch.cat([self.cls(labels).unsqueeze(1), x[:, 1:]], dim=1)
        x = self.drop(x + self.wpe(torch.arange(idx.shape[1], device=idx.device) + p0))
        caches: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, None if cache is None else cache[2 * i:2 * i + 2], position)
            if keep and cache is None:  # prefill: pad the prefix's keys/values to the full length T
                k, v = (F.pad(t, (0, 0, 0, self.length - t.shape[2])) for t in (k, v))
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
        """Caches N x H x T x D holding ``past`` positions (random there, zero after)."""
        layers, heads, d = self.cache_shape()
        g = torch.Generator().manual_seed(past)
        return tuple(F.pad(torch.randn(n, heads, past, d, generator=g), (0, 0, 0, self.length - past)).to(self.device)
                     for _ in range(2 * layers))

    def prefill_module(self) -> nn.Module:
        return _Prefill(self)

    def decode_module(self, export: bool = False) -> nn.Module:
        return _Decode(self, copy=export)


class _Prefill(nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None):
        logits, caches = self.model.run(tokens, labels, keep=True)
        return (logits, *caches)


class _Decode(nn.Module):
    """One decode step. ``copy=False`` (the PyTorch sampling loop): the caches are written in place and returned.
    ``copy=True`` (the exported graph's semantics, what its parity is checked against): new caches, zero after
    P, which ONNX Runtime's GroupQueryAttention returns when its outputs are not bound to its inputs."""

    def __init__(self, model: GPT, copy: bool = False):
        super().__init__()
        self.model, self.copy = model, copy

    def forward(self, token: torch.Tensor, position: torch.Tensor, *cache: torch.Tensor):
        copy = self.copy and not torch.jit.is_tracing()
        if copy:
            cache = tuple(c.clone() for c in cache)
        logits, caches = self.model.run(token, None, cache, position, keep=True)
        if copy:
            for c in caches:
                c[:, :, int(position) + 1:] = 0
        return (logits[:, -1], *caches)
