"""The model contract every family implements (see ../shared/DESIGN.md, "Model contract").

The trainer, evaluation, export and serving only talk to this interface, so no caller ever
special-cases a family. Optional capabilities are *declared* in ``capabilities`` rather than
discovered with ``hasattr``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from contracts.samplers import SamplerSpec


@dataclass
class ModelConfig:
    """Fields every family shares; families subclass this dataclass with their own fields."""

    image_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W
    num_classes: int = 10
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(values)
        if "image_shape" in values:
            values["image_shape"] = tuple(int(v) for v in values["image_shape"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["image_shape"] = list(self.image_shape)
        return out


def stride2_levels(h: int, w: int) -> int:
    """How many stride-2 stages fit a conv net: halve while both sides stay even and above 4
    (28->14->7, 8->4). The vae and dcgan networks size themselves with it."""
    n = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) > 4 and n < 4:
        h, w, n = h // 2, w // 2, n + 1
    return n


@dataclass
class OnnxGraph:
    """One graph to export: serving feeds ``input_names`` and reads ``output_names``."""

    name: str                      # file stem: <name>.onnx
    module: nn.Module              # eval-mode module whose forward takes the example inputs
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


class GenerativeModel(nn.Module):
    """Base class of every family.

    Images crossing this interface are float tensors in [0, 1] of shape N x C x H x W;
    labels are int64 tensors of shape N.
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # subset of {"conditional", "score", "nll", "encode", "decode", "latent"}; with "encode"/"decode" the model
    # has encode(x, labels=None) -> z and decode(z, labels=None) -> images (labels used when "conditional")
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # generate-time sampling options and the family's defaults, e.g. {"steps": 50, "eta": 0.0}: call arguments
    # of sample(), recorded in sampler() as its defaults, never part of the (fingerprinted) config
    sampling_options: ClassVar[dict[str, Any]] = {}
    # config keys from before sampling settings left the config -> option name (old config.json / params files)
    legacy_sampling_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.sampling: dict[str, Any] = dict(self.sampling_options)  # this model's defaults

    @classmethod
    def from_config(cls, values: dict[str, Any], sampling: dict[str, Any] | None = None) -> "GenerativeModel":
        """A model from config values; sampling options found among them (``sampling_options`` names or
        ``legacy_sampling_keys``) and ``sampling`` become its sampling defaults. ValueError for bad values."""
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
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers the model owns (checkpointed with the weights)."""
        raise NotImplementedError

    def fit_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns losses as plain floats."""
        raise NotImplementedError

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
    def onnx_graphs(self) -> list[OnnxGraph]:
        raise NotImplementedError

    def sampler(self) -> SamplerSpec:
        """How serving runs the graphs, with ``self.sampling`` as its sampling defaults; export writes
        ``sampler().to_json()`` to sampler.json."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class LikelihoodModel(GenerativeModel):
    """A family trained by minimising its own negative log-likelihood (pixelcnn, realnvp): Adam in
    `self._opt` with a learning-rate schedule in `self._sched`, stepped once per batch, gradients clipped
    at `config.grad_clip` (0: no clipping). The family supplies `training_nll(x)`: N nats, differentiable."""

    _opt: torch.optim.Optimizer
    _sched: torch.optim.lr_scheduler.LRScheduler

    def training_nll(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self._opt}

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "scheduler": self._sched.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self._sched.load_state_dict(state["scheduler"])

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        loss = self.training_nll(x.to(self.device)).mean()  # nats per image
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.grad_clip)
        self._opt.step()
        self._sched.step()
        dims = math.prod(self.config.image_shape)
        return {"loss": loss.item(), "bits_per_dim": loss.item() / (dims * math.log(2))}
