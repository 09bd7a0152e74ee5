"""``DataSpec``: what one prepared data set holds, as every layer needs to know it.

It is the typed form of ``data/prepared/<name>/meta.json`` (DESIGN.md, "Data contract") and what a model
is built for: a family receives a ``DataSpec``, not an image shape.

- ``modality``: ``"image"`` (uint8 N x C x H x W, values 0..255) or ``"tokens"`` (int32 N x T, ids into
  ``vocab``).
- ``shape``: the shape of one sample (C, H, W for images; T for tokens).
- ``dtype``, ``value_range``: how the samples are stored (inclusive range).
- ``num_classes``, ``class_names``: labels are int64 in ``0 .. num_classes-1`` (0 classes: unlabelled, -1);
  names in label order.
- ``vocab``: the token strings, for the tokens modality only.

Data sets prepared before the modality layer (``meta.json`` without ``modality``) read as images.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from contracts.errors import ConfigError

MODALITIES = ("image", "tokens")


@dataclass(frozen=True)
class DataSpec:
    modality: str = "image"
    shape: tuple[int, ...] = (1, 28, 28)
    dtype: str = "uint8"
    value_range: tuple[float, float] = (0, 255)
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    vocab: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError("modality", f"{self.modality!r} is not a modality; known: {', '.join(MODALITIES)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "value_range", tuple(self.value_range))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.vocab is not None:
            object.__setattr__(self, "vocab", tuple(self.vocab))
        if any(s < 1 for s in self.shape) or not self.shape:
            raise ConfigError("shape", f"every dimension must be >= 1, got {list(self.shape)}")
        if self.num_classes < 0:
            raise ConfigError("num_classes", f"must be >= 0 (0: unlabelled), got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError("class_names", f"{len(self.class_names)} names for {self.num_classes} classes")
        if self.modality == "image" and len(self.shape) != 3:
            raise ConfigError("shape", f"an image sample is C x H x W, got {list(self.shape)}")
        if self.modality == "tokens" and not self.vocab:
            raise ConfigError("vocab", "the tokens modality needs a vocabulary")

    # --- images ------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C, H, W of an image sample; an error for other modalities."""
        if self.modality != "image":
            raise ConfigError("modality", f"{self.modality} data has no image shape")
        return self.shape  # type: ignore[return-value]

    @property
    def dims(self) -> int:
        """Values per sample (the denominator of bits/dim)."""
        out = 1
        for s in self.shape:
            out *= s
        return out

    @property
    def vocab_size(self) -> int:
        return len(self.vocab or ())

    def class_index(self, label: int | str) -> int:
        """A label given as an index or a class name -> its index; ConfigError naming the known ones."""
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label in self.class_names:
                return self.class_names.index(label)
            raise ConfigError("label", f"no class named {label!r}; classes: {', '.join(self.class_names) or 'unnamed'}")
        index = int(label)
        if not 0 <= index < self.num_classes:
            raise ConfigError("label", f"{index} is outside 0..{self.num_classes - 1}")
        return index

    # --- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {"modality": self.modality, "shape": list(self.shape), "dtype": self.dtype,
               "value_range": list(self.value_range), "num_classes": self.num_classes,
               "class_names": list(self.class_names)}
        if self.vocab is not None:
            out["vocab"] = list(self.vocab)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DataSpec":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kept = {k: v for k, v in values.items() if k in known}
        if kept.get("vocab") is None:
            kept.pop("vocab", None)
        return cls(**kept, extra={k: v for k, v in values.items() if k not in known})

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "DataSpec":
        """From a prepared data set's ``meta.json``, including those written before modalities existed."""
        values = dict(meta)
        values.setdefault("modality", "image")
        if values["modality"] == "image":
            values.setdefault("value_range", [0, 255])
        return cls.from_dict(values)

    @classmethod
    def image(cls, shape=(1, 28, 28), num_classes: int = 10, class_names=()) -> "DataSpec":
        return cls(modality="image", shape=tuple(shape), num_classes=int(num_classes), class_names=tuple(class_names))
