"""The names data for the text benchmarks, as `genforge stage prepare` stores it (source `names`:
pipelines/text_sources.py, its fixed split: 10 % of each class's distinct names in test)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from contracts.data import DataSpec


@lru_cache(maxsize=1)
def names_arrays() -> tuple[DataSpec, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(spec, train ids int64 N x T, train labels, test ids, test labels) of the names source."""
    from pipelines.text_sources import load_names

    raw = load_names()
    spec = DataSpec(modality="tokens", shape=(raw.train_images.shape[1],), dtype="int32",
                    value_range=(0, len(raw.vocab) - 1), num_classes=len(raw.class_names),
                    class_names=tuple(raw.class_names), vocab=tuple(raw.vocab))
    return (spec, raw.train_images.astype(np.int64), raw.train_labels.astype(np.int64),
            raw.test_images.astype(np.int64), raw.test_labels.astype(np.int64))
