"""Memorization: the share of generated samples closer to a training image than real unseen images are.

For each generated sample the Euclidean distance to its nearest TRAINING image is compared with the
distribution of the same distance for the held-out TEST images (the first n of them, the N the generation
metrics use): ``copy_rate`` is the share of samples whose nearest-training-image distance is at most the
``evaluation.copy_rate.percentile``-th percentile (default 1) of the test images' distances. A model that
generalises as well as the test split scores about ``percentile / 100`` (0.01); a model that replays its
training images scores 1; noise scores 0. ``copy_threshold`` is that distance and
``copy_median_distance`` the samples' median nearest-training-image distance.

Feature space: pixels in [0, 1] (uint8 / 255, the model's input range), L2. Copies are a pixel-level
property: an exact or near-exact replay of a training image is at distance ~0 in pixel space whatever any
feature extractor does, while a learned embedding (the domain classifier's, Inception's) also maps two
different images of the same class close together, which would count every good sample as a "copy".
Carlini et al. 2023 ("Extracting Training Data from Diffusion Models", USENIX Security) call a generated
image memorized when it lies within a small pixel-space L2 distance of a training image, for the same
reason; Meehan et al. 2020 ("A Non-Parametric Test to Detect Data-Copying in Generative Models", AISTATS)
compare generated-to-train with test-to-train nearest distances, the reference distribution used here.
The known weakness of pixel L2 (smooth, blurry images sit closer to many images than sharp ones) is why the
threshold is a low percentile of the real test distances: measured on mnist5k (N = 1,000), the test
images' 1st percentile is 1.75 while blurred test images (sigma 1.5 px) have a median of 5.05 and a
2-epoch VAE's blurry samples 6.33 (copy_rate 0.0 for both); replayed training images with noise of std
0.02 sit at 0.42 (copy_rate 1.0).

Cost: chunked matrix products in float64, ``n x n_train x d`` multiply-adds for the samples and the same
for the test images (1,000 x 4,000 x 784: about 0.5 s on one core), memory bounded by the block sizes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.suite.base import EvalContext, Metric, Result, to_model_input

FEATURES = "pixels in [0, 1], L2 (Carlini et al. 2023; Meehan et al. 2020)"
BLOCK_ELEMENTS = 1 << 22  # float64 entries of one distance block (32 MiB)


def _flat64(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(len(x), -1))


def nearest_distances(query: np.ndarray, reference: Any, block_rows: int | None = None,
                      block_refs: int | None = None) -> np.ndarray:
    """Euclidean distance (float64, length len(query)) from each row of ``query`` (N x ... floats) to its
    nearest row of ``reference`` (M x ... floats, or a callable ``(start, stop) -> rows`` when converting all
    of it at once would not fit). Deterministic: blocks of ``block_rows`` queries x ``block_refs`` references
    (default: ~BLOCK_ELEMENTS entries a block) by ``|a|^2 + |b|^2 - 2ab`` in float64, then the distance to
    each query's nearest reference recomputed directly (exact copies give exactly 0). Raises ValueError when
    the row sizes differ or the reference is empty."""
    q = _flat64(query)
    get = reference if callable(reference) else (lambda start, stop, r=reference: r[start:stop])
    n_ref = reference.n if callable(reference) else len(reference)
    if n_ref == 0:
        raise ValueError("the reference set is empty")
    block_refs = int(block_refs or max(1, min(n_ref, BLOCK_ELEMENTS // max(1, min(len(q), 1024)))))
    block_rows = int(block_rows or max(1, BLOCK_ELEMENTS // block_refs))
    best = np.full(len(q), np.inf)
    best_idx = np.zeros(len(q), dtype=np.int64)
    q_sq = np.einsum("ij,ij->i", q, q)
    for r0 in range(0, n_ref, block_refs):
        ref = _flat64(get(r0, min(r0 + block_refs, n_ref)))
        if ref.shape[1] != q.shape[1]:
            raise ValueError(f"query rows have {q.shape[1]} values, reference rows {ref.shape[1]}")
        r_sq = np.einsum("ij,ij->i", ref, ref)
        for q0 in range(0, len(q), block_rows):
            d2 = q_sq[q0:q0 + block_rows, None] + r_sq[None, :] - 2.0 * (q[q0:q0 + block_rows] @ ref.T)
            idx = d2.argmin(axis=1)
            val = d2[np.arange(len(idx)), idx]
            better = val < best[q0:q0 + block_rows]
            best[q0:q0 + block_rows][better] = val[better]
            best_idx[q0:q0 + block_rows][better] = idx[better] + r0
    # the nearest reference's distance, computed directly (no cancellation), one reference block at a time
    out = np.empty(len(q))
    for r0 in range(0, n_ref, block_refs):
        rows = np.flatnonzero((best_idx >= r0) & (best_idx < r0 + block_refs))
        if len(rows):
            ref = _flat64(get(r0, min(r0 + block_refs, n_ref)))
            out[rows] = np.sqrt(((q[rows] - ref[best_idx[rows] - r0]) ** 2).sum(axis=1))
    return out


class _Train:
    """The train split as [0, 1] floats, converted one block at a time (never all of it in float64)."""

    def __init__(self, x: np.ndarray, modality: str):
        self.x, self.modality, self.n = x, modality, len(x)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return to_model_input(self.x[start:stop], self.modality)


def copy_rate(sample_nn: np.ndarray, test_nn: np.ndarray, percentile: float) -> dict[str, float]:
    """{copy_rate, copy_threshold, copy_median_distance} from the samples' and the test images'
    nearest-training-image distances (1-D arrays; ``percentile`` in (0, 100), numpy's linear rule)."""
    threshold = float(np.percentile(test_nn, percentile))
    return {"copy_rate": float(np.mean(sample_nn <= threshold)), "copy_threshold": threshold,
            "copy_median_distance": float(np.median(sample_nn))}


def check_percentile(value: Any) -> float:
    """``evaluation.copy_rate.percentile`` as a float in (0, 100); ConfigError naming it otherwise."""
    from contracts.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
        raise ConfigError("evaluation.copy_rate.percentile", f"expected a number in (0, 100), got {value!r} "
                                                             f"(1: the 1st percentile of the test images' "
                                                             f"nearest-training-image distances)")
    return float(value)


class CopyRate(Metric):
    name = "copy_rate"
    modality = "image"
    needs = frozenset({"samples"})
    outputs = ("copy_rate", "copy_threshold", "copy_median_distance")
    summary = ("copy_rate",)  # the threshold is the data's (test vs train), the median distance is in metrics.json
    settings = {"copy_rate": {"percentile": 1.0}}

    def check(self, ctx: EvalContext) -> None:
        check_percentile(ctx.settings["copy_rate"]["percentile"])

    def compute(self, ctx: EvalContext) -> Result:
        percentile = check_percentile(ctx.settings["copy_rate"]["percentile"])
        train = _Train(ctx.train[0], ctx.modality)
        test = to_model_input(ctx.test[0][:ctx.n], ctx.modality)
        samples = ctx.samples
        if samples.shape[1:] != test.shape[1:]:
            from contracts.errors import DataError

            raise DataError(f"copy_rate: samples are {'x'.join(map(str, samples.shape[1:]))}, the data's images "
                            f"{'x'.join(map(str, test.shape[1:]))}")
        sample_nn, test_nn = nearest_distances(samples, train), nearest_distances(test, train)
        values = copy_rate(sample_nn, test_nn, percentile)
        setting = {"percentile": percentile, "features": FEATURES, "n_test": len(test), "n_train": train.n,
                   "compared": "each sample's nearest training image vs the test images' (first n)"}
        return {"copy_rate": (values["copy_rate"], {**setting, "definition": "share of samples with nearest-train "
                                                    "distance <= copy_threshold"}),
                "copy_threshold": (values["copy_threshold"], {**setting, "definition": f"{percentile:g}th percentile "
                                                              "of the test images' nearest-train distances"}),
                "copy_median_distance": (values["copy_median_distance"], {**setting, "definition": "median of the "
                                                                          "samples' nearest-train distances"})}
