"""MLflow access for the stages: one `MlflowClient` and explicit run ids (the fluent API is not
thread-safe under Prefect's thread pool, so nothing here touches `mlflow.start_run`)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pipelines.config import project_root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def client():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


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


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i:i + 500])


def log_artifact(c, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    c.log_artifact(run_id, str(path), artifact_path)
