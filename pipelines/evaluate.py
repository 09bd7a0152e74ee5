"""Stage `evaluate`: sample quality, mode collapse, likelihood and anomaly scores for one trained family.

Runs the configured metrics (`params.yaml: evaluation.metrics`, null: the data modality's default set from
`evaluation.suite`) in one loop over a shared, lazily computed `EvalContext`; a metric whose capabilities the
model lacks is recorded under `skipped` with the reason. Writes `reports/<dataset>/<family>/metrics.json`
(each value with its setting) and PNG plots, and logs both to the MLflow run that trained the model; the flat
numeric summary and the ROC data that git versions go to `metrics/<dataset>/<family>/` (pipelines.versioned).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from contracts.io import atomic_dir, atomic_write_text, remove_stale_temps
from pipelines import catalog, commit, versioned
from pipelines.errors import GenforgeError
from pipelines.prepare import prepared_dir
from pipelines.train import load_model, model_dir, select_device
from pipelines.validate import require_validated


def _defaults() -> dict[str, Any]:
    from evaluation.suite import default_settings

    return default_settings()


DEFAULTS: dict[str, Any] = _defaults()  # evaluation.* defaults: the context's and every metric's settings


def report_dir(root: Path, dataset: str, family: str) -> Path:
    """`reports/<dataset>/<family>/` (an alias of `catalog.report_dir`)."""
    return catalog.report_dir(root, dataset, family)


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    ev = copy.deepcopy(DEFAULTS)
    for key, value in (params.get("evaluation") or {}).items():
        if isinstance(value, dict) and isinstance(ev.get(key), dict):
            ev[key].update(value)
        else:
            ev[key] = value
    return ev


def plan_metrics(ctx: Any, names: list[str]) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """Every metric's checks, before anything is computed (no classifier, no samples): ([(name, metric) that
    will run], {skipped metric: reason}). A bad setting raises its ConfigError here."""
    from contracts.errors import ConfigError
    from evaluation.suite import Skip, get_metric

    skipped: dict[str, str] = {}
    runnable = []
    for name in names:
        metric = get_metric(name)
        if metric.modality not in ("any", ctx.modality):
            raise ConfigError("evaluation.metrics", f"{name} is a metric of {metric.modality} data and "
                                                    f"{ctx.data.name} holds {ctx.modality}: leave {name} out of "
                                                    f"evaluation.metrics (null runs the {ctx.modality} defaults)")
        lacks = metric.missing(ctx.capabilities)
        if lacks:
            skipped[name] = f"the model lacks {', '.join(lacks)} (needs {', '.join(sorted(metric.needs))})"
            continue
        try:
            instance = metric()
            instance.check(ctx)
        except Skip as exc:
            skipped[name] = str(exc)
            continue
        runnable.append((name, instance))
    return runnable, skipped


def run_metrics(ctx: Any, names: list[str], plan: Any = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Run ``names`` in order over ``ctx``: ({output: {"value", "setting"}}, {skipped metric: reason}).
    A metric needing a capability the model lacks, or raising ``Skip``, is skipped with the reason.
    ``plan``: what :func:`plan_metrics` returned (checked now when not given)."""
    from evaluation.suite import Skip

    runnable, skipped = plan or plan_metrics(ctx, names)
    skipped = dict(skipped)
    metrics: dict[str, Any] = {}
    for name, instance in runnable:
        try:
            result = instance.compute(ctx)
        except Skip as exc:
            skipped[name] = str(exc)
            continue
        common = ctx.common_setting()
        for key, (value, setting) in result.items():
            metrics[key] = {"value": value, "setting": {**common, **setting}}
    return metrics, skipped


def evaluate(params: dict[str, Any], root: Path, family: str) -> dict[str, Any]:
    from evaluation.suite import HEADLINE_OUTPUTS, EvalContext, selected_metrics
    from evaluation.suite.base import CURVES
    from evaluation.suite.fid_inception import NOT_SET
    from pipelines import tracking

    started = time.perf_counter()
    ds = require_validated(root, prepared_dir(root, params))
    ev = _settings(params)
    names = selected_metrics(ev.get("metrics"), ds.spec.modality)
    mdir = model_dir(root, ds.name, family)
    paths = catalog.Layout(root, ds.name, family)
    device = select_device(str((params.get("train") or {}).get("device", "auto")))
    # model.pt and config.json checked against train.json's sha256: never a mix of two trainings
    train_info = commit.verify(mdir, paths.train_info.name, f"rerun `genforge stage train --family {family}`")
    model = load_model(mdir, device)
    if train_info.get("data_sha256") not in (None, ds.sha256):
        raise GenforgeError(f"{mdir}: trained on data {train_info['data_sha256'][:12]}, the prepared data is "
                            f"{ds.sha256[:12]}; rerun `genforge stage train --family {family}`")
    plot_dir = paths.plots  # one folder, whatever plots the metrics give (a DVC plots out)
    remove_stale_temps(plot_dir.parent, (plot_dir.name, paths.metrics.name))  # a killed evaluation's leftovers
    holdout = [int(c) for c in ((params.get("train") or {}).get("holdout_classes") or [])]
    with atomic_dir(plot_dir) as tmp_plots:  # the plots replace the old ones as a whole, when all are written
        ctx = EvalContext(model, ds, ev, device, tmp_plots, catalog.classifier_cache(root), holdout,
                          caption=_grid_caption(train_info, family, ev))
        plan = plan_metrics(ctx, names)  # a setting this data cannot satisfy fails here, the old report intact
        metrics, skipped = run_metrics(ctx, names, plan)
    pngs = [plot_dir / p.name for p in ctx.pngs]

    if "fid_inception" in metrics:
        inception = {"computed": True, "weights": str(ev["inception_weights"])}
    else:
        inception = {"computed": False, "reason": skipped.get("fid_inception", NOT_SET if "fid_inception" in names
                                                               else "fid_inception is not in evaluation.metrics")}
    clf_info = ctx.classifier[1] if ctx.classifier_loaded else None
    summary = {k: (float(v["value"]) if not isinstance(v["value"], bool) else int(v["value"]))
               for k, v in metrics.items() if isinstance(v["value"], (int, float, bool))}
    report = {"dataset": ds.name, "family": family, "data_sha256": ds.sha256, "run_id": train_info.get("run_id"),
              "model_params_hash": train_info.get("params_hash"), "summary": summary, "metrics": metrics,
              "metrics_run": names, "skipped": skipped, "inception": inception,
              "classifier": None if clf_info is None else {k: clf_info.get(k) for k in ("path", "test_accuracy",
                                                                                         "cached", "train_seconds")},
              "seconds": round(time.perf_counter() - started, 2)}
    # what git versions (pipelines.versioned), made before anything is written: a bad value fails with none new
    tracked = {paths.summary: versioned.json_text(versioned.flat_summary(metrics, train_info)),
               **{getattr(paths, f"{curve}_curve"): versioned.curve_csv(ctx.curves.get(curve, []), columns)
                  for curve, columns in CURVES.items()}}
    atomic_write_text(paths.metrics, json.dumps(report, indent=2, default=_jsonable) + "\n")
    for path, text in tracked.items():
        atomic_write_text(path, text)

    if train_info.get("run_id"):
        c = tracking.client()
        tracking.log_metrics(c, train_info["run_id"], {f"eval/{k}": v for k, v in summary.items()}, 0)
        for path in [paths.metrics, *pngs]:
            tracking.log_artifact(c, train_info["run_id"], path, "evaluation")
        _log_sample_grid(c, train_info, plot_dir / "samples.png")
    return {"family": family, "dataset": ds.name, "metrics": str(paths.metrics), "seconds": report["seconds"],
            **{k: round(v, 4) for k, v in summary.items() if k in HEADLINE_OUTPUTS}}


def _grid_caption(train_info: dict[str, Any], family: str, ev: dict[str, Any]) -> str:
    """``vae v3 · run 1a2b3c4d · seed 0 · epoch 20/20`` for evaluate's sample grid."""
    from pipelines.lineage import grid_caption

    epochs = train_info.get("epochs")
    return grid_caption(str(train_info.get("run_label") or family), str(train_info.get("run_id") or "-"),
                        int(ev["seed"]), epochs, epochs)


def _log_sample_grid(c, train_info: dict[str, Any], png: Path) -> None:
    """Evaluate's grid as the run's image ``eval/samples`` at step = epochs trained (beside the train grids)."""
    if png.exists():
        from PIL import Image

        from pipelines.lineage import EVAL_SAMPLES_KEY, log_grid

        with Image.open(png) as grid:
            grid.load()
            log_grid(c, train_info["run_id"], grid, EVAL_SAMPLES_KEY, int(train_info.get("epochs") or 0))


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
