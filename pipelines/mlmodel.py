"""A model version's source: the MLflow model directory of serving.pyfunc, logged as an MLflow LoggedModel.

`register` calls ``log_model`` and creates the version from ``models:/<model_id>``: the version then has an
``MLmodel`` (``mlflow.pyfunc.load_model("models:/<name>@champion")``, ``mlflow models serve``), the MLflow
UI lists it under the experiment's Logged models (linked to the training run, with its params and the
evaluation metrics), and its source names no path of the workspace: the files live where the tracking
store puts the logged model (``<experiment artifact root>/models/<model_id>/artifacts``; with
``mlflow server`` that is ``mlflow-artifacts:/...``).

Crash safety: the LoggedModel carries the content hash register computed (``registry_state.CONTENT_TAG``)
and stays PENDING until every file is uploaded; a rerun of register for the same run and content reuses it
(uploading again when it is not READY), so a crash never leaves a second copy.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from contracts.io import tree_sha256
from pipelines import catalog, registry_state
from serving.pyfunc import CHECKPOINT_DIR, ONNX_PATH, save_model_dir

CHECKPOINT_ENTRIES = ("model", "model_config", "train_info")  # the catalog entries copied into checkpoint/


def checkpoint_files(paths: catalog.Layout) -> list[Path]:
    """model.pt, config.json, train.json of `paths`: what goes into the version's ``checkpoint/``."""
    return [getattr(paths, e) for e in CHECKPOINT_ENTRIES]


def file_digests(paths: catalog.Layout) -> dict[str, str]:
    """sha256 of every genforge file of the version, keyed by its path inside the model directory
    (``checkpoint/model.pt``, ``artifacts/onnx/sampler.json``, ...): the version's FILES_TAG."""
    files = tree_sha256(paths.model_dir, [catalog.file_name(e) for e in CHECKPOINT_ENTRIES])
    return ({f"{CHECKPOINT_DIR}/{k}": v for k, v in files.items()}
            | {f"{ONNX_PATH}/{k}": v for k, v in tree_sha256(paths.onnx).items()})


def _reusable(c, experiment_id: str, run_id: str, content: str):
    """The LoggedModel an earlier register of this run made for this content (READY first), or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = c.search_logged_models([experiment_id], filter_string=(
            f"source_run_id = '{run_id}' AND tags.`{registry_state.CONTENT_TAG}` = '{content}'"))
    except MlflowException:
        return None
    found = sorted(found, key=lambda m: (str(m.status) != "READY", m.creation_timestamp))
    return found[0] if found else None


def log_model(c, run_id: str, name: str, onnx_dir: Path, checkpoint: Sequence[Path], content: str,
              tags: Mapping[str, str], metrics: Mapping[str, Any]) -> str:
    """Log the MLflow model directory of the export folder `onnx_dir` (plus the `checkpoint` files) as a
    LoggedModel of the run's experiment and return its model_id. ``tags`` go on the LoggedModel (with the
    content hash), the run's params become its params, and the numeric ``metrics`` (metrics.json's summary)
    are logged to the run as ``eval/<name>`` at step 0 linked to it, as MLflow's own ``log_model`` links a
    run's metrics. Reuses the LoggedModel of an earlier call for the same run and content (see above)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    run = c.get_run(run_id)
    experiment_id = run.info.experiment_id
    model = _reusable(c, experiment_id, run_id, content)
    if model is not None and str(model.status) == "READY":
        return model.model_id
    sampler = json.loads((Path(onnx_dir) / "sampler.json").read_text())
    tags = {**{k: str(v) for k, v in tags.items()}, registry_state.CONTENT_TAG: content}
    if model is None:
        model = c.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags,
                                      model_type=f"genforge/{sampler.get('kind')}",
                                      params={k: str(v) for k, v in run.data.params.items()})
    ids = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                model_id=model.model_id)
    with tempfile.TemporaryDirectory(prefix="genforge-register-") as tmp:
        local = save_model_dir(Path(onnx_dir), Path(tmp) / "model", checkpoint, mlflow_model=ids,
                               metadata_={"genforge": {"name": name, "sampler": sampler.get("kind"),
                                                       "family": sampler.get("family"), **tags}})
        c.log_model_artifacts(model.model_id, str(local))
    # each step once, also when a rerun completes a PENDING model an earlier register left
    if not model.metrics:
        now = int(time.time() * 1000)
        linked = [Metric(f"eval/{k}", float(v), now, 0, model_id=model.model_id) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(linked), 500):
            c.log_batch(run_id, metrics=linked[i:i + 500])
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    if model.model_id not in {o.model_id for o in outputs}:
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id
