"""Token data for the text-family tests until the `names` source is in: a few census names per class, encoded
as the tokens modality stores them (TEXT.md: <bos> ids <eos> <pad>..., classes female, male, surname)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from contracts.data import DataSpec
from contracts.modalities.tokens import build_vocab, tokenizer

CLASSES = ("female", "male", "surname")
FILES = ("dist.female.first", "dist.male.first", "dist.all.last")


@lru_cache(maxsize=4)
def names_tokens(per_class: int = 32, length: int = 12) -> tuple[DataSpec, np.ndarray, np.ndarray]:
    """(spec, int64 N x length ids, int64 N labels): the `per_class` most common names of each class that fit."""
    import names

    root = Path(names.__file__).parent
    texts, labels = [], []
    for k, f in enumerate(FILES):
        rows = [line.split()[0].lower() for line in (root / f).read_text().splitlines() if line.strip()]
        rows = [r for r in rows if len(r) <= length - 2][:per_class]
        texts += rows
        labels += [k] * len(rows)
    vocab = build_vocab(texts)
    spec = DataSpec(modality="tokens", shape=(length,), dtype="int32", value_range=(0, len(vocab) - 1),
                    num_classes=3, class_names=CLASSES, vocab=vocab)
    x = tokenizer(vocab).encode_batch(texts, length).astype(np.int64)
    return spec, x, np.asarray(labels, dtype=np.int64)
