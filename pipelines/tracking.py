"""MLflow access for the stages: one `MlflowClient` and explicit run ids (the fluent API is not
thread-safe under Prefect's thread pool, so nothing here touches `mlflow.start_run`)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines.config import project_root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


# seconds a process waits for another one creating or migrating the SQLite store (a few seconds each)
STORE_LOCK_WAIT = 300.0
_ready: set[str] = set()  # store URIs this process has opened (schema created/migrated) under the lock


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URI (None for other stores or an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def client():
    """An MlflowClient on the project's store. The first use of a SQLite store in each process (MLflow creates
    and migrates the schema there, per process and without a lock of its own) runs under the file lock
    ``<db>.lock`` beside the database, so processes starting together (parallel stages, CI jobs, a scheduled
    run overlapping a manual one) migrate one after the other instead of colliding and corrupting it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is None or uri in _ready:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    from contracts.io import exclusive

    with exclusive(db.with_name(db.name + ".lock"), f"the MLflow store {db} (creating its schema)",
                   wait=STORE_LOCK_WAIT):
        quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]  # "Creating initial tables"
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.WARNING)
        try:
            c = MlflowClient(tracking_uri=uri, registry_uri=uri)
            c._tracking_client.store  # noqa: B018 (creates the tables / runs the migrations now, under the lock)
            c._get_registry_client().store  # noqa: B018
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)
        _ready.add(uri)
    return c


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # a local artifact root under the project keeps artifacts next to the SQLite store
    artifact_root = None
    if tracking_uri().startswith("sqlite:"):
        artifact_root = (project_root() / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=artifact_root)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int, logged: dict[str, int] | None = None) -> None:
    """Log `metrics` at `step`, leaving out keys `logged` (`last_steps`) already has at this step or later."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    logged = logged or {}
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > logged.get(k, -1)]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i:i + 500])


def log_artifact(c, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    c.log_artifact(run_id, str(path), artifact_path)


def last_steps(c, run_id: str) -> dict[str, int]:
    """{metric key: the highest step logged} of a run: a resumed training skips the steps its killed
    predecessor logged after the last checkpoint, so no step appears twice in a metric's history."""
    keys = c.get_run(run_id).data.metrics.keys()
    return {k: max((m.step for m in c.get_metric_history(run_id, k)), default=-1) for k in keys}
