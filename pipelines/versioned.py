"""What git versions beside the code for `dvc metrics diff` / `dvc plots diff`: small files under `metrics/`.

The catalog names them (`summary`, `loss_curves`, `roc_curve`: `metrics/<dataset>/<family>/...`); dvc.yaml
declares them `cache: false`, so they are committed with git like the code, not kept in DVC's cache, and any two
commits can be compared without a DVC remote:

- `summary.json` (evaluate, DVC `metrics`): one flat JSON object of numbers (booleans as 0/1), the outputs the
  metric registry marks as summary (`evaluation.suite.summary_outputs()`, in table order) that this evaluation
  wrote as finite numbers, then training's `train_epochs` and `train_seconds` from train.json.
- `loss/<name>.csv` (train, DVC `plots`): one file per training loss, columns `epoch,<name>` (the epoch's mean).
- `roc.csv` (evaluate, DVC `plots`): columns `fpr,tpr` of the anomaly score's ROC over every anomaly set;
  the header alone when the anomaly metric did not run (the model has no score), as DVC needs the file.

The full report (`reports/<dataset>/<family>/metrics.json`, every value with its setting) stays a cached output.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from contracts.io import atomic_dir, remove_stale_temps

# training's numbers in the summary: train.json key -> summary key
TRAIN_NUMBERS = {"epochs": "train_epochs", "train_seconds": "train_seconds"}
SIGNIFICANT = 6  # digits a summary float keeps (DVC shows 5)
_LOSS_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _number(value: Any) -> int | float | None:
    """`value` as a JSON number (bool -> 0/1, numpy scalars -> Python), None when it is not a finite number."""
    if isinstance(value, bool):
        return int(value)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # a numpy scalar or 0-d array
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _significant(number: int | float, digits: int = SIGNIFICANT) -> int | float:
    return number if isinstance(number, int) else float(f"{number:.{digits}g}")


def flat_summary(metrics: Mapping[str, Any], train_info: Mapping[str, Any] | None = None) -> dict[str, int | float]:
    """The summary of one evaluation: {key: number}, flat and numeric only, floats to SIGNIFICANT digits (the
    full precision stays in metrics.json; git diffs of the summary show changes, not float noise).

    `metrics`: metrics.json's `metrics` ({key: {"value": v, "setting": {...}}}) or plain {key: v}; the keys the
    registry marks as summary that hold a finite number (bool -> 0/1) are kept, in registry order; lists,
    strings, NaN and infinities are left out. `train_info`: train.json, whose `epochs` and `train_seconds`
    become `train_epochs` and `train_seconds` when they are numbers."""
    from evaluation.suite import summary_outputs

    out: dict[str, int | float] = {}
    for key in summary_outputs():
        if key not in metrics:
            continue
        raw = metrics[key]
        number = _number(raw.get("value") if isinstance(raw, Mapping) else raw)
        if number is not None:
            out[key] = _significant(number)
    for key, name in TRAIN_NUMBERS.items():
        number = _number((train_info or {}).get(key))
        if number is not None:
            out[name] = _significant(number)
    return out


def json_text(summary: Mapping[str, int | float]) -> str:
    """`summary` (flat_summary's result) as the file's text: indented JSON, a trailing newline."""
    return json.dumps(dict(summary), indent=2, allow_nan=False) + "\n"


def curve_csv(rows: Iterable[Mapping[str, Any]], columns: tuple[str, ...]) -> str:
    """CSV text of `rows` with a header of `columns` (the header alone for no rows); floats as repr (exact,
    short). Raises ValueError when a row lacks a column or holds something other than a number."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for i, row in enumerate(rows):
        values = []
        for column in columns:
            number = _number(row.get(column)) if column in row else None
            if number is None:
                raise ValueError(f"curve row {i}: {column!r} is {row.get(column)!r}, not a finite number")
            values.append(number)
        writer.writerow(values)
    return buf.getvalue()


def loss_series(history: list[Mapping[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """train.json's `history` ([{"epoch": e, <loss>: mean, ...}]) -> {loss: [{"epoch": e, loss: mean}]}, one
    series per loss a family reports (vae: loss, recon, kl; dcgan: loss_d, loss_g), epochs in order; values
    that are not finite numbers are skipped."""
    series: dict[str, list[dict[str, float]]] = {}
    for entry in history:
        epoch = _number(entry.get("epoch"))
        if epoch is None:
            continue
        for key, value in entry.items():
            number = _number(value)
            if key == "epoch" or number is None or not _LOSS_FILE.match(key):
                continue
            series.setdefault(key, []).append({"epoch": epoch, key: number})
    return series


def write_loss_curves(folder: Path, history: list[Mapping[str, Any]]) -> None:
    """Replace `folder` with one `<loss>.csv` per series of `loss_series(history)` (as one atomic swap).
    A history without any loss still gets `loss.csv` with its header, as DVC needs a file to version."""
    series = loss_series(history) or {"loss": []}
    remove_stale_temps(folder.parent, (folder.name,))
    with atomic_dir(folder) as tmp:
        for key, rows in series.items():
            (tmp / f"{key}.csv").write_text(curve_csv(rows, ("epoch", key)))
