"""Every path the pipeline reads or writes, named once (kedro's catalog.yml idea, in Python).

A path is an entry: a name, a template relative to the project root with `{dataset}` and `{family}`
placeholders, and whether it is a file or a folder. Code asks for `path(name, root, dataset, family)`
(or the named helpers below); the stage table (`pipelines.stages`) names its inputs and outputs by entry,
and dvc.yaml is rendered from the same templates with `${data.name}` / `${item}` filled in. Nothing else
in `pipelines/` builds an output path by hand.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import GenforgeError

# a data set, family or model name becomes one folder name: it may not hold a separator, start with . or -,
# or be . or .. (so no name can reach outside models/, reports/, data/prepared/ or outputs/)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(kind: str, value: object) -> str:
    """`value` when it is a plain folder name (``SAFE_NAME``, no ".."), else a GenforgeError naming `kind`
    (e.g. "--family", "data.name"). Every path below is built through here, so a stage, a command or the
    Prefect flow cannot be handed a name that leaves the project."""
    if not isinstance(value, str) or not SAFE_NAME.match(value) or ".." in value:
        raise GenforgeError(f"{kind} {value!r} must be a plain name (letters, digits, . _ -, starting with a letter "
                            f"or digit, no '..'): it names a folder inside the project and may not leave it")
    return value


@dataclass(frozen=True)
class Entry:
    """One named path: `template` is POSIX, relative to the project root; `folder` tells DVC-style outputs
    (a whole folder) from single files."""

    name: str
    template: str
    folder: bool
    doc: str

    def format(self, dataset: str = "", family: str = "") -> str:
        """The relative POSIX path with the placeholders filled (for dvc.yaml: `${data.name}`, `${item}`)."""
        if ("{dataset}" in self.template and not dataset) or ("{family}" in self.template and not family):
            raise ValueError(f"catalog entry {self.name!r} ({self.template}) needs "
                             f"{'a dataset' if not dataset else 'a family'}")
        return self.template.format(dataset=dataset, family=family)


_ENTRIES = [
    # data
    Entry("raw", "data/raw", True, "downloads of sources that need a network (torchvision:<Name>)"),
    Entry("source_fingerprint", "data/sources/{dataset}.json", False,
          "what data.source holds now (per-file path, size, sha256; or the package version of an embedded set)"),
    Entry("prepared", "data/prepared/{dataset}", True, "the prepared data set: train.npz, test.npz, meta.json"),
    Entry("prepared_meta", "data/prepared/{dataset}/meta.json", False, "the DataSpec, per-file sha256, data_sha256"),
    Entry("prepared_train", "data/prepared/{dataset}/train.npz", False, "train split"),
    Entry("prepared_test", "data/prepared/{dataset}/test.npz", False, "test split"),
    Entry("validation_report", "reports/{dataset}/validation.json", False, "the validation suite's result"),
    # one family's model
    Entry("model_dir", "models/{dataset}/{family}", True, "everything train and export write for one family"),
    Entry("model", "models/{dataset}/{family}/model.pt", False, "final weights (state dict)"),
    Entry("model_config", "models/{dataset}/{family}/config.json", False, "the family's config"),
    Entry("train_info", "models/{dataset}/{family}/train.json", False, "training record: run id, fingerprint, loss"),
    Entry("checkpoints", "models/{dataset}/{family}/checkpoints", True, "epoch-NNNN.pt, resumed after a kill"),
    Entry("train_samples", "models/{dataset}/{family}/samples", True, "per-epoch sample grids"),
    Entry("onnx", "models/{dataset}/{family}/onnx", True, "ONNX graphs, sampler.json, parity.json"),
    Entry("registered", "models/{dataset}/{family}/registered.json", False, "the MLflow version register made"),
    # one family's reports
    Entry("report_dir", "reports/{dataset}/{family}", True, "evaluation and promotion reports of one family"),
    Entry("metrics", "reports/{dataset}/{family}/metrics.json", False, "the full evaluation report (each value with "
                                                                       "its setting)"),
    Entry("plots", "reports/{dataset}/{family}/plots", True, "evaluation plots, PNG (DVC plots)"),
    Entry("promotion", "reports/{dataset}/{family}/promotion.json", False, "the promotion gate's decision"),
    # what git versions beside the code (not ignored, DVC `cache: false`): small numbers and curves a reviewer
    # compares between commits with `dvc metrics diff` / `dvc plots diff` (pipelines/versioned.py)
    Entry("summary", "metrics/{dataset}/{family}/summary.json", False,
          "flat numeric metrics summary (DVC metrics): the registry's summary outputs and training's numbers"),
    Entry("loss_curves", "metrics/{dataset}/{family}/loss", True, "per-epoch mean of each training loss, one CSV "
                                                                  "each (DVC plots)"),
    Entry("roc_curve", "metrics/{dataset}/{family}/roc.csv", False, "ROC of the anomaly score, all anomaly sets "
                                                                    "together (DVC plots; header only without one)"),
    # caches and products outside the stage graph
    Entry("classifier_cache", "models/classifiers", True, "domain classifiers, keyed by data sha256"),
    Entry("generator_cache", ".genforge/models", True, "ONNX models fetched from the registry for serving"),
    Entry("outputs", "outputs", True, "samples `genforge run` generates from each champion"),
    Entry("locks", ".genforge/locks", True, "inter-process locks: one per data set, per family, and the main run"),
]
CATALOG: dict[str, Entry] = {e.name: e for e in _ENTRIES}


def entry(name: str) -> Entry:
    """The catalog entry `name`; KeyError naming the known entries."""
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"no catalog entry {name!r}; known: {', '.join(CATALOG)}") from None


def path(name: str, root: Path, dataset: str = "", family: str = "") -> Path:
    """Absolute path of entry `name` under the project `root` (`dataset` and `family` checked by `check_name`)."""
    if dataset:
        check_name("data set name", dataset)
    if family:
        check_name("family", family)
    return Path(root) / entry(name).format(dataset, family)


# named helpers, for readable call sites
def prepared_dir(root: Path, dataset: str) -> Path:
    return path("prepared", root, dataset)


def prepared_files(root: Path, dataset: str) -> list[Path]:
    """meta.json, train.npz, test.npz of the prepared data set."""
    return [path(n, root, dataset) for n in ("prepared_meta", "prepared_train", "prepared_test")]


def source_fingerprint_path(root: Path, dataset: str) -> Path:
    return path("source_fingerprint", root, dataset)


def raw_dir(root: Path) -> Path:
    return path("raw", root)


def validation_report(root: Path, dataset: str) -> Path:
    return path("validation_report", root, dataset)


def model_dir(root: Path, dataset: str, family: str) -> Path:
    return path("model_dir", root, dataset, family)


def report_dir(root: Path, dataset: str, family: str) -> Path:
    return path("report_dir", root, dataset, family)


def classifier_cache(root: Path) -> Path:
    return path("classifier_cache", root)


def generator_cache(root: Path) -> Path:
    return path("generator_cache", root)


def outputs_dir(root: Path, model: str) -> Path:
    """Where `genforge run` writes the samples of registered model `model` (`<dataset>-<family>`)."""
    return path("outputs", root) / check_name("model name", model)


def lock_path(root: Path, dataset: str = "", family: str = "") -> Path:
    """The lock of one family's stages (`<dataset>-<family>.lock`), of a data set's stages (`data-<dataset>.lock`)
    or, with neither, of the project's main run (`run.lock`)."""
    folder = path("locks", root)
    if family:
        return folder / f"{check_name('data set name', dataset)}-{check_name('family', family)}.lock"
    return folder / (f"data-{check_name('data set name', dataset)}.lock" if dataset else "run.lock")


def file_name(name: str) -> str:
    """The last component of entry `name` (e.g. "model.pt"), for code handed a folder rather than a root."""
    return entry(name).template.rsplit("/", 1)[-1]


class Layout:
    """The catalog bound to one (root, dataset[, family]): `Layout(root, "digits", "vae").model` is
    `<root>/models/digits/vae/model.pt`; any entry name is an attribute."""

    def __init__(self, root: Path, dataset: str, family: str = "") -> None:
        self.root, self.dataset, self.family = Path(root), dataset, family

    def __getattr__(self, name: str) -> Path:
        if name.startswith("_") or name not in CATALOG:
            raise AttributeError(f"no catalog entry {name!r}; known: {', '.join(CATALOG)}")
        return path(name, self.root, self.dataset, self.family)
