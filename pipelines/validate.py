"""Stage `validate`: array-level checks plus a Great Expectations suite over a per-image summary table.

Writes `reports/<dataset>/validation.json` (every check, the thresholds, the raw GX results) whether
it passes or not: later stages refuse a dataset whose latest report failed or is missing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.modalities import MODALITIES, get_modality
from pipelines import catalog
from pipelines.dataset import SPLITS, PreparedDataset, open_prepared, sha256_file
from pipelines.errors import GenforgeError, ValidationFailed

# `validation.*` defaults (the settings schema, pipelines/settings/sections.py, declares the same: a test compares
# them); a modality's own section (`validation.tokens`) comes from its module's VALIDATION_DEFAULTS and is laid
# over the top level by that modality's validation_thresholds
DEFAULTS: dict[str, Any] = {
    "min_train_samples": 1000, "min_test_samples": 100, "min_class_share": 0.05, "max_leaked_images": 0,
    "pixel_min": 0, "pixel_max": 255,
    **{name: dict(get_modality(name).VALIDATION_DEFAULTS) for name in MODALITIES
       if hasattr(get_modality(name), "VALIDATION_DEFAULTS")}}


def report_path(root: Path, dataset: str) -> Path:
    """`reports/<dataset>/validation.json` (an alias of `catalog.validation_report`)."""
    return catalog.validation_report(root, dataset)


def summary_table(samples: np.ndarray, labels: np.ndarray, modality: str = "image", spec=None) -> pd.DataFrame:
    """One row per sample, the columns the modality defines (images: label, mean/min/max intensity, content
    hash); every modality has "label" and "hash". `spec`: the data's DataSpec (tokens decode with its vocab)."""
    return pd.DataFrame(get_modality(modality).summary_table(samples, labels, spec))


def _array_checks(ds: PreparedDataset, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    meta, checks = ds.meta, []

    def check(name: str, split: str, ok: bool, observed: Any, expected: Any) -> None:
        checks.append({"name": name, "split": split, "success": bool(ok), "kind": "array",
                       "observed": observed, "expected": expected})

    for split in SPLITS:
        images, labels = arrays[split]
        file_name = f"{split}.npz"
        check("split_not_empty", split, len(images) > 0, f"{len(images)} samples", "at least 1 sample")
        recorded = meta.get("files", {}).get(file_name)
        check("file_sha256_matches_meta", split, recorded == sha256_file(ds.root / file_name),
              "sha256 of " + file_name, recorded)
        check("dtype_matches_meta", split, str(images.dtype) == meta.get("dtype", "uint8"),
              str(images.dtype), meta.get("dtype", "uint8"))
        problem = get_modality(ds.spec.modality).check_stored(images, ds.spec.shape)
        check("shape_matches_meta", split, problem is None, list(images.shape), ["N", *meta["shape"]])
        check("labels_match_image_count", split, labels.shape == (len(images),),
              list(labels.shape), [len(images)])
        finite = bool(np.isfinite(images).all()) if images.dtype.kind == "f" else True
        check("no_nan_pixels", split, finite, "all finite" if finite else "NaN/inf present", "all finite")
    return checks


def _gx_validate(tables: dict[str, pd.DataFrame], shares: pd.DataFrame, num_classes: int,
                 thresholds: dict[str, Any], modality: str = "image") -> tuple[list[dict], dict[str, Any]]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                             ProgressBarsConfig)

    # in memory and without a data docs site: GX's default ephemeral context makes a temporary docs folder
    # and logs "Created temporary directory ... for ephemeral docs site" into the job's output
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("genforge")
    images_batch = source.add_dataframe_asset("images").add_batch_definition_whole_dataframe("split")
    shares_batch = source.add_dataframe_asset("class_shares").add_batch_definition_whole_dataframe("all")

    def image_suite(split: str) -> "gx.ExpectationSuite":
        suite = gx.ExpectationSuite(name=f"images_{split}")
        reference = {c: tables["train"][c].to_numpy() for c in tables["train"].columns} if split != "train" else None
        own = [getattr(gxe, name)(**kwargs)
               for name, kwargs in get_modality(modality).expectations(thresholds, reference)]
        for exp in (
            gxe.ExpectTableRowCountToBeBetween(min_value=int(thresholds[f"min_{split}_samples"])),
            *own,
            gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=num_classes - 1),
            gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(range(num_classes))),
            gxe.ExpectColumnSumToBeBetween(column="leaked", min_value=0,
                                           max_value=int(thresholds["max_leaked_images"])),
        ):
            suite.add_expectation(exp)
        return suite

    share_suite = gx.ExpectationSuite(name="class_shares")
    share_suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="share", min_value=float(thresholds["min_class_share"]), max_value=1.0))

    checks, raw = [], {}
    runs = [(split, images_batch, tables[split], image_suite(split)) for split in SPLITS]
    runs.append(("both", shares_batch, shares, share_suite))
    for split, batch_def, frame, suite in runs:
        result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
        raw[split] = result.to_json_dict()
        for r in result.results:
            cfg = r.expectation_config
            detail = {k: v for k, v in (r.result or {}).items()
                      if k in ("observed_value", "unexpected_count", "partial_unexpected_list", "missing_count")}
            checks.append({"name": cfg.type, "split": split, "success": bool(r.success), "kind": "great_expectations",
                           "column": cfg.kwargs.get("column"),
                           "expected": {k: v for k, v in cfg.kwargs.items() if k not in ("column", "batch_id")},
                           "observed": detail})
    return checks, raw


def validate(params: dict[str, Any], root: Path, dataset_dir: Path | None = None) -> dict[str, Any]:
    """Stage `validate` on `dataset_dir` (default: the prepared folder of `data.name`)."""
    if dataset_dir is None:
        from pipelines.prepare import prepared_dir

        dataset_dir = prepared_dir(root, params)
    ds = open_prepared(dataset_dir)
    thresholds = get_modality(ds.spec.modality).validation_thresholds(merged_thresholds(params))
    arrays = {split: ds.load(split) for split in SPLITS}
    checks = _array_checks(ds, arrays)

    tables = {split: summary_table(*arrays[split], modality=ds.spec.modality, spec=ds.spec) for split in SPLITS}
    train_hashes, test_hashes = set(tables["train"]["hash"]), set(tables["test"]["hash"])
    tables["train"]["leaked"] = tables["train"]["hash"].isin(test_hashes).astype(np.int64)
    tables["test"]["leaked"] = tables["test"]["hash"].isin(train_hashes).astype(np.int64)
    shares = pd.DataFrame([
        {"split": split, "class": c, "share": float((tables[split]["label"] == c).mean()) if len(tables[split]) else 0.0}
        for split in SPLITS for c in range(ds.num_classes)])
    gx_checks, gx_raw = _gx_validate(tables, shares, ds.num_classes, thresholds, ds.spec.modality)
    checks += gx_checks

    failed = [c for c in checks if not c["success"]]
    report = {
        "dataset": ds.name,
        "data_sha256": ds.sha256,
        "success": not failed,
        "failed": [f"{c['split']}: {c['name']}" + (f"({c['column']})" if c.get("column") else "") for c in failed],
        "thresholds": thresholds,
        "leaked_images": int(tables["test"]["leaked"].sum()),
        "checks": checks,
        "great_expectations": gx_raw,
    }
    out = report_path(root, ds.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    tmp.replace(out)
    if failed:
        lines = "; ".join(_describe(c) for c in failed)
        raise ValidationFailed(f"{dataset_dir}: validation failed ({len(failed)} of {len(checks)} checks): {lines}. "
                               f"Report: {out}")
    return {"dataset": ds.name, "report": str(out), "checks": len(checks), "data_sha256": ds.sha256}


def merged_thresholds(params: dict[str, Any]) -> dict[str, Any]:
    """`validation` over DEFAULTS; a nested section (`validation.tokens`) is merged key by key."""
    given = params.get("validation") or {}
    out = {**DEFAULTS, **given}
    for key, value in DEFAULTS.items():
        if isinstance(value, dict):
            out[key] = {**value, **(given.get(key) or {})}
    return out


def _describe(check: dict) -> str:
    column = f"({check['column']})" if check.get("column") else ""
    return f"{check['split']} {check['name']}{column} observed {json.dumps(check['observed'], default=_jsonable)}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def require_validated(root: Path, dataset_dir: Path) -> PreparedDataset:
    """Stages after validate call this: the latest validation of exactly this data must have passed."""
    ds = open_prepared(dataset_dir)
    path = report_path(root, ds.name)
    if not path.exists():
        raise ValidationFailed(f"{dataset_dir}: no validation report ({path}); run `genforge stage validate` first")
    report = json.loads(path.read_text())
    if report.get("data_sha256") != ds.sha256:
        raise ValidationFailed(f"{path}: the report is for data {str(report.get('data_sha256'))[:12]}, the prepared "
                               f"data is {ds.sha256[:12]}; run `genforge stage validate` again")
    if not report.get("success"):
        raise ValidationFailed(f"{path}: the latest validation failed ({'; '.join(report.get('failed', []))}); "
                               f"fix the data and rerun `genforge stage validate`")
    return ds


__all__ = ["GenforgeError", "report_path", "require_validated", "summary_table", "validate"]
