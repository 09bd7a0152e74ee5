"""The params.yaml schema: every section as a typed settings object, checked before any stage starts.

`validate_settings(params)` builds a `Settings` from the raw params dict (as `pipelines.config.load_params`
returns it, YAML 1.2 numbers) and raises `ConfigError` naming the dotted key for the first problem:
an unknown key (with the known ones and the closest match), a wrong type (with the value) or a value out
of range. The CLI (`pipelines.cli._params`) and the flows (`retrain`, `scheduled_retrain`) call it first;
`pipelines.train.plan_training` calls it again with the prepared data's meta.json, which is when the checks
against the data (holdout classes within num_classes, enough test images for PRDC) can run.

Stages still read the raw dict; the objects here are what they will read once they move over.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.errors import ConfigError
from evaluation.suite.base import too_few_samples
from pipelines.settings.models import TRAIN_OVERRIDES, ModelSettings, check_family, family_fields, known_families
from pipelines.settings.schema import build, closest, did_you_mean, mapping, unknown
from pipelines.settings.sections import (CheckSettings, DataSettings, EvaluationSettings,
                                         RegistrySettings, TrainSettings, ValidationSettings, known_metric_names,
                                         known_metric_outputs)


@dataclass(frozen=True)
class Settings:
    """All of params.yaml, checked. Sections absent from the file hold their defaults."""

    data: DataSettings = field(default_factory=DataSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)


SECTIONS = ("data", "validation", "train", "model", "evaluation", "registry")


def validate_settings(params: Mapping[str, Any], root: Path | None = None,
                      meta: Mapping[str, Any] | None = None) -> Settings:
    """Check every section of `params`; returns the typed `Settings`.

    `meta` (a prepared data set's meta.json: `num_classes`, `counts`) adds the checks against the data; with
    `root` instead, they run when `data/prepared/<data.name>/meta.json` exists under it.
    Raises ConfigError(dotted key, problem) for the first problem found.
    """
    raw = mapping("params", params)
    for name in raw:
        if name not in SECTIONS:
            raise unknown(str(name), str(name), SECTIONS, "section")
    settings = Settings(
        data=build(DataSettings, raw.get("data"), "data"),
        validation=build(ValidationSettings, raw.get("validation"), "validation"),
        train=build(TrainSettings, raw.get("train"), "train"),
        model=ModelSettings.from_dict(raw.get("model"), "model"),
        evaluation=build(EvaluationSettings, raw.get("evaluation"), "evaluation"),
        registry=RegistrySettings.from_dict(raw.get("registry"), "registry", known_families()),
    )
    _check_gates(raw.get("registry"), settings.model.families)
    _check_text(settings.data)
    v = settings.validation
    if v.pixel_min > v.pixel_max:
        raise ConfigError("validation.pixel_min", f"{v.pixel_min} is above validation.pixel_max {v.pixel_max}")
    if meta is None and root is not None:
        meta = _prepared_meta(params, root)
    if meta is not None:
        check_against_data(settings, meta)
    return settings


def _check_text(data: DataSettings) -> None:
    """`data.text` settings that would be ignored are errors: windows (and their stride, labelled lines) are
    read from `text:<path>` sources only, and a stride needs a window."""
    text = data.text
    if text.stride is not None and text.window is None:
        raise ConfigError("data.text.stride", f"{text.stride} needs data.text.window (the stride is between windows)")
    if not str(data.source).startswith("text:"):
        for key, value, default in (("window", text.window, None), ("labelled", text.labelled, "auto")):
            if value != default:
                raise ConfigError(f"data.text.{key}", f"applies to text:<path> sources only, and data.source is "
                                                      f"{data.source!r}; remove it or use a text: source")


def _check_gates(registry: Any, families: tuple[str, ...]) -> None:
    """The gate each family would run, resolved now (pipelines.gate.resolve_gate): a legacy key that
    conflicts with an explicit check, or a per-family override that does not resolve, fails before any stage."""
    from pipelines.gate import resolve_gate

    for family in (None, *families):
        resolve_gate(dict(registry or {}), family)


def _prepared_meta(params: Mapping[str, Any], root: Path) -> dict[str, Any] | None:
    from pipelines.prepare import prepared_dir

    path = prepared_dir(Path(root), dict(params)) / "meta.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None  # a broken meta.json is the validate stage's to report


def check_against_data(settings: Settings, meta: Mapping[str, Any]) -> None:
    """The checks that need the prepared data: `train.holdout_classes` within 0..num_classes-1 (and not all
    of them), and PRDC's nearest_k below the evaluated sample count (num_samples capped at the test split)."""
    num_classes = int(meta.get("num_classes") or 0)
    holdout = settings.train.holdout_classes or ()
    if num_classes:
        outside = [c for c in holdout if c >= num_classes]
        if outside:
            raise ConfigError("train.holdout_classes", f"{outside} outside the data's classes 0..{num_classes - 1}")
        if len(set(holdout)) >= num_classes:
            raise ConfigError("train.holdout_classes", f"holds out all {num_classes} classes; nothing left to train on")
    n_test = (meta.get("counts") or {}).get("test")
    problem = too_few_samples(settings.evaluation.num_samples, n_test) if isinstance(n_test, int) else None
    if problem:
        raise ConfigError("evaluation.num_samples", problem)


__all__ = ["CheckSettings", "DataSettings", "EvaluationSettings", "ModelSettings", "RegistrySettings", "Settings",
           "TRAIN_OVERRIDES", "TrainSettings", "ValidationSettings", "check_against_data", "check_family", "closest",
           "did_you_mean", "family_fields", "known_families", "known_metric_names", "known_metric_outputs",
           "validate_settings"]
