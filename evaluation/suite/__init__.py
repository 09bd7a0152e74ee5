"""The metric registry: one table of every metric `genforge stage evaluate` can run (torch-free at import).

``METRICS`` maps a metric name to ``"module:Class"`` (a :class:`~evaluation.suite.base.Metric`); modules
import on first use, like ``genmodels.FAMILIES``. ``params.yaml: evaluation.metrics`` picks a list of these
names; null runs :func:`default_metrics` of the data's modality, in table order.

Adding a metric: write ``evaluation/suite/<name>.py`` with one ``Metric`` subclass (name, modality, needs,
outputs, settings, compute) and add its line to ``METRICS``.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from contracts.errors import ConfigError
from evaluation.suite.base import CONTEXT_SETTINGS, EvalContext, Metric, Skip, to_model_input

# name -> "module:Class"; the order is the order they run in and the order of metrics.json
METRICS: dict[str, str] = {
    "fid": "evaluation.suite.fid:FID",
    "kid": "evaluation.suite.kid:KID",
    "prdc": "evaluation.suite.prdc:PRDC",
    "class_coverage": "evaluation.suite.class_coverage:ClassCoverage",
    "class_kl": "evaluation.suite.class_kl:ClassKL",
    "mode_collapse": "evaluation.suite.mode_collapse:ModeCollapse",
    "copy_rate": "evaluation.suite.copy_rate:CopyRate",
    "classifier_accuracy": "evaluation.suite.classifier_accuracy:ClassifierAccuracy",
    "conditional_accuracy": "evaluation.suite.conditional_accuracy:ConditionalAccuracy",
    "sample_grid": "evaluation.suite.sample_grid:SampleGrid",
    "nll": "evaluation.suite.nll:NLL",
    "interpolation": "evaluation.suite.interpolation:Interpolation",
    "latent_traversal": "evaluation.suite.latent_traversal:LatentTraversal",
    "anomaly": "evaluation.suite.anomaly:Anomaly",
    "fid_inception": "evaluation.suite.fid_inception:FIDInception",
    # the tokens modality (text)
    "bits_per_char": "evaluation.suite.bits_per_char:BitsPerChar",
    "frechet_text": "evaluation.suite.frechet_text:FrechetText",
    "novelty": "evaluation.suite.novelty:Novelty",
    "distinct_n": "evaluation.suite.distinct_n:DistinctN",
    "length_kl": "evaluation.suite.length_kl:LengthKL",
    "text_anomaly": "evaluation.suite.text_anomaly:TextAnomaly",
    "sample_table": "evaluation.suite.sample_table:SampleTable",
}

# the headline outputs: `registry show` columns and the values `evaluate` returns (rounded)
# the main metrics of `genforge registry show`, the flow's summary and the review: a column appears when a
# version has the metric (images: the FID family; tokens: bits/char, the Fréchet text ratio, novelty)
SHOW_OUTPUTS = ("fid", "fid_real_floor", "fid_ratio", "coverage", "recall", "class_coverage", "mode_collapse",
                "bits_per_char", "frechet_text_ratio", "novelty", "conditional_accuracy")
HEADLINE_OUTPUTS = tuple(dict.fromkeys((*SHOW_OUTPUTS, "anomaly_auroc", "nll_nats", "conditional_accuracy",
                                        "bits_per_char", "frechet_text", "frechet_text_real_floor",
                                        "frechet_text_ratio", "novelty")))


def closest(word: str, known: Any) -> str:
    """" (did you mean 'x'?)" for the closest of ``known``, or "" when nothing is close."""
    match = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def get_metric(name: str) -> type[Metric]:
    """The Metric class registered as ``name``. Raises ConfigError(evaluation.metrics) when unknown."""
    if name not in METRICS:
        raise ConfigError("evaluation.metrics", f"unknown metric {name!r}{closest(name, METRICS)}; "
                                                f"known: {', '.join(METRICS)}")
    module, cls = METRICS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def default_metrics(modality: str) -> list[str]:
    """The metrics that run when ``evaluation.metrics`` is null: every default metric of ``modality`` or
    of any modality, in table order."""
    return [n for n in METRICS if get_metric(n).default and get_metric(n).modality in (modality, "any")]


def metric_outputs() -> dict[str, str]:
    """Every metrics.json key a registered metric may write -> the (first, in table order) metric that writes
    it. Metrics of different modalities may share a key (``copy_rate``, ``anomaly_auroc``): one gate check
    then applies to both."""
    out: dict[str, str] = {}
    for name in METRICS:
        for key in get_metric(name).outputs:
            out.setdefault(key, name)
    return out


def summary_outputs() -> dict[str, str]:
    """The metrics.json keys a reviewer compares between commits -> the metric that writes them: each registered
    metric's ``summary`` (None: all its ``outputs``), in table order. The DVC metrics summary holds those of
    them a run wrote as numbers (pipelines.versioned)."""
    out: dict[str, str] = {}
    for name in METRICS:
        metric = get_metric(name)
        for key in metric.outputs if metric.summary is None else metric.summary:
            out.setdefault(key, name)
    return out


def default_settings() -> dict[str, Any]:
    """The ``evaluation.*`` defaults: the context's plus each metric's ``settings`` (a fresh deep copy)."""
    import copy

    out = copy.deepcopy(CONTEXT_SETTINGS)
    for name in METRICS:
        for key, value in get_metric(name).settings.items():
            out.setdefault(key, copy.deepcopy(value))
    return out


def selected_metrics(names: Any, modality: str) -> list[str]:
    """``evaluation.metrics`` checked: a list of registered names (null -> the modality's defaults).
    Raises ConfigError naming ``evaluation.metrics`` for a non-list, an unknown name (with a closest
    match) or a repeated name."""
    if names is None:
        return default_metrics(modality)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError("evaluation.metrics", f"expected a list of metric names or null, got {names!r}")
    for name in names:
        get_metric(name)
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError("evaluation.metrics", f"listed twice: {', '.join(repeated)}")
    return list(names)


__all__ = ["METRICS", "SHOW_OUTPUTS", "HEADLINE_OUTPUTS", "EvalContext", "Metric", "Skip", "closest",
           "default_metrics", "default_settings", "get_metric", "metric_outputs", "selected_metrics",
           "summary_outputs",
           "to_model_input"]
