"""Resolve `<name>@<alias>` or `<name>/<version>` in the MLflow registry to a local folder of ONNX graphs.

Two layouts of a version's files, both served:

- an MLflow model (every version `register` made since the pyfunc flavor, serving/pyfunc.py): source
  ``models:/<model_id>`` (a LoggedModel), the graphs and sampler.json in ``artifacts/onnx/`` of its storage
  location, FILES_TAG keys ``artifacts/onnx/<file>``, ``checkpoint/model.pt``, ...;
- the layout before it: a source folder (``<run artifacts>/genforge_model``, or any folder) holding
  ``onnx/`` with sampler.json and no MLmodel, FILES_TAG keys ``onnx/<file>``, ``model.pt``, ...

Imports mlflow's client only (never torch), so the generator's process stays torch-free.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from contracts.errors import ServingError
from contracts.io import sha256_mismatches

REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")
FILES_TAG = "genforge.sha256"  # the version tag `register` writes: {"artifacts/onnx/decoder.onnx": sha256, ...}
MODEL_ONNX = "artifacts/onnx"  # the graphs inside an MLflow model version (serving.pyfunc.ONNX_PATH)
LEGACY_ONNX = "onnx"  # ... inside the source folder of a version registered before MLmodel sources


class ResolveError(ServingError):
    """A model reference that does not resolve to a registered version with ONNX graphs."""


@dataclass
class ResolvedModel:
    name: str
    version: str
    aliases: list[str]
    source: str
    run_id: str | None
    files: dict[str, str] = field(default_factory=dict)  # sha256 recorded at registration, {} for old versions
    location: str = ""  # where the version's files are: the LoggedModel's storage, or the source folder

    @property
    def mlflow_model(self) -> bool:
        """True for a version whose source is an MLflow model (``models:/<model_id>``)."""
        return self.source.startswith("models:/")

    @property
    def onnx_path(self) -> str:
        """The folder of graphs + sampler.json inside ``location`` (``artifacts/onnx`` or, before, ``onnx``)."""
        return MODEL_ONNX if self.mlflow_model else LEGACY_ONNX

    @property
    def onnx_uri(self) -> str:
        return f"{(self.location or self.source).rstrip('/')}/{self.onnx_path}"

    @property
    def onnx_files(self) -> dict[str, str]:
        """{file name inside the ONNX folder: sha256} as registered."""
        prefix = f"{self.onnx_path}/"
        return {k[len(prefix):]: v for k, v in self.files.items() if k.startswith(prefix)}

    @property
    def model_id(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    m = REF.match(ref.strip())
    if not m:
        raise ResolveError(f"model reference {ref!r} must be <name>@<alias> (e.g. mnist5k-vae@champion) "
                           f"or <name>/<version> (e.g. mnist5k-vae/3)")
    return m["name"], m["alias"], m["version"]


def resolve(client, ref: str) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_ref(ref)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        known = sorted(m.name for m in client.search_registered_models())
        raise ResolveError(f"no registered model {name!r} in the registry"
                           f" (known: {', '.join(known) or 'none'})") from exc
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise ResolveError(_missing(client, name, alias, version)) from exc
    location = mv.source
    if str(mv.source).startswith("models:/"):  # a LoggedModel: the registry knows where its files are
        try:
            location = client.get_model_version_download_uri(name, str(mv.version))
        except MlflowException as exc:
            raise ResolveError(f"{name}/{mv.version}: its model {mv.source} cannot be found "
                               f"({str(exc).splitlines()[0]}); register it again") from exc
    return ResolvedModel(name, str(mv.version), list(getattr(mv, "aliases", []) or []), mv.source, mv.run_id,
                         _recorded_files(mv), location)


def _missing(client, name: str, alias: str | None, version: str | None) -> str:
    """Why `name@alias` / `name/version` does not resolve, with the versions the registry holds now."""
    held = sorted(int(mv.version) for mv in client.search_model_versions(f"name='{name}'"))
    listing = f"versions now: {', '.join(map(str, held)) or 'none'}"
    if alias is None:
        return f"{name} has no version {version} (deleted from the registry, or never registered; {listing})"
    target = (client.get_registered_model(name).aliases or {}).get(alias)
    if target is not None:  # a dangling alias: the version it names was deleted
        return f"{name} has no alias {alias!r}: it points at version {target}, which no longer exists ({listing})"
    return f"{name} has no alias {alias!r} (its version was deleted, or none was set; {listing})"


def _recorded_files(mv) -> dict[str, str]:
    raw = dict(getattr(mv, "tags", None) or {}).get(FILES_TAG)
    try:
        files = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def fetch_onnx(model: ResolvedModel, cache_root: Path) -> Path:
    """Download the version's ONNX folder (``model.onnx_uri``, either layout) once into
    `cache_root/<name>/<version>/` (atomic), checked against the sha256 recorded at registration."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    final = cache_root / model.name / model.version
    recorded = model.onnx_files
    if (final / "sampler.json").exists() and not sha256_mismatches(final, recorded):
        return final  # a cached copy that is corrupt or truncated is fetched again, never reused
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=final.parent))
    try:
        try:
            local = Path(download_artifacts(artifact_uri=model.onnx_uri, dst_path=str(tmp)))
        except (MlflowException, OSError) as exc:
            raise ResolveError(f"{model.name}/{model.version} has no ONNX graphs ({model.onnx_uri}: "
                               f"{str(exc).splitlines()[0]}); export and register it again") from exc
        if not (local / "sampler.json").exists():
            raise ResolveError(f"{model.name}/{model.version} has no ONNX graphs (no sampler.json in {model.onnx_uri})")
        bad = sha256_mismatches(local, recorded)
        if bad:
            raise ResolveError(f"{model.onnx_uri}/{bad[0]}: the registry's copy is corrupt or truncated "
                               f"(sha256 differs from the one recorded when {model.name}/{model.version} was "
                               f"registered); export and register the model again")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(local, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
