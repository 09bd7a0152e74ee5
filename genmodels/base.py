"""The model contract every family implements (see ../shared/DESIGN.md, "Model contract").

The trainer, evaluation, export and serving only talk to this interface, so no caller ever
special-cases a family. Optional capabilities are *declared* in ``capabilities`` rather than
discovered with ``hasattr``.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from contracts.data import DataSpec
from contracts.ranges import LIMITS, in_range, range_text
from contracts.samplers import SamplerSpec


# Field kinds (dataclasses.field metadata "kind"). Architecture (the default) fixes the weights' shapes and
# meaning. "training" fields steer the optimisation (learning rates, schedule, loss weights, epochs, batch
# size): the trainer records the values it really used once, in config.json's "training" and train.json.
# "evaluation" fields only change how a trained model is scored (importance samples of nll(), the anomaly
# score): neither kind of change is a new architecture, and evaluation fields are not part of the
# training fingerprint, so changing one keeps the checkpoints.
# A field may declare its range (metadata ge / gt / le / lt): ``ModelConfig`` refuses a value outside it with a
# ValueError naming the field, and `params.yaml`'s checks (pipelines/settings) refuse it before anything runs.


def _limits(limits: dict[str, float]) -> dict[str, float]:
    bad = sorted(set(limits) - set(LIMITS))
    if bad:
        raise TypeError(f"unknown range keys {bad}; known: {', '.join(LIMITS)}")
    return limits


def arch(default: Any, **limits: float) -> Any:
    """An architecture config field (the kind of a plain default) with its range, e.g. ``arch(16, ge=1)``."""
    return field(default=default, metadata=_limits(limits))


def training(default: Any, **limits: float) -> Any:
    """A config field that steers training only; ``limits``: its range (ge, gt, le, lt)."""
    return field(default=default, metadata={"kind": "training", **_limits(limits)})


def evaluation(default: Any, **limits: float) -> Any:
    """A config field that only changes how a trained model is scored (never its weights); ``limits``: its range."""
    return field(default=default, metadata={"kind": "evaluation", **_limits(limits)})


def _out_of_range(value: Any, meta: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False  # the type is checked elsewhere
    return not in_range(value, meta) or value != value


@dataclass
class ModelConfig:
    """Fields every family shares; families subclass this dataclass with their own fields.

    ``data`` is the ``DataSpec`` the model is built for (modality, sample shape, classes). ``image_shape``
    and ``num_classes`` are accepted for compatibility (config.json files written before contracts v2, and
    ``from_config({"image_shape": ..., "num_classes": ...})``): given, they override the spec's shape and
    class count; after construction they mirror ``data``. Sampling settings (DDIM steps, temperature, ...)
    are not config fields: they are arguments of ``sample`` with the family's defaults.
    """

    data: DataSpec | None = None
    image_shape: tuple[int, ...] | None = None  # C, H, W (image modality); mirrors data.shape
    num_classes: int | None = None              # mirrors data.num_classes
    seed: int = 0

    def __post_init__(self) -> None:
        spec = self.data
        if isinstance(spec, dict):
            spec = DataSpec.from_dict(spec)
        if spec is None:
            spec = DataSpec.image(tuple(self.image_shape or (1, 28, 28)),
                                  10 if self.num_classes is None else int(self.num_classes))
        else:
            changes: dict[str, Any] = {}
            if self.image_shape is not None and tuple(int(v) for v in self.image_shape) != spec.shape:
                changes["shape"] = tuple(int(v) for v in self.image_shape)
            if self.num_classes is not None and int(self.num_classes) != spec.num_classes:
                changes["num_classes"] = int(self.num_classes)
                if spec.class_names:
                    changes["class_names"] = ()
            if changes:
                spec = dataclasses.replace(spec, **changes)
        self.data = spec
        self.image_shape = spec.shape if spec.modality == "image" else None
        self.num_classes = spec.num_classes
        for f in dataclasses.fields(self):
            if any(k in f.metadata for k in LIMITS) and _out_of_range(getattr(self, f.name), f.metadata):
                raise ValueError(f"{f.name} must be{range_text(f.metadata)}, got {getattr(self, f.name)!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """From config.json's "config" (+ optional "training") or a params section; unknown keys are a
        ValueError naming them and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(values)
        if isinstance(values.get("data"), dict):
            values["data"] = DataSpec.from_dict(values["data"])
        if values.get("image_shape") is not None:
            values["image_shape"] = tuple(int(v) for v in values["image_shape"])
        return cls(**values)

    @classmethod
    def fields_of_kind(cls, kind: str) -> tuple[str, ...]:
        """Names of the fields of one kind: "training", "evaluation" or "architecture"."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.metadata.get("kind", "architecture") == kind and f.name not in ("data", "image_shape", "num_classes"))

    def _values(self, kind: str) -> dict[str, Any]:
        return json.loads(json.dumps({name: getattr(self, name) for name in self.fields_of_kind(kind)}, default=list))

    def architecture(self) -> dict[str, Any]:
        """What fixes the weights' shapes and meaning: the data spec, the seed and every architecture field."""
        return {**self._values("architecture"), "data": self.data.to_dict()}

    def training_settings(self) -> dict[str, Any]:
        """The training fields (learning rates, schedule, loss weights, epochs, batch size)."""
        return self._values("training")

    def evaluation_settings(self) -> dict[str, Any]:
        return self._values("evaluation")

    def fingerprint_fields(self) -> dict[str, Any]:
        """What training depends on: architecture + training fields (evaluation fields excluded)."""
        return {**self.architecture(), **self.training_settings()}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON types: what ``from_dict`` rebuilds the same config from."""
        return {**self.fingerprint_fields(), **self.evaluation_settings()}


def stride2_levels(h: int, w: int) -> int:
    """How many stride-2 stages fit a conv net: halve while both sides stay even and above 4
    (28->14->7, 8->4). The vae and dcgan networks size themselves with it."""
    n = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) > 4 and n < 4:
        h, w, n = h // 2, w // 2, n + 1
    return n


def require_halvable(family: str, shape: tuple[int, ...], levels: int, formula: str, fix: str) -> None:
    """Refuse in one line (ValueError) images whose height and width cannot be halved ``levels`` times
    exactly (a U-Net's or a multi-scale flow's levels), naming the family, the shape and the fix (``fix``
    with ``{n}``: the most levels + 1 these images allow)."""
    c, h, w = shape
    f = 2 ** levels
    if h % f or w % f:
        fits, hh, ww = 0, h, w
        while hh % 2 == 0 and ww % 2 == 0:
            fits, hh, ww = fits + 1, hh // 2, ww // 2
        raise ValueError(f"{family} needs image height and width divisible by {f} ({formula}); the data's images "
                         f"are {c}x{h}x{w} (CxHxW): {fix.format(n=fits + 1)}, or resize the images")


@dataclass
class OnnxGraph:
    """One graph to export: serving feeds ``input_names`` and reads ``output_names``."""

    name: str                      # file stem: <name>.onnx
    module: nn.Module              # eval-mode module whose forward takes the example inputs
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # optional export-time rewrite: ``module`` is then an equivalent form of ``reference`` (the model's own
    # module) that exports to a faster graph; the parity check and the benchmarks' PyTorch side use ``reference``
    reference: nn.Module | None = None
    # optional pass over the exported file, onnx.ModelProto -> onnx.ModelProto, before the check and parity
    onnx_pass: Callable[[Any], Any] | None = None


class GenerativeModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every family (as pytorch-generative's ``models/base.py``: the methods every family
    must have are abstract, so an incomplete family fails when it is built, not at export).

    Samples crossing this interface are what the data's modality module makes of stored arrays
    (``contracts.modalities``): for images float tensors in [0, 1] of shape N x C x H x W; labels are
    int64 tensors of shape N. A family declares the modalities it accepts in ``modalities``; building it
    for other data is a ValueError.
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    # subset of {"conditional", "score", "nll", "encode", "decode", "latent"}; with "encode"/"decode" the model
    # has encode(x, labels=None) -> z and decode(z, labels=None) -> images (labels used when "conditional")
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # generate-time sampling options and the family's defaults, e.g. {"steps": 50, "eta": 0.0}: call arguments
    # of sample(), recorded in sampler() as its defaults, never part of the (fingerprinted) config
    sampling_options: ClassVar[dict[str, Any]] = {}
    # config keys from before sampling settings left the config -> option name (old config.json / params files)
    legacy_sampling_keys: ClassVar[dict[str, str]] = {}
    # config fields added after models of the family were first stored, with the value that rebuilds such a model:
    # a stored config.json without the key was trained before the field existed (``pipelines.train.load_model``)
    legacy_field_values: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.data.modality not in self.modalities:
            raise ValueError(f"{self.family or type(self).__name__} models {', '.join(sorted(self.modalities))} data, "
                             f"not {config.data.modality}")
        self.config = config
        self.sampling: dict[str, Any] = dict(self.sampling_options)  # this model's defaults

    @classmethod
    def from_config(cls, values: dict[str, Any], sampling: dict[str, Any] | None = None) -> "GenerativeModel":
        """A model from config values (config.json's, or params'). Sampling options found among them
        (``sampling_options`` names or ``legacy_sampling_keys``) and ``sampling`` become its sampling
        defaults. ValueError for bad values, and for data of a modality the family does not model (before
        the config is built)."""
        spec = values.get("data")
        modality = spec.get("modality", "image") if isinstance(spec, dict) else getattr(spec, "modality", "image")
        if modality not in cls.modalities:
            raise ValueError(f"{cls.family or cls.__name__} models {', '.join(sorted(cls.modalities))} data, "
                             f"not {modality}")
        config_values, found = cls.split_sampling(values)
        model = cls(cls.config_class.from_dict(config_values))
        model.set_sampling_defaults(**found, **(sampling or {}))
        return model
    @classmethod
    def split_sampling(cls, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config values, sampling options) of a dict that may mix both, as config.json and params did."""
        config_values, found = {}, {}
        for key, value in values.items():
            option = cls.legacy_sampling_keys.get(key, key if key in cls.sampling_options else None)
            (found if option else config_values)[option or key] = value
        return config_values, found

    def set_sampling_defaults(self, **options: Any) -> None:
        """Change this model's sampling defaults; validated through its sampler spec (SamplerSpecError, a
        ValueError, for an unknown option or a bad value)."""
        if options:
            self.sampling = self.sampler().with_sampling(**options).sampling_defaults()

    def sampling_spec(self, sampling: dict[str, Any]) -> SamplerSpec:
        """The sampler spec with call-time ``sampling`` options over the defaults (validated)."""
        return self.sampler().with_sampling(**sampling)

    # --- training -------------------------------------------------------------------------
    @abc.abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers the model owns (checkpointed with the weights)."""
        raise NotImplementedError

    @abc.abstractmethod
    def fit_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns losses as plain floats."""
        raise NotImplementedError

    def training_data_problem(self, labels: torch.Tensor) -> str | None:
        """Why the training split (``labels``: N int64, one per training image) is too small for this model
        (named by its setting), or None. The trainer asks before the first step, so a run that could not finish
        does not start. Default: None."""
        return None

    def end_epoch(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        """Called by the trainer after each epoch's steps (``epoch`` counted from 0), before its checkpoint,
        with every training image (N x C x H x W in [0, 1], on the model's device) and label (N): work that
        reads the whole training set, e.g. the VAE's mixture prior. It must not draw from the global RNG
        (training resumes from it). Default: nothing."""

    def training_state(self) -> dict[str, Any]:
        """Everything needed to resume training bit-for-bit (tensors and plain types only)."""
        return {
            "model": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()},
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        for k, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][k])

    def requested_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """Conditional models: the `n` labels asked for, checked against num_classes, or every class in
        turn (0, 1, ..., K-1, 0, ...) when none are given, as the ONNX generator does without --label."""
        k = self.config.num_classes
        if labels is None:
            return torch.arange(n, device=self.device) % k
        labels = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        if labels.numel() != n or (n and (labels.min() < 0 or labels.max() >= k)):
            raise ValueError(f"need {n} labels in [0, {k}), got {labels.numel()}: {labels.tolist()[:10]}")
        return labels

    # --- inference ------------------------------------------------------------------------
    @abc.abstractmethod
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **sampling: Any) -> torch.Tensor:
        """N images in [0, 1], N x C x H x W. ``sampling``: the family's options (``sampling_options``)
        overriding its defaults for this call; an option it does not take is a SamplerSpecError."""
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per image, higher = more anomalous (capability "score")."""
        raise NotImplementedError(f"{self.family} has no anomaly score")

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per image, or an upper bound (capability "nll")."""
        raise NotImplementedError(f"{self.family} has no likelihood")

    # --- export / serving -----------------------------------------------------------------
    @abc.abstractmethod
    def onnx_graphs(self) -> list[OnnxGraph]:
        raise NotImplementedError

    @abc.abstractmethod
    def sampler(self) -> SamplerSpec:
        """How serving runs the graphs, with ``self.sampling`` as its sampling defaults; export writes
        ``sampler().to_json()`` to sampler.json."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class ScheduledTraining:
    """Mixin for a family with one optimizer in `self._opt` and a learning-rate schedule in `self._sched`:
    the schedule's state goes into the checkpoint beside the optimizers' (key "scheduler")."""

    _opt: torch.optim.Optimizer
    _sched: torch.optim.lr_scheduler.LRScheduler

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "scheduler": self._sched.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self._sched.load_state_dict(state["scheduler"])


class LikelihoodModel(ScheduledTraining, GenerativeModel):
    """A family trained by minimising its own negative log-likelihood (pixelcnn, realnvp): Adam in
    `self._opt` with a learning-rate schedule in `self._sched`, stepped once per batch, gradients clipped
    at `config.grad_clip` (0: no clipping). The family supplies `training_nll(x)`: N nats, differentiable."""

    def training_nll(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self._opt}

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        loss = self.training_nll(x.to(self.device)).mean()  # nats per image
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.grad_clip)
        self._opt.step()
        self._sched.step()
        dims = self.config.data.dims
        return {"loss": loss.item(), "bits_per_dim": loss.item() / (dims * math.log(2))}
