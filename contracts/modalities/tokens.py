"""The tokens modality: character-level text stored as int32 N x T token ids, the same ids inside models.

Layout of one stored sample (``T = max_len + 2``): ``<bos>``, the text's tokens, ``<eos>``, then ``<pad>``
up to T. Token ids: 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>``, then one id per character seen when the
vocabulary was built (sorted by code point), then the 256 byte tokens ``<0x00>`` .. ``<0xFF>``: a character
outside the vocabulary is encoded as the tokens of its UTF-8 bytes (the byte fallback of SentencePiece,
Kudo & Richardson 2018), so any string can be encoded and scored and decoding inverts encoding exactly.

- stored -> model: int64 ids, same shape (``to_model``); model -> stored: int32 (``from_model``)
- the vocabulary is ``DataSpec.vocab`` (``meta.json: vocab``): the token strings in id order

numpy only (never torch): serving decodes with it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

SAMPLE_KEY = "tokens"        # the array name in train.npz / test.npz
FILE_SUFFIX = ".txt"         # one file per sample (`genforge generate --png` writes text files for tokens)

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def build_vocab(texts: Iterable[str]) -> tuple[str, ...]:
    """The vocabulary of `texts`: the specials, every character they use (by code point), the byte tokens."""
    chars = sorted({c for text in texts for c in text})
    return SPECIALS + tuple(chars) + BYTE_TOKENS


class Tokenizer:
    """Character-level tokenizer over a vocabulary built by ``build_vocab`` (ids as in the module docstring).

    ``encode(text)`` -> list of ids without specials; ``decode(ids)`` -> str (stops at ``<eos>``, skips
    ``<bos>``/``<pad>``, joins runs of byte tokens as UTF-8 with U+FFFD for invalid sequences).
    """

    def __init__(self, vocab: Sequence[str]):
        self.vocab = tuple(vocab)
        if self.vocab[:3] != SPECIALS or self.vocab[-256:] != BYTE_TOKENS:
            raise ValueError("a tokens vocabulary starts with <pad> <bos> <eos> and ends with the 256 byte tokens")
        self.index = {tok: i for i, tok in enumerate(self.vocab[3:-256], start=3)}
        self.byte0 = len(self.vocab) - 256

    @property
    def size(self) -> int:
        return len(self.vocab)

    @property
    def chars(self) -> tuple[str, ...]:
        return self.vocab[3:-256]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for c in text:
            i = self.index.get(c)
            if i is None:
                out.extend(self.byte0 + b for b in c.encode("utf-8"))
            else:
                out.append(i)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[str] = []
        pending = bytearray()
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            if i >= self.byte0:
                pending.append(i - self.byte0)
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            parts.append(self.vocab[i])
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)

    def encode_batch(self, texts: Sequence[str], length: int) -> np.ndarray:
        """int32 N x `length`: ``<bos>`` ids ``<eos>`` ``<pad>``...; ValueError naming the first text too long."""
        out = np.full((len(texts), length), PAD, dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [BOS, *self.encode(text), EOS]
            if len(ids) > length:
                raise ValueError(f"text {row} ({text[:40]!r}) needs {len(ids)} tokens, more than {length}")
            out[row, :len(ids)] = ids
        return out

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids)]


@lru_cache(maxsize=8)
def tokenizer(vocab: tuple[str, ...]) -> Tokenizer:
    """A cached ``Tokenizer`` for a vocabulary tuple (``DataSpec.vocab``)."""
    return Tokenizer(vocab)


def to_model(stored: np.ndarray) -> np.ndarray:
    """int32 N x T ids -> int64 N x T (the dtype embedding layers take)."""
    return stored.astype(np.int64)


def from_model(x: np.ndarray) -> np.ndarray:
    """Model output ids N x T -> int32 N x T."""
    return np.asarray(x).astype(np.int32)


def check_stored(samples: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """Why stored samples do not have the layout of the spec (None when they do): N x T."""
    if samples.ndim != 2 or tuple(samples.shape[1:]) != tuple(shape):
        return f"expected N x {' x '.join(map(str, shape))} token ids, got {list(samples.shape)}"
    return None


def to_records(samples: np.ndarray, labels: np.ndarray, vocab: Sequence[str],
               class_names: Sequence[str] = ()) -> list[dict]:
    """Samples as JSON-ready records, in order: ``{"label": int | None, "class": str | None, "text": str}``
    (label -1 or no classes: None). What JSONL shards, the pyfunc model and the model card show."""
    tok = tokenizer(tuple(vocab))
    out = []
    for ids, label in zip(np.asarray(samples), np.asarray(labels)):
        label = int(label)
        known = 0 <= label < len(class_names)
        out.append({"label": label if label >= 0 else None, "class": class_names[label] if known else None,
                    "text": tok.decode(ids)})
    return out
