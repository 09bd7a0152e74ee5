"""The stage graph, declared once: `source -> prepare -> validate -> per family: train -> evaluate -> export
-> register -> promote`.

Three drivers are derived from `STAGES`: the CLI's `genforge stage <name>` commands (pipelines/cli.py), the
Prefect tasks and their cache keys (pipelines/flows.py) and dvc.yaml (`genforge dvc-yaml`, rendered by
pipelines/dvcfile.py). Inputs and outputs are catalog entries (pipelines/catalog.py); the code a stage
depends on is computed from its module's imports (`code_deps`), never listed by hand.
"""
from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

# packages whose files are the project's code (a stage depends on those of them it imports)
PROJECT_PACKAGES = ("pipelines", "genmodels", "evaluation", "serving", "contracts")
CODE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Output:
    """One product of a stage: a catalog entry, and how DVC keeps it (`kind`: outs | metrics | plots;
    `cache: False` leaves it in git's hands: the path must not be ignored by git, or `git checkout` of another
    commit leaves a stale copy that `dvc checkout` cannot restore; `persist` keeps it across reruns; `plot`: a
    data plot's DVC properties, e.g. (("x", "epoch"), ("template", "linear")))."""

    entry: str
    cache: bool = True
    persist: bool = False
    kind: str = "outs"
    note: str = ""  # a comment beside it in dvc.yaml
    plot: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stage:
    """One stage. `target` is `module:function`, called `fn(params, root)` or, when `per_family`,
    `fn(params, root, family)`; it returns a JSON-able dict. `inputs`/outputs are catalog entries; `params`
    are the params.yaml keys it reads (`{family}` is the family); `family_code` means it runs the family's
    module (genmodels/<family>.py); `external` names state outside files it depends on ("mlflow");
    `cached` says whether Prefect may reuse a result; `always_changed` makes DVC run it every time;
    `progress_bar` means the function draws its own (`progress=` keyword)."""

    name: str
    target: str
    doc: str
    per_family: bool = False
    inputs: tuple[str, ...] = ()
    outputs: tuple[Output, ...] = ()
    params: tuple[str, ...] = ()
    family_code: bool = False
    external: tuple[str, ...] = ()
    cached: bool = True
    retries: int = 0
    always_changed: bool = False
    progress_bar: bool = False

    @property
    def module(self) -> str:
        return self.target.split(":")[0]

    def function(self) -> Callable[..., dict[str, Any]]:
        """The stage function, imported on use (so `genforge --help` stays fast)."""
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)

    def call(self, params: dict[str, Any], root: Path, family: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run the stage holding its lock (`catalog.lock_path`): a family's stages share one lock per
        (data set, family), the data stages one per data set. Another process holding it is a BusyError
        ("busy: ... in use by pid ... (command, since ...)") at once, not a wait: a stage can run for an hour,
        and a scheduled run overlapping a manual one must not queue up behind it unseen. The CLI, the Prefect
        flows and dvc.yaml (which calls the CLI) all come through here."""
        from contracts.io import exclusive
        from pipelines import catalog
        from pipelines.prepare import dataset_name

        dataset = dataset_name(params)
        if self.per_family:
            catalog.check_name("--family", family)
            what, lock = f"{dataset}/{family}", catalog.lock_path(root, dataset, family)
        else:
            what, lock = f"data set {dataset}", catalog.lock_path(root, dataset)
        fn = self.function()
        with exclusive(lock, what):
            return fn(params, root, family, **kwargs) if self.per_family else fn(params, root, **kwargs)

    def param_keys(self, family: str | None = None) -> list[str]:
        """The dotted params keys, `{family}` filled with `family` (DVC: `${item}`)."""
        return [p.format(family=family) if family is not None else p for p in self.params]


STAGES: tuple[Stage, ...] = (
    Stage("source", "pipelines.prepare:fingerprint_source",
          "Fingerprint data.source (folder:/idx: files' sizes and sha256) into data/sources/<name>.json; "
          "prepare reruns when it changes.",
          outputs=(Output("source_fingerprint", cache=False, persist=True),), params=("data.source",),
          cached=False, always_changed=True),
    Stage("prepare", "pipelines.prepare:prepare",
          "Read data.source and write data/prepared/<name>/ (train.npz, test.npz, meta.json).",
          inputs=("source_fingerprint",), outputs=(Output("prepared"),), params=("data",)),
    Stage("validate", "pipelines.validate:validate",
          "Check the prepared data (Great Expectations suite); write reports/<dataset>/validation.json.",
          inputs=("prepared",), outputs=(Output("validation_report"),), params=("validation",)),
    Stage("train", "pipelines.train:train",
          "Train one family on the validated data; resumes from the last checkpoint after a kill.",
          per_family=True, inputs=("prepared", "validation_report"),
          outputs=(Output("model"), Output("model_config"), Output("train_info"),
                   Output("checkpoints", persist=True,
                          note="kept across reruns, so a killed `dvc repro` resumes from the last epoch"),
                   Output("train_samples"),
                   Output("loss_curves", cache=False, kind="plots", plot=(("x", "epoch"), ("template", "linear")))),
          params=("train", "model.{family}"), family_code=True, progress_bar=True),
    Stage("evaluate", "pipelines.evaluate:evaluate",
          "Evaluate a trained family: reports/<dataset>/<family>/metrics.json and plots, logged to MLflow.",
          per_family=True, inputs=("prepared", "validation_report", "model", "model_config", "train_info"),
          outputs=(Output("metrics"), Output("summary", cache=False, kind="metrics"),
                   Output("roc_curve", cache=False, kind="plots",
                          plot=(("x", "fpr"), ("y", "tpr"), ("template", "simple"),
                                ("x_label", "false positive rate"), ("y_label", "true positive rate"))),
                   Output("plots", kind="plots")),
          params=("evaluation", "train.device", "train.holdout_classes"), family_code=True),
    Stage("export", "pipelines.registry:export",
          "Export the family's ONNX graphs and check parity with PyTorch (max abs error <= 1e-4).",
          per_family=True, inputs=("validation_report", "model", "model_config", "train_info"),
          outputs=(Output("onnx"),), params=("registry.max_parity_error", "registry.families", "train.seed"),
          family_code=True),
    Stage("register", "pipelines.registry:register",
          "Register the trained, evaluated, exported model in MLflow as <dataset>-<family> @challenger.",
          per_family=True,
          inputs=("validation_report", "model", "model_config", "train_info", "onnx", "metrics"),
          outputs=(Output("registered"),), external=("mlflow",), retries=2),
    Stage("promote", "pipelines.registry:promote",
          "Run the promotion gate (params.yaml: registry) on the latest registered version.",
          per_family=True, inputs=("validation_report", "registered"),
          outputs=(Output("promotion"),), params=("registry",), external=("mlflow",), cached=False),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
DATA_STAGES = tuple(s for s in STAGES if not s.per_family)
FAMILY_STAGES = tuple(s for s in STAGES if s.per_family)


def stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(BY_NAME)}") from None


# ---- code dependencies, computed --------------------------------------------------------------
def _module_file(module: str, root: Path = CODE_ROOT) -> Path | None:
    """The file of a project module (`pkg/__init__.py` or `pkg/mod.py`), None outside the project."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


# plug-in registries name their modules in strings ("evaluation.suite.fid:FID", "contracts.modalities.image"):
# the walk follows those too, except the family registry, whose modules are per-family deps (`family_files`)
_REGISTRY_STRING = re.compile(r"^(?:%s)(?:\.\w+)+(?::\w+)?$")
_NOT_FOLLOWED = ("genmodels",)


def _imports(file: Path, module: str) -> set[str]:
    """Every module `file` names in an import statement, at any depth (lazy imports inside functions too),
    and every project module a plug-in registry in it names as a "package.module[:Class]" string."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    pattern = re.compile(_REGISTRY_STRING.pattern % "|".join(PROJECT_PACKAGES))
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and module not in _NOT_FOLLOWED \
                and pattern.match(node.value):
            found.add(node.value.split(":")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


@lru_cache(maxsize=None)
def import_closure(module: str, root: Path = CODE_ROOT) -> tuple[str, ...]:
    """Project files (POSIX, relative to `root`) that importing `module` can load: the module, the
    `__init__.py` of each enclosing package, and recursively every project module they import anywhere.
    A superset (an import inside a function counts); modules imported by name strings (`genmodels.FAMILIES`)
    are not followed: `family_files` covers those."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way load first
            file = _module_file(".".join(parts[:i]), root)
            if file is None or file in seen:
                continue
            seen.add(file)
            todo.extend(_imports(file, ".".join(parts[:i])))
    return tuple(sorted(p.relative_to(root).as_posix() for p in seen))


def family_module(family: str) -> str:
    from genmodels import FAMILIES

    return FAMILIES[family].split(":")[0]


def family_files(family: str) -> tuple[str, ...]:
    """The files running `family` loads: its module's import closure (cvae: vae.py too; wgan_gp: dcgan.py)."""
    return import_closure(family_module(family))


def shared_family_files() -> tuple[str, ...]:
    """A params-independent superset of what any family needs besides its own module: the union over every
    registered family of its closure minus its own file (base.py, and parents such as vae.py and dcgan.py).
    dvc.yaml's `foreach` cannot give each family its own list, so per-family stages depend on
    `genmodels/${item}.py` plus this set: editing a parent reruns every family, editing a leaf only its own."""
    from genmodels import FAMILIES

    shared: set[str] = set()
    for family in FAMILIES:
        own = import_closure(family_module(family))
        shared.update(f for f in own if f != _relative(family_module(family)))
    return tuple(sorted(shared))


def _relative(module: str) -> str:
    file = _module_file(module)
    return file.relative_to(CODE_ROOT).as_posix() if file else module


def code_deps(s: Stage, family: str | None = None) -> list[str]:
    """The code files stage `s` depends on: its module's import closure and, for stages that run a family,
    that family's closure (`family` given) or `genmodels/<family>.py` + `shared_family_files()` (family None:
    the `${item}` template dvc.yaml uses)."""
    files = set(import_closure(s.module))
    if s.family_code:
        files.update(family_files(family) if family is not None else shared_family_files())
    own = [_relative(family_module(family)) if family is not None else "genmodels/${item}.py"] \
        if s.family_code else []
    return own + sorted(files - set(own))
