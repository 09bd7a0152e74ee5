"""The promotion gate's defaults per modality: the checks and primary metric `registry` starts from when
params.yaml does not list its own (`pipelines.gate.resolve_gate`). They live beside the metrics because
each modality's default metric set decides what can be checked; the pipelines layer only asks for the
data's modality (`pipelines.sources.source_modality`).

- image (`pipelines.gate.DEFAULT_CHECKS` is this list): FID ratio, PRDC coverage, class coverage, mode collapse, copy rate,
  conditional accuracy, ONNX parity), primary metric FID ratio (minimize); calibrated with the known-bad ladder
  (README, "The known-bad ladder").
- tokens: test bits per character, the Fréchet ratio on the text classifier's features, novelty and copy rate,
  conditional accuracy (conditional models), ONNX parity; primary metric bits per character (minimize);
  calibrated on the names data against the real data, a memorizer, the bigram floor and an untrained model
  (README, "Text: evaluation and gate"; the same values as params-names.yaml).
"""
from __future__ import annotations

import copy
from typing import Any

IMAGE_GATE: dict[str, Any] = {
    "checks": [
        # fid / real-vs-real floor on the domain classifier's features; calibrated on mnist5k with the known-bad
        # ladder (benchmarks/gate_ladder.py): bad rungs >= 386x or caught by other checks, default models <= 211x
        {"metric": "fid_ratio", "max": 300.0},
        {"metric": "coverage", "min": 0.05},         # PRDC coverage: 1-epoch pixelcnn 0.034-0.039, defaults >= 0.061
        {"metric": "class_coverage", "min": 0.7},
        {"metric": "mode_collapse", "max": 0},
        # memorization: share of samples nearer a train image than 1% of test images are. Every image model's
        # evaluate reports it; required: false keeps versions registered before it existed promotable (skipped,
        # with the reason)
        {"metric": "copy_rate", "max": 0.1, "required": False},
        {"metric": "conditional_accuracy", "min": 0.7, "required": False},  # only conditional models report it
        {"metric": "parity_max_abs_error", "max": 1e-4},
    ],
    "primary_metric": "fid_ratio", "direction": "minimize", "margin": 0.0,
}

TOKENS_GATE: dict[str, Any] = {
    "checks": [
        {"metric": "bits_per_char", "max": 3.4},          # bigram 3.69, lstm 3.14, gpt 3.07, untrained 8.14
        {"metric": "frechet_text_ratio", "max": 10.0},    # real 1.16, lstm 3.58, gpt 2.14, bigram 62.4, untrained 635
        {"metric": "novelty", "min": 0.3},                # real 1.0, models 0.88-0.90, memorizer 0.0
        {"metric": "copy_rate", "max": 0.7},              # = 1 - novelty for text: exact repeats of a train text
        {"metric": "conditional_accuracy", "min": 0.5, "required": False},  # real 0.80; conditional models only
        {"metric": "parity_max_abs_error", "max": 1e-4},
    ],
    "primary_metric": "bits_per_char", "direction": "minimize", "margin": 0.0,
}


GATES: dict[str, dict[str, Any]] = {"image": IMAGE_GATE, "tokens": TOKENS_GATE}


def output_modalities() -> dict[str, set[str]]:
    """Every metrics.json key a registered metric writes -> the modalities whose evaluation writes it
    ("any" for a metric of every modality)."""
    from evaluation.suite import METRICS, get_metric

    out: dict[str, set[str]] = {}
    for name in METRICS:
        metric = get_metric(name)
        for key in metric.outputs:
            out.setdefault(key, set()).add(metric.modality)
    return out


def applies(metric: str, modality: str) -> bool:
    """Whether a gate check or primary metric named `metric` can hold for data of `modality`: a key some
    metric of that modality (or of any) writes, or a key the registry records itself (not a metric's)."""
    where = output_modalities().get(metric)
    return where is None or bool(where & {modality, "any"})


def default_gate(modality: str) -> dict[str, Any]:
    """{"checks", "primary_metric", "direction", "margin"}: the gate's defaults for data of `modality`
    (a fresh copy; a modality without its own gets the image defaults)."""
    return copy.deepcopy(GATES.get(modality, IMAGE_GATE))
