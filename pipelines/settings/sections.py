"""Typed settings of the params.yaml sections `data`, `validation`, `train`, `evaluation` and `registry`.

Defaults equal the ones the stages apply today (`pipelines.validate.DEFAULTS`, with the tokens modality's
`VALIDATION_DEFAULTS`, `pipelines.evaluate.DEFAULTS`, `pipelines.registry.GATE_DEFAULTS`; tests/test_settings.py
fails when they drift). `model` lives in
`pipelines.settings.models` because it depends on the family registry.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from contracts.errors import ConfigError
from evaluation.suite.base import NEAREST_K  # PRDC's k in evaluate (a torch-free import)
from pipelines.settings.schema import check_partial, did_you_mean, join, mapping, setting, unknown

ANOMALY_KINDS = ("noise", "inversion", "occlusion")  # evaluation/anomaly.py corrupt(); plus holdout_classes


def known_metric_outputs() -> frozenset[str]:
    """The names `registry.primary_metric` and `registry.checks[*].metric` may use: every output key a
    registered metric declares (evaluation.suite) plus the registry-side ones (`parity_max_abs_error`)."""
    from pipelines.gate import known_metrics

    return frozenset(known_metrics())


def known_metric_names() -> frozenset[str]:
    """Names `evaluation.metrics` may list: the metric registry's (`evaluation.suite.METRICS`)."""
    from evaluation.suite import METRICS

    return frozenset(METRICS)


def _metric_name(what: str, known=known_metric_outputs):
    def check(value: str) -> str | None:
        names = known()
        return None if value in names else f"unknown {what} {value!r}{did_you_mean(value, names)}"
    return check


def _dataset_name(value: str | None) -> str | None:
    from pipelines.prepare import SAFE_NAME

    if value is None or (SAFE_NAME.match(value) and ".." not in value):
        return None
    return (f"{value!r} must be a plain folder name (letters, digits, . _ -); it names data/prepared/<name>/ "
            f"and may not leave that folder")


TEXT_ANOMALY_KINDS = ("shuffled", "random", "reversed", "holdout_classes")  # evaluation/suite/text_anomaly.py
SAMPLE_LABEL_RULES = ("auto", "in_turn", "proportional")  # evaluation/suite/base.py LABEL_RULES


def _one_of(known: tuple[str, ...], what: str):
    def check(value: str) -> str | None:
        return None if value in known else f"unknown {what} {value!r}{did_you_mean(value, known)}"
    return check


def _anomaly_kind(value: str) -> str | None:
    if value in ANOMALY_KINDS:
        return None
    return f"unknown corruption {value!r}{did_you_mean(value, ANOMALY_KINDS)}"


def _device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return None
    return f"{value!r} is not a device{did_you_mean(value, ('auto', 'cpu', 'cuda'))}; also cuda:<index>"


def _parsed_by(parse):
    def check(value: Any) -> str | None:
        try:
            parse(value)
        except ValueError as exc:
            return str(exc)
        return None
    return check


def _background(value: Any) -> str | None:
    from pipelines.images import background_rgb

    return _parsed_by(background_rgb)(value)


def _image_size(value: Any) -> str | None:
    from pipelines.images import size_hw

    return _parsed_by(size_hw)(value)


@dataclass(frozen=True)
class TextSettings:
    """`data.text`: how `text:<path>` files become samples (pipelines/text_sources.py); `names` reads max_len."""

    max_len: Optional[int] = setting(None, ge=1)  # characters per sample; null: the longest line (at most 256)
    window: Optional[int] = setting(None, ge=1)   # cut running text into windows of this many characters
    stride: Optional[int] = setting(None, ge=1)   # characters between window starts; null: window (no overlap)
    labelled: Literal["auto", True, False] = "auto"  # `label<TAB>text` lines; auto: when every line has a tab
    lowercase: Optional[bool] = None              # null: true for names (as makemore), false for text:


@dataclass(frozen=True)
class DataSettings:
    """`data`: where the data comes from, how `folder:` image files are decoded (pipelines/images.py), how text
    becomes samples (`text`, pipelines/text_sources.py) and how the data is split (pipelines/prepare.py)."""

    source: str = "mnist5k"
    name: Optional[str] = setting(None, check=_dataset_name)
    test_fraction: float = setting(0.2, gt=0, lt=1)
    seed: int = setting(0, ge=0)
    # transparency is composited onto this: a grey level 0..255, [r, g, b], or a colour name / '#rrggbb'
    background: Any = setting(255, check=_background)
    channels: Literal["auto", 1, 3] = "auto"
    image_size: Any = setting(None, check=_image_size)  # null (sizes must agree), N, or [height, width]
    resize: Literal["resize", "center_crop", "pad"] = "resize"
    follow_symlinks: bool = False
    text: TextSettings = field(default_factory=TextSettings)


@dataclass(frozen=True)
class TokensValidationSettings:
    """`validation.tokens`: thresholds for tokens (text) data, laid over the top level of `validation` when the
    prepared data's modality is tokens (contracts/modalities/tokens.py: expectations). Lengths in characters."""

    min_length: int = setting(1, ge=0)
    max_length: Optional[int] = setting(None, ge=1)      # null: what the stored layout holds (max_len)
    max_duplicate_rate: float = setting(0.05, ge=0, le=1)  # rows repeating an earlier row's text, per split
    min_vocab_coverage: float = setting(0.99, ge=0, le=1)  # rows whose every character the train split has
    max_length_shift: float = setting(0.25, ge=0)          # test's 5/50/95 % length quantiles vs train's, relative
    min_class_share: float = setting(0.01, ge=0, le=1)     # replaces validation.min_class_share for text


@dataclass(frozen=True)
class ValidationSettings:
    """`validation`: thresholds of the data checks (pipelines/validate.py); `tokens` holds the text ones."""

    min_train_samples: int = setting(1000, ge=0)
    min_test_samples: int = setting(100, ge=0)
    min_class_share: float = setting(0.05, ge=0, le=1)
    max_leaked_images: int = setting(0, ge=0)
    pixel_min: float = 0
    pixel_max: float = 255
    tokens: TokensValidationSettings = field(default_factory=TokensValidationSettings)


@dataclass(frozen=True)
class TrainSettings:
    """`train`: shared training settings; epochs/batch_size/log_every may be overridden per family in
    `model.<family>`; epochs and batch_size unset here keep each family's tuned default."""

    seed: int = setting(0, ge=0)
    device: str = setting("auto", check=_device)
    log_every: int = setting(20, ge=1)
    holdout_classes: Optional[tuple[int, ...]] = setting(default_factory=tuple, ge=0)
    # None here only means "not set" (the family's default); an explicit null is refused, as the trainer
    # would take it for a value
    epochs: int = setting(None, ge=1)
    batch_size: int = setting(None, ge=1)


@dataclass(frozen=True)
class ClassifierSettings:
    epochs: int = setting(8, ge=1)


@dataclass(frozen=True)
class ModeCollapseSettings:
    coverage_threshold: float = setting(0.7, ge=0, le=1)
    kl_threshold: float = setting(0.5, ge=0)
    recall_threshold: float = setting(0.2, ge=0, le=1)
    min_share: Optional[float] = setting(None, gt=0, le=1)


@dataclass(frozen=True)
class AnomalySettings:
    kinds: tuple[str, ...] = setting(ANOMALY_KINDS, check=_anomaly_kind)
    fpr: float = setting(0.05, gt=0, lt=1)
    max_images: int = setting(500, ge=2)


@dataclass(frozen=True)
class CopyRateSettings:
    percentile: float = setting(1.0, gt=0, lt=100)


@dataclass(frozen=True)
class BitsPerCharSettings:
    max_texts: Optional[int] = setting(None, ge=1)   # null: every test text
    batch_size: int = setting(500, ge=1)


@dataclass(frozen=True)
class TextAnomalySettings:
    kinds: tuple[str, ...] = setting(("shuffled", "random", "reversed"),
                                     check=_one_of(TEXT_ANOMALY_KINDS, "text corruption"))
    fpr: float = setting(0.05, gt=0, lt=1)
    max_texts: int = setting(1000, ge=2)


@dataclass(frozen=True)
class KidSettings:
    subsets: int = setting(20, ge=1)
    subset_size: int = setting(500, ge=2)


@dataclass(frozen=True)
class EvaluationSettings:
    """`evaluation` (pipelines/evaluate.py). `num_samples` is capped at the test split; with PRDC's
    nearest_k = 5 it needs at least 6 samples."""

    num_samples: int = setting(1000, ge=NEAREST_K + 1)
    batch_size: int = setting(500, ge=1)
    seed: int = setting(0, ge=0)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    mode_collapse: ModeCollapseSettings = field(default_factory=ModeCollapseSettings)
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    nll_max_images: int = setting(500, ge=1)
    kid: KidSettings = field(default_factory=KidSettings)
    copy_rate: CopyRateSettings = field(default_factory=CopyRateSettings)
    bits_per_char: BitsPerCharSettings = field(default_factory=BitsPerCharSettings)
    text_anomaly: TextAnomalySettings = field(default_factory=TextAnomalySettings)
    sample_labels: str = setting("auto", check=_one_of(SAMPLE_LABEL_RULES, "sample label rule"))
    inception_weights: Optional[str] = None
    metrics: Optional[tuple[str, ...]] = setting(None, check=_metric_name("metric", known_metric_names))


@dataclass(frozen=True)
class CheckSettings:
    """One hard check of the promotion gate: `{metric: <name>, min: <number>}` or `{..., max: <number>}`;
    `required` unset leaves it to the gate (issue #11 item 4) what a family without the metric gets."""

    metric: str = setting(check=_metric_name("metric"))
    min: Optional[float] = None
    max: Optional[float] = None
    required: Optional[bool] = None

    @classmethod
    def from_dict(cls, values: Any, key: str) -> "CheckSettings":
        raw = mapping(key, values)
        if "metric" not in raw:
            raise ConfigError(join(key, "metric"), "missing; each check names a metric, e.g. "
                                                   "{metric: fid_ratio, max: 500}")
        check = cls(**check_partial(cls, raw, key))
        if (check.min is None) == (check.max is None):
            raise ConfigError(key, f"give exactly one of min or max for {check.metric!r}, e.g. "
                                   f"{{metric: {check.metric}, min: 0.5}}")
        return check


GATE_FIELDS = ("max_fid_ratio", "min_coverage", "min_class_coverage", "forbid_mode_collapse",
               "min_conditional_accuracy", "max_copy_rate", "max_parity_error", "primary_metric", "direction", "margin", "checks")


@dataclass(frozen=True)
class RegistrySettings:
    """`registry`: the promotion gate (pipelines/registry.py); `families.<family>` overrides any other key
    for one family (validated like the top level; see `for_family`). `approval`: `auto` moves champion when
    the gate passes, `manual` leaves a passing version awaiting a reviewer (pipelines/approval.py), for whom
    the retrain flow waits `approval_timeout` seconds (0: it does not wait)."""

    max_fid_ratio: float = setting(300.0, gt=0)
    min_coverage: float = setting(0.05, ge=0, le=1)
    min_class_coverage: float = setting(0.7, ge=0, le=1)
    forbid_mode_collapse: bool = True
    min_conditional_accuracy: float = setting(0.7, ge=0, le=1)
    max_copy_rate: float = setting(0.1, ge=0, le=1)
    max_parity_error: float = setting(1e-4, gt=0)
    primary_metric: str = setting("fid_ratio", check=_metric_name("primary metric"))
    direction: Literal["minimize", "maximize"] = "minimize"
    margin: float = setting(0.0, ge=0)
    checks: tuple[CheckSettings, ...] = ()
    approval: Literal["auto", "manual"] = "auto"
    approval_timeout: int = setting(3600, ge=0)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Any, key: str, families: frozenset[str]) -> "RegistrySettings":
        raw = dict(mapping(key, values))
        checks = _checks(raw.pop("checks", None), join(key, "checks"))
        overrides = {}
        for family, section in mapping(join(key, "families"), raw.pop("families", None)).items():
            fkey = join(join(key, "families"), str(family))
            if family not in families:
                raise unknown(fkey, str(family), families, "model family")
            section = dict(mapping(fkey, section))
            if "families" in section:
                raise ConfigError(join(fkey, "families"), "per-family overrides cannot nest")
            fchecks = _checks(section.pop("checks", None), join(fkey, "checks")) if "checks" in section else None
            overrides[family] = check_partial(cls, section, fkey) | ({"checks": fchecks} if fchecks is not None
                                                                     else {})
        return cls(**check_partial(cls, raw, key), checks=checks, families=overrides)

    def for_family(self, family: str) -> "RegistrySettings":
        """The gate one family runs: the top level with `families.<family>` laid over it."""
        from dataclasses import replace

        return replace(self, **self.families.get(family, {}), families={})


def _checks(values: Any, key: str) -> tuple[CheckSettings, ...]:
    if values is None:
        return ()
    if not isinstance(values, (list, tuple)):
        raise ConfigError(key, "expected a list of checks such as [{metric: fid_ratio, max: 500}], "
                               f"got {values!r}")
    return tuple(CheckSettings.from_dict(v, f"{key}[{i}]") for i, v in enumerate(values))
