"""Metrics of generated text (the tokens modality) on plain Python strings, plus the decoded texts the
tokens metrics share through the evaluation context. numpy only (no torch).

Definitions (characters are the units; a "text" is one decoded sample, ``<bos>``/``<eos>``/``<pad>`` removed):

- ``memorization``: ``copy_rate`` = share of samples exactly equal to a training text; ``novelty`` = share
  not equal to any training text (= 1 - copy_rate); ``unique_rate`` = distinct samples / samples;
  ``novel_real_rate`` = share of samples absent from the train split but present in the test split (new and
  real). Exact string equality, case-sensitive, as prepared.
- ``distinct_n``: distinct character n-grams / all character n-grams over the set (Li et al. 2016, "A
  Diversity-Promoting Objective Function for Neural Conversation Models", NAACL, with characters as tokens);
  a text shorter than n gives none; 0 when the set has no n-gram.
- ``length_kl``: KL(P || Q) in nats between the length histograms (characters, bins 0..max_len) of two sets,
  each smoothed by adding ``alpha`` (default 0.5, the Krichevsky-Trofimov / Jeffreys prior) to every bin
  before normalising, so an empty bin never gives an infinite value; exactly 0 for equal histograms.
- ``corrupt``: anomaly sets of the same lengths as the normal texts: ``shuffled`` (the characters permuted),
  ``random`` (uniform characters of the alphabet), ``reversed``; a text the corruption leaves unchanged
  (one character, a palindrome) is dropped from that set.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

CORRUPTIONS = ("shuffled", "random", "reversed")
KT_ALPHA = 0.5

__all__ = ["CORRUPTIONS", "KT_ALPHA", "memorization", "distinct_n", "length_histogram", "length_kl", "corrupt",
           "sample_texts", "split_texts", "tokenizer_of", "reference_index", "reference_texts"]


def memorization(samples: Sequence[str], train: Iterable[str], test: Iterable[str] = ()) -> dict[str, float]:
    """{copy_rate, novelty, unique_rate, novel_real_rate} of ``samples`` against the train (and test) texts
    (module docstring). ValueError for no samples."""
    if not samples:
        raise ValueError("no samples")
    train_set, test_set = set(train), set(test)
    n = len(samples)
    copies = sum(s in train_set for s in samples)
    real_new = sum(s not in train_set and s in test_set for s in samples)
    return {"copy_rate": copies / n, "novelty": 1.0 - copies / n, "unique_rate": len(set(samples)) / n,
            "novel_real_rate": real_new / n}


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct character n-grams / all character n-grams of ``texts`` (0.0 when there is none)."""
    grams: Counter[str] = Counter()
    for text in texts:
        grams.update(text[i:i + n] for i in range(len(text) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def length_histogram(texts: Iterable[str], max_len: int) -> np.ndarray:
    """Counts (float64, max_len + 1 bins) of the texts' lengths in characters; longer ones in the last bin."""
    lengths = np.minimum([len(t) for t in texts], max_len).astype(np.int64)
    return np.bincount(lengths, minlength=max_len + 1).astype(np.float64)


def length_kl(p_texts: Iterable[str], q_texts: Iterable[str], max_len: int, alpha: float = KT_ALPHA) -> float:
    """KL(P || Q) in nats of the smoothed length distributions of two sets of texts (module docstring)."""
    p = length_histogram(p_texts, max_len) + alpha
    q = length_histogram(q_texts, max_len) + alpha
    p, q = p / p.sum(), q / q.sum()
    return float(max(0.0, np.sum(p * np.log(p / q))))


def corrupt(texts: Sequence[str], kind: str, rng: np.random.Generator, alphabet: Sequence[str]) -> list[str]:
    """The ``kind`` corruption (one of CORRUPTIONS) of each text, dropping texts it leaves unchanged.
    ValueError for an unknown kind or an empty alphabet with ``random``."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    chars = list(alphabet)
    if kind == "random" and not chars:
        raise ValueError("the alphabet is empty")
    out = []
    for text in texts:
        if kind == "reversed":
            new = text[::-1]
        elif kind == "shuffled":
            new = "".join(text[i] for i in rng.permutation(len(text)))
        else:
            new = "".join(chars[i] for i in rng.integers(0, len(chars), len(text)))
        if new != text:
            out.append(new)
    return out


# ---- what tokens metrics share through the EvalContext (computed once per evaluation) -----------------
def check_samples(ctx: Any, metric: str) -> None:
    """ConfigError naming evaluation.num_samples when it leaves no sample to generate."""
    if ctx.n < 1:
        from contracts.errors import ConfigError

        raise ConfigError("evaluation.num_samples", f"{metric} needs at least 1 sample: "
                                                    f"{ctx.settings['num_samples']!r} capped at the test split's "
                                                    f"{len(ctx.test[1])} texts leaves {ctx.n}")


def tokenizer_of(ctx: Any) -> Any:
    """The tokenizer of the data's vocabulary (``DataSpec.vocab`` the model was built for)."""
    from contracts.modalities.tokens import tokenizer

    return tokenizer(tuple(ctx.model.config.data.vocab))


def sample_texts(ctx: Any) -> list[str]:
    """The n generated samples (ctx.samples) as strings."""
    return ctx.shared("text:samples", lambda: tokenizer_of(ctx).decode_batch(np.asarray(ctx.samples)))


def split_texts(ctx: Any, split: str) -> list[str]:
    """Every text of the ``train`` or ``test`` split as a string."""
    return ctx.shared(f"text:{split}", lambda: tokenizer_of(ctx).decode_batch(getattr(ctx, split)[0]))


def reference_index(ctx: Any) -> np.ndarray:
    """Indices (sorted) of the n test texts the real-data floors use: a seeded random subset of the test
    split (``default_rng(evaluation.seed)``), not its first n, since a prepared split may keep its texts
    grouped by class (female, male, surnames in turn) and the first n would then be one or two classes."""
    def pick() -> np.ndarray:
        order = np.random.default_rng(ctx.seed).permutation(len(ctx.test[1]))
        return np.sort(order[:ctx.n])
    return ctx.shared("text:reference", pick)


def reference_texts(ctx: Any) -> list[str]:
    """The test texts at :func:`reference_index`."""
    texts = split_texts(ctx, "test")
    return [texts[i] for i in reference_index(ctx)]
