"""Resolve `<name>@<alias>` or `<name>/<version>` in the MLflow registry to a local folder of ONNX graphs.

Imports mlflow's client only (never torch), so the generator's process stays torch-free.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import ServingError

REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")
ONNX_SUBDIR = "genforge_model/onnx"  # where `register` puts the graphs inside the run's artifacts


class ResolveError(ServingError):
    """A model reference that does not resolve to a registered version with ONNX graphs."""


@dataclass
class ResolvedModel:
    name: str
    version: str
    aliases: list[str]
    source: str
    run_id: str | None

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
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise ResolveError(f"{name} has no {what}") from exc
    return ResolvedModel(name, str(mv.version), list(getattr(mv, "aliases", []) or []), mv.source, mv.run_id)


def fetch_onnx(model: ResolvedModel, cache_root: Path) -> Path:
    """Download the version's ONNX folder once into `cache_root/<name>/<version>/` (atomic)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    final = cache_root / model.name / model.version
    if (final / "sampler.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=final.parent))
    try:
        try:
            local = Path(download_artifacts(artifact_uri=f"{model.source.rstrip('/')}/onnx", dst_path=str(tmp)))
        except (MlflowException, OSError) as exc:
            raise ResolveError(f"{model.name}/{model.version} has no ONNX graphs ({model.source}/onnx: "
                               f"{str(exc).splitlines()[0]}); export and register it again") from exc
        if not (local / "sampler.json").exists():
            raise ResolveError(f"{model.name}/{model.version} has no ONNX graphs (no sampler.json in {model.source}/onnx)")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(local, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
