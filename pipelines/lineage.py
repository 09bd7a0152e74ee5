"""What MLflow shows about a training run besides its metrics: the data set it read, its name, its experiment.

- The prepared data set is the run's dataset input (``MlflowClient.log_inputs``): name = data set name,
  digest = the first 12 hex digits of ``data_sha256`` (MLflow keeps at most 36 characters; the full value
  is the input tag ``genforge.data_sha256``), source = the ``data.source`` setting, a schema of the stored
  arrays and a profile (split sizes, classes). Nothing loads the arrays: ``meta.json`` holds all of it.
  The validation result (``reports/<ds>/validation.json``) goes to the input's tags.
- Runs are named ``vae v3 · latent16 · w8 · 20 ep``: family, the registry version the run will most likely
  become (the model's highest version + 1), up to two architecture fields, epochs.
- Experiments carry a Markdown description (``mlflow.note.content``) and their kind (``mlflow.experimentKind``
  = ``custom_model_development``, "Machine learning", not GenAI). MLflow 3.17's UI picks the view from its own
  GenAI / Model-training switch (GenAI by default) rather than this tag, so links made here (``ui_url``)
  carry ``?workflowType=machine_learning``.
- Sample grids are captioned, upscaled images logged with ``log_image(key, step)``: ``train/samples`` at
  step = epochs done (0: the untrained model, where the UI's slider opens) and ``eval/samples``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from pipelines import catalog

DIGEST_CHARS = 12  # MLflow stores at most 36; genforge names data versions by 12 hex digits elsewhere too
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3 UI (ExperimentKind enum in the JS bundle)
EXPERIMENT_KIND = "custom_model_development"  # "Machine learning": the model-training view, not GenAI's
NOTE_TAG = "mlflow.note.content"  # the description the UI shows and edits
RUN_LABEL_TAG = "genforge.run_label"  # "vae v3": the grid captions of a resumed run reuse it

# architecture fields worth a run's name, in order of preference, with their short form; the first two a
# family's config has (and that are not 0/False/None) are used
HEADLINE_FIELDS = (("latent_dim", "latent{}"), ("width", "w{}"), ("ngf", "ngf{}"), ("base_channels", "ch{}"),
                   ("timesteps", "T{}"), ("channels", "ch{}"), ("layers", "{} layers"), ("hidden", "hidden{}"),
                   ("blocks", "{} blocks"), ("scales", "{} scales"), ("d_model", "d{}"), ("n_layers", "{} layers"))


class GenforgeDatasetSource(DatasetSource):
    """Where a prepared data set came from: the ``data.source`` setting (``digits``, ``folder:<dir>``, ...) and
    the prepared folder relative to the project root. Source type ``genforge``."""

    def __init__(self, setting: str, prepared: str):
        self.setting, self.prepared = str(setting), str(prepared)

    @staticmethod
    def _get_source_type() -> str:
        return "genforge"

    def load(self) -> str:
        """The prepared folder under the current project (``data/prepared/<name>``), as a local path string."""
        from pipelines.config import project_root

        return str(project_root() / self.prepared)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # never guessed from a bare string: genforge builds it explicitly

    @classmethod
    def _resolve(cls, raw_source: Any) -> "GenforgeDatasetSource":
        raise NotImplementedError("a genforge source is built from meta.json, not resolved from a string")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.setting, "prepared": self.prepared}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> "GenforgeDatasetSource":
        return cls(source_dict.get("source", ""), source_dict.get("prepared", ""))


def _register_source() -> None:
    """So ``mlflow.data.get_source(run.inputs.dataset_inputs[0])`` gives a GenforgeDatasetSource back."""
    from mlflow.data.dataset_source_registry import get_registered_sources, register_dataset_source

    if GenforgeDatasetSource not in get_registered_sources():
        register_dataset_source(GenforgeDatasetSource)


_register_source()


class PreparedDataSet(MetaDataset):
    """A MetaDataset (schema, no data) with a profile: split sizes, sample shape, classes."""

    def __init__(self, source: DatasetSource, name: str, digest: str, schema: Any, profile: dict[str, Any]):
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def _schema(meta: dict[str, Any]):
    """Tensor specs of the stored arrays: the samples (``images``/``tokens``, -1 x sample shape) and labels."""
    import numpy as np
    from mlflow.types import Schema, TensorSpec

    from contracts.modalities import get_modality

    modality = str(meta.get("modality", "image"))
    key = get_modality(modality).SAMPLE_KEY
    return Schema([TensorSpec(np.dtype(str(meta.get("dtype", "uint8"))), (-1, *[int(s) for s in meta["shape"]]), key),
                   TensorSpec(np.dtype("int64"), (-1,), "labels")])


def validation_status(root: Path, dataset: str, sha256: str) -> dict[str, str]:
    """Input tags from ``reports/<ds>/validation.json``: ``genforge.validation`` = passed / failed: <checks> /
    stale (a report of other data) / missing, and the number of checks run."""
    path = catalog.validation_report(root, dataset)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"genforge.validation": "missing"}
    if report.get("data_sha256") != sha256:
        status = "stale (the report is for other data)"
    elif report.get("success"):
        status = "passed"
    else:
        status = "failed: " + "; ".join(str(f) for f in report.get("failed") or [])
    checks = report.get("checks")
    count = len(checks) if isinstance(checks, list) else checks
    tags = {"genforge.validation": status[:500]}
    if count is not None:
        tags["genforge.validation_checks"] = str(count)
    return tags


def dataset_input(root: Path, ds: Any, context: str = "training"):
    """The ``DatasetInput`` of the prepared data set ``ds`` (a ``PreparedDataset``: ``name``, ``sha256``,
    ``meta``), tagged with ``mlflow.data.context``, the full sha256 and the validation status."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    meta = ds.meta
    counts = meta.get("counts") or {}
    profile = {"modality": meta.get("modality", "image"), "shape": list(meta.get("shape") or []),
               "dtype": meta.get("dtype"), "num_classes": meta.get("num_classes"),
               **{f"{split}_samples": n for split, n in counts.items()}, "data_sha256": ds.sha256}
    prepared = catalog.prepared_dir(Path("."), ds.name).as_posix()
    dataset = PreparedDataSet(GenforgeDatasetSource(meta.get("source", ""), prepared), name=ds.name,
                              digest=ds.sha256[:DIGEST_CHARS], schema=_schema(meta), profile=profile)
    tags = {MLFLOW_DATASET_CONTEXT: context, "genforge.data_sha256": ds.sha256,
            **validation_status(root, ds.name, ds.sha256)}
    return DatasetInput(dataset._to_mlflow_entity(), [InputTag(k, v) for k, v in tags.items()])


def log_dataset(c, run_id: str, root: Path, ds: Any, context: str = "training") -> None:
    """Log the prepared data set as a dataset input of ``run_id`` (MLflow keeps one per data set and run)."""
    c.log_inputs(run_id, datasets=[dataset_input(root, ds, context)])


def next_version(c, model_name: str) -> int:
    """The version number the model's next registration gets: its highest version + 1 (1 for a new model)."""
    try:
        found = c.search_model_versions(f"name = '{model_name}'", max_results=1, order_by=["version_number DESC"])
    except Exception:  # noqa: BLE001 (a registry that cannot be searched: the name falls back to "v1")
        return 1
    return int(found[0].version) + 1 if found else 1


def run_label(family: str, version: int) -> str:
    """``vae v3``: the family and the version the run will most likely become."""
    return f"{family} v{version}"


def run_name(label: str, config: dict[str, Any], epochs: int) -> str:
    """``vae v3 · latent16 · w8 · 20 ep``: the label, up to two headline architecture fields, epochs."""
    parts = [label]
    for key, form in HEADLINE_FIELDS:
        value = config.get(key)
        if len(parts) < 3 and value not in (None, 0, False, "") and not isinstance(value, (dict, list, tuple)):
            parts.append(form.format(value))
    return " · ".join([*parts, f"{epochs} ep"])


def describe_experiment(c, experiment_id: str, dataset: str, family: str, source: str) -> None:
    """Give the experiment a description and the model-training view, leaving values already set alone (a
    description someone edited in the UI stays)."""
    tags = c.get_experiment(experiment_id).tags
    if EXPERIMENT_KIND_TAG not in tags:
        c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if NOTE_TAG not in tags:
        c.set_experiment_tag(experiment_id, NOTE_TAG, (
            f"Training runs of the **{family}** family on the **{dataset}** data set (`data.source: {source}`).\n\n"
            f"Each run logs its parameters, the prepared data set as a dataset input (digest = data sha256), "
            f"losses per step and per epoch, a sample grid per epoch (the `train/samples` images: move the step "
            f"slider) and, after `genforge stage evaluate`, the `eval/*` metrics and plots. A run named "
            f"`{family} vN` becomes version N of the registered model `{dataset}-{family}` when it is registered."))


def grid_caption(label: str, run_id: str, seed: int, epoch: int | None = None, epochs: int | None = None) -> str:
    """``vae v3 · run 1a2b3c4d · seed 0 · epoch 3/20`` (the epoch part only when given)."""
    parts = [label, f"run {run_id[:8]}", f"seed {seed}"]
    if epoch is not None:
        parts.append(f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}")
    return " · ".join(parts)


TRAIN_SAMPLES_KEY = "train/samples"  # the per-epoch grids (step = epoch): the run page's image slider
EVAL_SAMPLES_KEY = "eval/samples"  # evaluate's grid (step = the epochs trained)


def logged_image_steps(c, run_id: str, key: str) -> set[int]:
    """Steps at which ``key`` already has an image in the run (MLflow names them
    ``images/<key, / as ~>+step+<n>+timestamp+...``): a resumed training does not log an epoch twice."""
    prefix = key.replace("/", "~") + "+step+"
    steps = set()
    for item in c.list_artifacts(run_id, "images"):
        name = item.path.rsplit("/", 1)[-1]
        if name.startswith(prefix):
            step = name[len(prefix):].split("+", 1)[0]
            if step.isdigit():
                steps.add(int(step))
    return steps


def write_grid(images: Any, path: Path, caption: str, nrow: int = 8):
    """Write the captioned grid (``evaluation.plots.captioned_grid``) of ``images`` (N x C x H x W, uint8 or
    float in [0, 1]) to ``path`` as a PNG, atomically; returns the PIL image."""
    import io

    from contracts.io import atomic_write_bytes
    from evaluation.plots import captioned_grid

    grid = captioned_grid(images, caption, nrow=nrow)
    png = io.BytesIO()
    grid.save(png, format="PNG")
    atomic_write_bytes(path, png.getvalue())
    return grid


def log_grid(c, run_id: str, grid: Any, key: str, step: int) -> None:
    """Log ``grid`` (a PIL image) to the run as image ``key`` at ``step``: the run page's image slider (MLflow
    writes the PNG and a compressed preview under ``images/``)."""
    c.log_image(run_id, grid, key=key, step=int(step), synchronous=True)


# MLflow 3.17's UI has one GenAI / Model-training switch for all experiments (kept in the browser, GenAI by
# default); with it on, `mlflow.experimentKind` is not consulted, so links carry the switch themselves
ML_VIEW = "workflowType=machine_learning"


def ui_url(base: str, experiment_id: str | None = None, run_id: str | None = None, tab: str | None = None) -> str:
    """A link into the MLflow UI at ``base`` (e.g. ``http://127.0.0.1:5000``) that opens the model-training
    view: the experiment's runs, a run, or a run's tab (``model-metrics`` for the loss charts and the
    per-epoch sample slider, ``artifacts``)."""
    path = "#/experiments"
    if experiment_id is not None:
        path += f"/{experiment_id}"
        if run_id is not None:
            path += f"/runs/{run_id}" + (f"/{tab}" if tab else "")
    return f"{base.rstrip('/')}/{path}?{ML_VIEW}"
