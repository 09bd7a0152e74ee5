"""Numeric ranges declared as metadata (``ge``, ``gt``, ``le``, ``lt``): one test and one wording for the two places
that check them, the settings schema (pipelines/settings) and the model configs' fields (genmodels/base.py)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LIMITS = ("ge", "gt", "le", "lt")


def range_text(meta: Mapping[str, Any]) -> str:
    """' >= 1', ' in (0, 1)', ' in [0, 1)': the range in ``meta`` for messages ('' for none)."""
    ge, gt, le, lt = (meta.get(k) for k in LIMITS)
    low, high = (ge, "[") if ge is not None else (gt, "(") if gt is not None else (None, "")
    top, close = (le, "]") if le is not None else (lt, ")") if lt is not None else (None, "")
    if low is not None and top is not None:
        return f" in {high}{low:g}, {top:g}{close}"
    if low is not None:
        return f" {'>=' if ge is not None else '>'} {low:g}"
    if top is not None:
        return f" {'<=' if le is not None else '<'} {top:g}"
    return ""


def in_range(value: float, meta: Mapping[str, Any]) -> bool:
    """Whether the number ``value`` lies in the range ``meta`` declares (no bound: True; NaN fails any bound)."""
    ge, gt, le, lt = (meta.get(k) for k in LIMITS)
    return ((ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
            and (lt is None or value < lt))
