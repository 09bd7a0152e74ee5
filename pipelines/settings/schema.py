"""The machinery behind the typed settings: dataclass fields with ranges, checked against raw YAML values.

A settings class is a dataclass whose fields carry their type (int, float, bool, str, Optional[...],
Literal[...], tuple[X, ...], tuple[X, Y], a nested settings dataclass) and, through `setting(...)`,
a range (`ge`, `gt`, `le`, `lt`) or a `check(value) -> problem | None`. `build(cls, values, key)` turns a
mapping from params.yaml into an instance, as `genmodels.base.ModelConfig.from_dict` does for model
configs, and raises `ConfigError` naming the dotted key and the value for the first thing wrong:

    registry.max_fid_ratoi: unknown setting; did you mean 'max_fid_ratio'? (known: direction, ...)
    train.epochs: expected an integer >= 1, got 'abc'
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Optional, Union

from contracts.errors import ConfigError
from contracts.ranges import in_range, range_text

Check = Callable[[Any], Optional[str]]


def setting(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, check: Check | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a range (applied to each element of a sequence) and an optional check."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "check": check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a typo (difflib ratio >= 0.6), or None."""
    match = difflib.get_close_matches(str(name), sorted(set(known)), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """'; did you mean 'x'? (known: a, b)' or ' (known: a, b)': the tail of an unknown-name message."""
    known = sorted(set(known))
    match = closest(name, known)
    hint = f"; did you mean {match!r}?" if match else ""
    return f"{hint} (known: {', '.join(known) or 'none'})"


def unknown(key: str, name: str, known: Iterable[str], what: str = "setting") -> ConfigError:
    """`key: unknown setting; did you mean ...? (known: ...)` for a mapping key that no field declares."""
    return ConfigError(key, f"unknown {what}{did_you_mean(name, known)}")


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, YAML spellings for null and booleans."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def describe(tp: Any, meta: Mapping[str, Any] | None = None) -> str:
    """'an integer >= 1', 'a number in (0, 1)', 'one of 'a', 'b'', 'a list of strings', ... for messages."""
    meta = meta or {}
    inner, optional = _optional_inner(tp)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    rng = range_text(meta)
    if inner is bool:
        text = "true or false"
    elif inner is int:
        text = f"an integer{rng}"
    elif inner is float:
        text = f"a number{rng}"
    elif inner is str:
        text = "a string"
    elif origin is Literal:
        text = "one of " + ", ".join(repr(a) for a in args)
    elif origin in (tuple, list):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis or origin is list:
            text = f"a list of {_plural(args[0], rng)}"
        else:
            text = f"a list of {len(args)} {_plural(args[0], rng)}"
    elif dataclasses.is_dataclass(inner) or origin in (dict, Mapping):
        text = "a mapping"
    else:
        text = getattr(inner, "__name__", str(inner))
    return text  # null, where allowed, is left out: "expected an integer >= 1, got 'abc'" reads better


def _plural(tp: Any, rng: str) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, "mappings") + rng


def check_value(key: str, value: Any, tp: Any, meta: Mapping[str, Any] | None = None) -> Any:
    """`value` checked against type `tp` and the range in `meta`; returns it (sequences as tuples, nested
    settings dataclasses built). Raises ConfigError(key, 'expected <describe(tp)>, got <value>')."""
    meta = meta or {}
    inner, optional = _optional_inner(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(key, f"expected {describe(tp, meta)}, got null")
    origin, args = typing.get_origin(inner), typing.get_args(inner)

    def wrong() -> ConfigError:
        return ConfigError(key, f"expected {describe(tp, meta)}, got {show(value)}")

    if dataclasses.is_dataclass(inner):
        return build(inner, value, key)
    if origin is Literal:
        if value not in args:
            if isinstance(value, str):
                raise ConfigError(key, f"{value!r} is not one of {', '.join(repr(a) for a in args)}"
                                       + (f"; did you mean {closest(value, map(str, args))!r}?"
                                          if closest(value, map(str, args)) else ""))
            raise wrong()
    elif origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        variadic = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        if not variadic and len(value) != len(args):
            raise wrong()
        kinds = [args[0]] * len(value) if variadic else list(args)
        return tuple(check_value(f"{key}[{i}]", v, t, meta) for i, (v, t) in enumerate(zip(value, kinds)))
    elif inner is bool:
        if not isinstance(value, bool):
            raise wrong()
    elif inner is int:
        if isinstance(value, bool) or not isinstance(value, int) or not in_range(value, meta):
            raise wrong()
    elif inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not in_range(value, meta):
            raise wrong()
        if value != value:  # NaN passes no range
            raise wrong()
    elif inner is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {show(value)}"
                                   + (f" (quote it: '{value}')" if isinstance(value, (int, float)) else ""))
    elif origin in (dict, Mapping) or inner is dict:
        if not isinstance(value, Mapping):
            raise wrong()
    if meta.get("check") is not None:
        problem = meta["check"](value)
        if problem:
            raise ConfigError(key, problem)
    return value


def field_types(cls: type) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """{field name: (resolved type, metadata)} of a dataclass, string annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints.get(f.name, Any), f.metadata) for f in dataclasses.fields(cls)}


def mapping(key: str, values: Any) -> Mapping[str, Any]:
    """A section's raw value as a mapping: null is empty; anything else that is not a mapping is an error."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(key, f"expected a mapping of settings, got {show(values)}")
    return values


def check_partial(cls: type | None, values: Any, key: str,
                  extra: Mapping[str, tuple[Any, Mapping[str, Any]]] | None = None) -> dict[str, Any]:
    """Only the given keys of `values`, each checked against `cls`'s field (or `extra`); unknown keys are errors.
    For override sections (`model.<family>`, `registry.families.<family>`) where unset keys keep defaults."""
    fields = {**(field_types(cls) if cls is not None else {}), **(extra or {})}
    out = {}
    for name, value in mapping(key, values).items():
        if name not in fields:
            raise unknown(join(key, str(name)), str(name), fields)
        tp, meta = fields[name]
        out[name] = check_value(join(key, name), value, tp, meta)
    return out


def build(cls: type, values: Any, key: str) -> Any:
    """An instance of settings dataclass `cls` from a raw mapping; unset fields keep their defaults."""
    return cls(**check_partial(cls, values, key))
