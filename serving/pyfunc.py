"""An exported model as an MLflow pyfunc model: the ONNX sampler of any kind, torch-free and pickle-free.

Every registered version is an MLflow model directory (``save_model_dir`` writes it, the register stage logs
it as an MLflow LoggedModel)::

    MLmodel                       flavor python_function, loader mlflow.pyfunc.loaders.code_model (MLflow's
                                  "models from code": serving/pyfunc_model.py runs at load, nothing is
                                  unpickled), the signature and the input example
    pyfunc_model.py               that entry file
    artifacts/onnx/               the export folder: sampler.json, <graph>.onnx, parity.json. `genforge generate`
                                  downloads exactly this folder (ONNX_PATH), so both read the same files
    checkpoint/                   model.pt, config.json, train.json (PyTorch side; never read here)
    code/serving, code/contracts  the sampler code the version was registered with (MLflow puts code/ first on
                                  sys.path when it loads the model in a fresh process)
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

Input: a pandas DataFrame, or a dict / list of dicts (MLflow makes it one), one request per row; the samples of
the rows are concatenated in row order. Columns (the signature; ``None``/NaN = not given):

    n           int > 0, required          samples to draw
    seed        int >= 0, default 0
    label       int or class name          conditional models only (None: sample i gets class i % num_classes)
    batch_size  int > 0, default 256       the generator's shard size: the noise of shard k comes from
                                           numpy.random.default_rng([seed, k]), so n, seed, label, batch_size
                                           and the options give exactly the samples of `genforge generate`
    steps, eta, clip (ddim), temperature (flow): sampler options (contracts.samplers ``SAMPLING``), default
                the model's; every option of every kind is in the signature, so one the model's sampler does
                not take is an error naming those it takes (MLflow drops columns outside the signature
                with a warning)

In a request of several rows every row gives the same integer columns (a missing value makes pandas store
the column as floats, which MLflow's schema check refuses for a long column).

Output: numpy array, (sum of n) x sample shape, in the data's stored dtype and range, exactly as the generator's
shards hold them (images: uint8 N x C x H x W, ``round(x * 255)``). A modality whose module defines
``to_records`` (tokens) answers with records instead: a DataFrame with one row per sample and the columns
``label`` (int or None), ``class`` (name or None) and ``text`` (the decoded string), what its JSONL shards hold.

Errors: a bad request raises ``PredictError``, an ``MlflowException`` (HTTP 400 from ``mlflow models serve``)
and a ``ServingError``, whose message names the field and, with several rows, the row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from contracts.errors import ServingError
from contracts.modalities import get_modality
from contracts.samplers import SPEC_KINDS, as_spec
from serving.generator import (GenerationError, _check_label, _is_int, _load_session, _positive_int, _probe,
                               _with_sampling, load_model_dir, sample_spec, select_provider, shard_samples)
from serving.ort_parallel import load_sessions
from serving.resolve import MODEL_ONNX as ONNX_PATH  # where MLflow puts the artifact inside the model directory

ONNX_ARTIFACT = "onnx"                 # the pyfunc artifact name of the export folder
CHECKPOINT_DIR = "checkpoint"          # model.pt, config.json, train.json inside the model directory
ENTRY = Path(__file__).with_name("pyfunc_model.py")
DEFAULT_BATCH_SIZE = 256               # `genforge generate --batch-size` default
REQUEST = ("n", "seed", "label", "batch_size")
_JSON_TYPES = {"int": "long", "float": "double", "bool": "boolean", "str": "string"}


class PredictError(MlflowException, ServingError):
    """A predict request the model cannot serve (bad n, seed, label, batch size or sampler option)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def sampler_options() -> dict[str, str]:
    """{option: MLflow column type} over every sampler kind (contracts.samplers ``SAMPLING``), e.g.
    {"steps": "long", "eta": "double", "clip": "boolean", "sampler": "string", "temperature": "double", ...}."""
    options: dict[str, str] = {}
    for cls in SPEC_KINDS.values():
        types = {f.name: str(f.type).split("|")[0].strip() for f in dataclasses.fields(cls)}
        for option, field in cls.SAMPLING.items():
            options.setdefault(option, _JSON_TYPES.get(types[field], "double"))
    return options


class OnnxSampler:
    """An export folder (sampler.json + graphs) loaded in ONNX Runtime, answering predict requests.

    ``provider``: auto | cpu | cuda (serving.generator.select_provider); ``threads``: CPU threads
    (None: every CPU), each computing a slice of the batch (serving.ort_parallel). Raises GenerationError when
    the folder is not a servable model."""

    def __init__(self, onnx_dir: str | Path, provider: str = "auto", threads: int | None = None):
        raw, graph_files, self.fingerprint = load_model_dir(Path(onnx_dir))
        self.raw = raw
        self.data = sample_spec(raw)
        self.spec = as_spec(raw)
        self.modality = get_modality(self.data.modality)
        providers, _ = select_provider(provider)
        self.sessions = load_sessions(graph_files, lambda path, t: _load_session(path, providers, t), threads,
                                      "batch", self.spec.kind, providers)  # threads split the batch (ort_parallel)
        _probe(self.spec, self.sessions, self.data.shape, self.data.num_classes)

    def samples(self, n: int, seed: int = 0, label: int | str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                sampling: Mapping[str, Any] | None = None) -> np.ndarray:
        """n samples in the stored dtype (images uint8 n x C x H x W), exactly the shards `genforge generate`
        writes for the same arguments. Raises GenerationError naming the bad argument."""
        return self._draw(*self._check(n, seed, label, batch_size, sampling))[0]

    def predict(self, model_input: Any) -> Any:
        """The samples of every request row, concatenated (see the module doc): an array, or records for a
        modality with ``to_records``. Every row is checked before any is drawn. Raises PredictError."""
        rows = _rows(model_input)
        if not rows:
            raise PredictError("predict input has no rows: give at least {'n': N}")
        jobs = []
        for i, row in enumerate(rows):
            where = f"row {i}: " if len(rows) > 1 else ""
            unknown = sorted(set(row) - set(REQUEST) - set(sampler_options()))
            if unknown:
                raise PredictError(f"predict input: {where}unknown field(s) {', '.join(map(repr, unknown))}; "
                                   f"fields: {', '.join((*REQUEST, *sampler_options()))}")
            if row.get("n") is None:
                raise PredictError(f"predict input: {where}n is required (the number of samples)")
            options = {k: row[k] for k in sampler_options() if row.get(k) is not None}
            try:
                jobs.append(self._check(row["n"], _or(row.get("seed"), 0), row.get("label"),
                                        _or(row.get("batch_size"), DEFAULT_BATCH_SIZE), options))
            except GenerationError as e:
                raise PredictError(f"predict input: {where}{e}") from None
        drawn = [self._draw(*job) for job in jobs]
        return present(self.modality, self.data, np.concatenate([x for x, _ in drawn]),
                       np.concatenate([y for _, y in drawn]))

    def _check(self, n, seed, label, batch_size, sampling) -> tuple:
        """The request as the generator validates it: (n, seed, label index, batch_size, spec with the options)."""
        n = _positive_int(n, "n")
        batch_size = _positive_int(batch_size, "batch_size")
        if not _is_int(seed) or seed < 0:
            raise GenerationError(f"seed must be an integer >= 0, got {seed!r}")
        spec, _ = _with_sampling(self.spec, sampling)
        return n, int(seed), _check_label(label, spec, self.data), batch_size, spec

    def _draw(self, n: int, seed: int, label: int | None, batch_size: int, spec) -> tuple[np.ndarray, np.ndarray]:
        parts, labels = [], []
        for k in range(math.ceil(n / batch_size)):
            count = min(batch_size, n - k * batch_size)
            x, y = shard_samples(spec, self.sessions, k, count, seed=seed, batch_size=batch_size, label=label,
                                 num_classes=self.data.num_classes, image_shape=self.data.shape)
            parts.append(self.modality.from_model(x))
            labels.append(y)
        return np.concatenate(parts), np.concatenate(labels)


RECORD_COLUMNS = ("label", "class", "text")  # a records modality's predict output (contracts.modalities.tokens)


def present(modality: Any, data: Any, samples: np.ndarray, labels: np.ndarray) -> Any:
    """What predict returns for stored ``samples`` and their int64 ``labels`` (-1: none): the array itself,
    or, when the modality module defines ``to_records(samples, labels, vocab, class_names)``, a DataFrame of
    its records (columns RECORD_COLUMNS)."""
    to_records = getattr(modality, "to_records", None)
    if to_records is None:
        return samples
    import pandas as pd

    return pd.DataFrame(to_records(samples, labels, data.vocab, data.class_names), columns=list(RECORD_COLUMNS),
                        dtype=object)  # None stays None (JSON null), never NaN


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _plain(value: Any) -> Any:
    """A cell as a plain Python value: None for None/NaN, int for integral numpy/float values of int columns."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _rows(model_input: Any) -> list[dict[str, Any]]:
    """The request rows of a DataFrame, a dict (of scalars or of equal-length lists) or a list of dicts."""
    import pandas as pd

    if isinstance(model_input, Mapping):
        values = list(model_input.values())
        if values and all(isinstance(v, (list, tuple, np.ndarray, pd.Series)) for v in values):
            model_input = pd.DataFrame(dict(model_input))
        else:
            return [{str(k): _plain(v) for k, v in model_input.items()}]
    if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
        return [{str(k): _plain(v) for k, v in r.items()} for r in model_input]
    if isinstance(model_input, pd.DataFrame):
        return [{str(k): _plain(v) for k, v in rec.items()} for rec in model_input.to_dict("records")]
    raise PredictError(f"predict input must be a DataFrame, a dict or a list of dicts with the fields "
                       f"{', '.join((*REQUEST, *sampler_options()))}; got {type(model_input).__name__}")


# --- the MLflow model directory ----------------------------------------------------------------
def signature(sampler_json: Mapping[str, Any]):
    """The MLflow ModelSignature of a model whose sampler.json is ``sampler_json``: the request columns above
    in, a tensor (-1, *sample shape) of the stored dtype out (records: the columns label, class, text)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    data = sample_spec(sampler_json)
    inputs = [ColSpec("long", "n"), ColSpec("long", "seed", required=False),
              ColSpec(AnyType(), "label", required=False), ColSpec("long", "batch_size", required=False)]
    inputs += [ColSpec(kind, option, required=False) for option, kind in sampler_options().items()]
    if hasattr(get_modality(data.modality), "to_records"):  # records out (see ``present``)
        outputs = Schema([ColSpec("long", "label", required=False), ColSpec("string", "class", required=False),
                          ColSpec("string", "text")])
    else:
        outputs = Schema([TensorSpec(np.dtype(data.dtype), (-1, *data.shape))])
    return ModelSignature(inputs=Schema(inputs), outputs=outputs)


def input_example(sampler_json: Mapping[str, Any]) -> dict[str, Any]:
    """A request that shows the model's own fields: n, seed, label (conditional models) and its sampler's
    options at their defaults."""
    spec = as_spec(sampler_json)
    example: dict[str, Any] = {"n": 4, "seed": 0}
    if spec.conditional:
        example["label"] = 0
    # options whose default is "off" (None: top_k, top_p) are left out: MLflow cannot type a column of None
    example.update({k: v for k, v in spec.sampling_defaults().items() if v is not None})
    return example


def requirements() -> list[str]:
    """pip requirements of the pyfunc model: the versions installed here of what it imports."""
    reqs = []
    for dist in ("mlflow", "numpy", "pandas", ("onnxruntime-gpu", "onnxruntime")):
        for name in (dist if isinstance(dist, tuple) else (dist,)):
            try:
                reqs.append(f"{name}=={metadata.version(name)}")
                break
            except metadata.PackageNotFoundError:
                continue
    return reqs


@contextlib.contextmanager
def _quiet_mlflow():
    """No tqdm bar for MLflow's copy of the artifact and no INFO line about the input example (register's
    output stays one line per stage); an explicit MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR is respected."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    set_here = key not in os.environ
    if set_here:
        os.environ[key] = "false"
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
        if set_here:
            os.environ.pop(key, None)


def save_model_dir(onnx_dir: Path, dest: Path, extra_files: Iterable[Path] = (), metadata_: Mapping | None = None,
                   mlflow_model=None) -> Path:
    """Write the MLflow model directory of the export folder ``onnx_dir`` to ``dest`` (which must not exist or
    be empty): MLflow's ``pyfunc.save_model`` with the models-from-code entry, the folder as artifact
    ``onnx``, ``serving`` and ``contracts`` as code, the signature and input example; ``extra_files``
    are copied into ``checkpoint/``. ``mlflow_model``: an ``mlflow.models.Model`` carrying the LoggedModel's
    ids. Returns ``dest``."""
    import mlflow.pyfunc

    onnx_dir, dest = Path(onnx_dir), Path(dest)
    raw = json.loads((onnx_dir / "sampler.json").read_text())
    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="genforge-mlmodel-") as tmp, _quiet_mlflow():
        # MLmodel records where the entry file and the artifact came from: temp paths, never the workspace's
        staged, entry = Path(tmp) / ONNX_ARTIFACT, Path(tmp) / ENTRY.name
        shutil.copytree(onnx_dir, staged)
        shutil.copy2(ENTRY, entry)
        mlflow.pyfunc.save_model(
            path=str(dest), python_model=str(entry), artifacts={ONNX_ARTIFACT: str(staged)},
            code_paths=[str(package), str(package.parent / "contracts")], signature=signature(raw),
            input_example=input_example(raw), pip_requirements=requirements(), mlflow_model=mlflow_model,
            metadata=dict(metadata_ or {}), model_config={"provider": "auto", "threads": 0})
    if not (dest / ONNX_PATH / "sampler.json").is_file():  # `genforge generate` downloads exactly that folder
        raise ServingError(f"{dest}: MLflow did not put the artifact {ONNX_ARTIFACT!r} at {ONNX_PATH}")
    for junk in dest.rglob("__pycache__"):
        shutil.rmtree(junk, ignore_errors=True)
    if extra_files:
        (dest / CHECKPOINT_DIR).mkdir()
        for path in extra_files:
            shutil.copy2(path, dest / CHECKPOINT_DIR / Path(path).name)
    return dest
