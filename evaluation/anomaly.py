"""Anomaly-detection evaluation: AUROC / AUPR, an operating threshold at a chosen false-positive
rate, corruption builders for synthetic anomaly sets, and the held-out-class split.

Scores follow the model contract: higher = more anomalous. Anomalies are the positive class.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "CORRUPTIONS",
    "anomaly_metrics",
    "roc_points",
    "threshold_at_fpr",
    "corrupt",
    "corrupted_sets",
    "held_out_class_split",
]

CORRUPTIONS = ("noise", "inversion", "occlusion")


def _scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def threshold_at_fpr(normal_scores: Any, fpr: float = 0.05) -> float:
    """Score threshold such that at most ``fpr`` of these normal scores lie strictly above it.

    The ``1 - fpr`` quantile of the normal scores, taken as an observed score
    (``method="higher"``); a sample is flagged anomalous when its score > threshold.
    """
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must lie in [0, 1), got {fpr}")
    s = _scores(normal_scores, "normal_scores")
    return float(np.quantile(s, 1.0 - fpr, method="higher"))


def anomaly_metrics(
    scores_normal: Any,
    scores_anomalous: Any,
    fpr: float = 0.05,
    threshold_scores: Any = None,
) -> dict[str, float]:
    """AUROC, AUPR and the operating point at a target false-positive rate.

    ``scores_normal`` / ``scores_anomalous``: anomaly scores of the normal and anomalous test
    samples (higher = more anomalous). The threshold is the ``1 - fpr`` quantile of held-out
    normal scores: ``threshold_scores`` when given (e.g. a validation split, so the operating
    point is not fitted on the test set), else ``scores_normal``.

    Returns ``auroc``, ``aupr`` (average precision, anomalies positive), ``threshold``,
    ``tpr_at_threshold`` (share of anomalies with score > threshold), ``fpr_at_threshold``
    (share of test normals with score > threshold, the realised FPR), ``fpr_target``,
    ``n_normal``, ``n_anomalous``.
    """
    normal = _scores(scores_normal, "scores_normal")
    anomalous = _scores(scores_anomalous, "scores_anomalous")
    y_true = np.concatenate([np.zeros(normal.size), np.ones(anomalous.size)])
    y_score = np.concatenate([normal, anomalous])
    held_out = normal if threshold_scores is None else _scores(threshold_scores, "threshold_scores")
    threshold = threshold_at_fpr(held_out, fpr)
    return {
        "auroc": float(roc_auc_score(y_true, y_score)),
        "aupr": float(average_precision_score(y_true, y_score)),
        "threshold": threshold,
        "tpr_at_threshold": float((anomalous > threshold).mean()),
        "fpr_at_threshold": float((normal > threshold).mean()),
        "fpr_target": float(fpr),
        "n_normal": int(normal.size),
        "n_anomalous": int(anomalous.size),
    }


def roc_points(scores_normal: Any, scores_anomalous: Any, digits: int = 6) -> list[dict[str, float]]:
    """The ROC curve as data: ``[{"fpr": f, "tpr": t}, ...]`` from (0, 0) to (1, 1), anomalies positive,
    higher score = more anomalous. Only the corners of the staircase are kept (``roc_curve(drop_intermediate=True)``):
    at most one row per distinct score plus the origin; rates are rounded to ``digits`` decimals.
    Raises ValueError for empty or non-finite scores."""
    from sklearn.metrics import roc_curve

    normal = _scores(scores_normal, "scores_normal")
    anomalous = _scores(scores_anomalous, "scores_anomalous")
    y_true = np.concatenate([np.zeros(normal.size), np.ones(anomalous.size)])
    fpr, tpr, _ = roc_curve(y_true, np.concatenate([normal, anomalous]), drop_intermediate=True)
    return [{"fpr": round(float(f), digits), "tpr": round(float(t), digits)} for f, t in zip(fpr, tpr)]


def _as_float01(images: Any) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be N x C x H x W, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be float in [0, 1] (or uint8), got {x.dtype}")
    return x


def corrupt(
    images: Any,
    kind: str,
    rng: np.random.Generator,
    *,
    noise_std: float = 0.5,
    patch_frac: float = 0.5,
    fill: float = 1.0,
) -> np.ndarray:
    """A corrupted copy of ``images`` (float in [0, 1], ``N x C x H x W``; uint8 is scaled).

    ``noise``: add N(0, noise_std^2) per pixel, clip to [0, 1]. ``inversion``: 1 - x.
    ``occlusion``: one square patch per image, side ``round(patch_frac * min(H, W))``, at a random
    position, set to ``fill``. Deterministic given the state of the numpy Generator ``rng``.
    The output keeps the input's float dtype (float32 for uint8 input).
    """
    x = _as_float01(images)
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed))")
    if kind == "noise":
        noisy = x + rng.normal(0.0, noise_std, size=x.shape)
        return np.clip(noisy, 0.0, 1.0).astype(x.dtype, copy=False)
    if kind == "inversion":
        return (1.0 - x).astype(x.dtype, copy=False)
    if kind == "occlusion":
        n, _, h, w = x.shape
        side = int(round(patch_frac * min(h, w)))
        side = min(max(side, 1), h, w)
        out = x.copy()
        tops = rng.integers(0, h - side + 1, size=n)
        lefts = rng.integers(0, w - side + 1, size=n)
        for i in range(n):
            out[i, :, tops[i] : tops[i] + side, lefts[i] : lefts[i] + side] = fill
        return out
    raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")


def corrupted_sets(
    images: Any, kinds: tuple[str, ...] = CORRUPTIONS, seed: int = 0, **kwargs: Any
) -> dict[str, np.ndarray]:
    """``{kind: corrupt(images, kind, rng)}`` for each kind, one seeded Generator per kind (so a
    set does not change when another kind is added or removed)."""
    out = {}
    for i, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, CORRUPTIONS.index(kind) if kind in CORRUPTIONS else 100 + i])
        out[kind] = corrupt(images, kind, rng, **kwargs)
    return out


def held_out_class_split(
    images: Any, labels: Any, anomaly_classes: int | list[int] | tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Split a labelled set for the one-class protocol: the ``anomaly_classes`` are anomalies.

    Returns ``normal_images, normal_labels, anomalous_images, anomalous_labels`` (order kept).
    Apply it to the train split (train the model on ``normal_images`` only) and to the test
    split (score both parts).
    """
    x = np.asarray(images)
    y = np.asarray(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    held = np.atleast_1d(np.asarray(anomaly_classes))
    mask = np.isin(y, held)
    if not mask.any():
        raise ValueError(f"no sample has a label in {held.tolist()}")
    if mask.all():
        raise ValueError("every sample is in the anomaly classes; nothing normal is left")
    return {
        "normal_images": x[~mask],
        "normal_labels": y[~mask],
        "anomalous_images": x[mask],
        "anomalous_labels": y[mask],
    }
