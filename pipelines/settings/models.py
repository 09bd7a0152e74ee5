"""Typed settings of the params.yaml section `model`: which families to train and each family's config.

`model.families` names are checked against `genmodels.FAMILIES` (read when called, so a family registered
at run time counts). `model.<family>` may set any field of that family's config dataclass
(`get_family(f).config_class`), values checked against the field's type, plus the per-family training
overrides `epochs`, `batch_size` and `log_every` (see `pipelines.train.family_settings`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts.errors import ConfigError
from pipelines.settings.schema import check_partial, did_you_mean, field_types, join, mapping, show, unknown

TRAIN_OVERRIDES = ("epochs", "batch_size", "log_every")  # model.<family>.* over train.* (pipelines.train.TRAIN_KEYS)


def known_families() -> frozenset[str]:
    """The registered family names (genmodels.FAMILIES, as it is now)."""
    import genmodels

    return frozenset(genmodels.FAMILIES)


def check_family(name: Any, key: str) -> str:
    """`name` if it is a registered family, else ConfigError(key, "unknown model family ...; did you mean ...")."""
    known = known_families()
    if not isinstance(name, str):
        raise ConfigError(key, f"expected a family name, got {show(name)}")
    if name not in known:
        raise ConfigError(key, f"unknown model family {name!r}{did_you_mean(name, known)}")
    return name


def _range(name: str) -> dict[str, Any]:
    """Ranges the config dataclasses imply by name: counts of epochs/batches/steps >= 1, learning rates > 0."""
    if name in TRAIN_OVERRIDES:
        return {"ge": 1}
    if name == "lr" or name.startswith("lr_") or name.endswith("_lr"):
        return {"gt": 0}
    return {}


def family_fields(family: str) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """{setting name: (type, range)} that `model.<family>` accepts: the config dataclass's fields plus the
    training overrides (integers >= 1)."""
    import genmodels

    cls = genmodels.get_family(family)
    fields = {name: (tp, {**meta, **_range(name)}) for name, (tp, meta) in field_types(cls.config_class).items()
              if name not in ("data", "image_shape", "num_classes")}  # set from the prepared data, not params
    for name in TRAIN_OVERRIDES:
        fields.setdefault(name, (int, {"ge": 1}))
    # sampling defaults (ddpm's steps/eta/clip, realnvp's temperature; older names such as sample_steps)
    for name, default in cls.sampling_options.items():
        fields.setdefault(name, (type(default), {}))
    for old, new in cls.legacy_sampling_keys.items():
        fields.setdefault(old, (type(cls.sampling_options[new]), {}))
    return fields


@dataclass(frozen=True)
class ModelSettings:
    """`model`: `families` to train (in order) and `configs[family]`, the checked `model.<family>` values
    (only the keys the user set; the rest keep the family's defaults)."""

    families: tuple[str, ...] = ()
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Any, key: str = "model") -> "ModelSettings":
        raw = dict(mapping(key, values))
        names = raw.pop("families", None)
        families: tuple[str, ...] = ()
        if names is not None:
            names = [names] if isinstance(names, str) else names
            if not isinstance(names, (list, tuple)) or not names:
                raise ConfigError(join(key, "families"), f"expected a non-empty list of model families, e.g. "
                                                         f"[vae, dcgan], got {show(names)}")
            families = tuple(check_family(n, join(key, "families")) for n in names)
            twice = sorted({n for n in families if families.count(n) > 1})
            if twice:
                raise ConfigError(join(key, "families"), f"{', '.join(map(repr, twice))} listed more than once")
        known = known_families()
        configs = {}
        for family, section in raw.items():
            fkey = join(key, str(family))
            if family not in known:
                raise unknown(fkey, str(family), {"families", *known})
            configs[family] = check_partial(None, section, fkey, extra=family_fields(family))
        return cls(families=families, configs=configs)
