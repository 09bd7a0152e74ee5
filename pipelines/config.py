"""params.yaml loading with `--params FILE` and repeatable `--set dotted.key=value` overrides."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import GenforgeError, UsageError



class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 floats, as DVC (ruamel.yaml) reads params.yaml: `1e-3`, `1E5`,
    `-2.5e+3` are floats (YAML 1.1, and so `yaml.safe_load`, reads exponents without a dot or a signed
    exponent as strings). Everything else resolves as in SafeLoader."""


_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?
                           |[-+]?[0-9]+[eE][-+]?[0-9]+
                           |[-+]?\.(?:inf|Inf|INF)
                           |\.(?:nan|NaN|NAN))$""", re.X)
Yaml12Loader.yaml_implicit_resolvers = {
    first: [("tag:yaml.org,2002:float", _FLOAT_12), *resolvers] if first in "-+.0123456789" else list(resolvers)
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def yaml_load(text: str) -> Any:
    """YAML text -> Python values with YAML 1.2 number rules (`Yaml12Loader`); raises yaml.YAMLError."""
    return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


PROJECT_ROOT = Path(os.environ.get("GENFORGE_ROOT", Path(__file__).resolve().parent.parent))


def project_root() -> Path:
    """Root all relative outputs hang off: the current directory when it holds params.yaml."""
    cwd = Path.cwd()
    return cwd if (cwd / "params.yaml").exists() else PROJECT_ROOT


def load_params(params_file: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    path = Path(params_file) if params_file else project_root() / "params.yaml"
    if not path.exists():
        raise GenforgeError(f"{path}: params file not found")
    try:
        params = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GenforgeError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(params, dict):
        raise GenforgeError(f"{path}: top level must be a mapping, got {type(params).__name__}")
    for item in overrides or []:
        apply_override(params, item)
    return params


def apply_override(params: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in place; the value is parsed as YAML (`[a,b]`, `3`, `null`, `idx:/p`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # a bare `idx:/path` parses as a one-key mapping in YAML; keep it as the string the user typed
    if isinstance(value, dict) and len(value) == 1 and ":" in raw and not raw.strip().startswith("{"):
        value = raw
    node = params
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise GenforgeError(f"--set {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    return copy.deepcopy(params.get(name) or {})
