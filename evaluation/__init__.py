"""Evaluation: sample-quality metrics, anomaly metrics, feature extractors and plots.

Layer rule (see shared DESIGN.md): this package imports numpy / scipy / scikit-learn / torch /
matplotlib only, never ``pipelines``, mlflow or prefect. Submodules load lazily, so
``import evaluation`` is cheap and the metrics alone never pull in torch:

- ``evaluation.metrics``: FID, KID, precision/recall/density/coverage, class coverage, KL,
  mode-collapse flag (numpy / scipy / scikit-learn)
- ``evaluation.anomaly``: AUROC, AUPR, threshold at an FPR, corruptions, held-out-class split
- ``evaluation.classifier``: the domain classifier (torch) and its per-data-version cache
- ``evaluation.text_classifier``: the same for text (a character CNN over token ids)
- ``evaluation.text_metrics``: novelty/copy rate, distinct-n, length KL, text corruptions (numpy)
- ``evaluation.inception``: InceptionV3 pool3 features from a local weights file (torchvision)
- ``evaluation.plots``: PNG writers (PIL, matplotlib Agg)
"""
from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("metrics", "anomaly", "classifier", "text_classifier", "text_metrics", "inception", "plots")

# public names re-exported from the submodules, loaded on first access
_EXPORTS = {
    "fid": "metrics",
    "fid_from_stats": "metrics",
    "feature_stats": "metrics",
    "kid": "metrics",
    "prdc": "metrics",
    "class_histogram": "metrics",
    "class_coverage": "metrics",
    "class_kl": "metrics",
    "mode_collapse_report": "metrics",
    "generation_metrics": "metrics",
    "anomaly_metrics": "anomaly",
    "threshold_at_fpr": "anomaly",
    "corrupt": "anomaly",
    "corrupted_sets": "anomaly",
    "held_out_class_split": "anomaly",
    "DomainClassifier": "classifier",
    "train_classifier": "classifier",
    "load_or_train_classifier": "classifier",
    "InceptionFeatures": "inception",
    "save_image_grid": "plots",
    "save_interpolation_strip": "plots",
    "save_roc_curve": "plots",
    "save_score_histograms": "plots",
}

__all__ = [*_SUBMODULES, *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
