"""Stages `export`, `register`, `promote`, and the manual registry commands (show, promote, rollback).

Registry contract (DESIGN.md): model `<dataset>-<family>`; every version tagged with the data sha256,
git commit, params hash, metrics and ONNX parity error; a new version gets the alias `challenger`; the
gate (pipelines.gate: the configured `registry.checks`) moves `champion` only when every check holds and
the challenger beats the champion on the primary metric by the margin. Decisions, reasons and every check go to `promotion.json`
and the version's `promotion.*` tags.
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

from pipelines import catalog, commit, tracking
from pipelines.errors import GenforgeError
from pipelines.gate import gate_decision, observed, parity_limit, resolve_gate
from pipelines.prepare import prepared_dir
from pipelines.train import model_dir
from pipelines.validate import require_validated

def model_name(dataset: str, family: str) -> str:
    return f"{dataset}-{family}"


def gate_settings(params: dict[str, Any], family: str) -> dict[str, Any]:
    """The resolved gate of ``family`` (see pipelines.gate): checks, primary metric, direction, margin."""
    return resolve_gate(params.get("registry") or {}, family)


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _trained(mdir: Path, paths: catalog.Layout, family: str) -> dict[str, Any]:
    """train.json, with model.pt and config.json checked against its sha256 (pipelines.commit)."""
    info = commit.verify(mdir, paths.train_info.name, f"rerun `genforge stage train --family {family}`")
    if not info:
        raise GenforgeError(f"{paths.train_info}: missing; run `genforge stage train --family {family}` first")
    return info


# ---- export ----------------------------------------------------------------------------------
def export(params: dict[str, Any], root: Path, family: str) -> dict[str, Any]:
    from pipelines.train import load_model
    from serving.export import ExportError, export_model

    ds = require_validated(root, prepared_dir(root, params))
    mdir = model_dir(root, ds.name, family)
    paths = catalog.Layout(root, ds.name, family)
    train_info = _trained(mdir, paths, family)
    model = load_model(mdir, "cpu")
    atol = parity_limit(gate_settings(params, family))
    try:
        result = export_model(model, paths.onnx, seed=int((params.get("train") or {}).get("seed", 0)), atol=atol)
    except ExportError as exc:
        raise GenforgeError(f"{paths.onnx}: ONNX export failed its parity check ({exc}); the model cannot be "
                            f"registered as servable. Report: {paths.onnx / 'parity.json'}") from exc
    parity = json.loads((paths.onnx / "parity.json").read_text())
    c = tracking.client()
    tracking.log_metrics(c, train_info["run_id"], {"export/parity_max_abs_error": parity["max_abs_error"]}, 0)
    tracking.log_artifact(c, train_info["run_id"], paths.onnx / "parity.json", "export")
    return {"family": family, "onnx_dir": str(paths.onnx), "parity_max_abs_error": parity["max_abs_error"],
            "atol": atol, "graphs": sorted(parity["graphs"]), **({"export": result} if isinstance(result, str) else {})}


# ---- register --------------------------------------------------------------------------------
def register(params: dict[str, Any], root: Path, family: str) -> dict[str, Any]:
    from pipelines.config import params_hash

    ds = require_validated(root, prepared_dir(root, params))
    mdir = model_dir(root, ds.name, family)
    paths = catalog.Layout(root, ds.name, family)
    metrics_path = paths.metrics
    onnx_dir = paths.onnx
    for needed, stage in ((paths.train_info, "train"), (metrics_path, "evaluate"), (onnx_dir / "parity.json", "export")):
        if not needed.exists():
            raise GenforgeError(f"{needed}: missing; run `genforge stage {stage} --family {family}` first")
    train_info = _trained(mdir, paths, family)
    metrics = json.loads(metrics_path.read_text())
    parity = json.loads((onnx_dir / "parity.json").read_text())
    if not parity.get("passed") or not (onnx_dir / "sampler.json").exists():
        raise GenforgeError(f"{onnx_dir / 'parity.json'}: ONNX parity failed (max abs error "
                            f"{parity.get('max_abs_error')}); the model is not servable and is not registered")
    for what, info in (("model", train_info), ("metrics", metrics)):
        if info.get("data_sha256") != ds.sha256:
            raise GenforgeError(f"{mdir if what == 'model' else metrics_path}: {what} made from other data "
                                f"({str(info.get('data_sha256'))[:12]} vs {ds.sha256[:12]}); rerun the stages")
    if metrics.get("run_id") != train_info["run_id"]:
        raise GenforgeError(f"{metrics_path}: evaluates run {metrics.get('run_id')}, the model is run "
                            f"{train_info['run_id']}; rerun `genforge stage evaluate --family {family}`")

    c = tracking.client()
    run_id = train_info["run_id"]
    for path in (paths.model, paths.model_config, paths.train_info):
        tracking.log_artifact(c, run_id, path, "genforge_model")
    c.log_artifacts(run_id, str(onnx_dir), "genforge_model/onnx")
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/genforge_model"

    name = model_name(ds.name, family)
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description=f"genforge {family} trained on {ds.name}")
    tags = {
        "data_sha256": ds.sha256, "git_commit": _git_commit(root), "params_hash": train_info["params_hash"],
        "run_params_hash": params_hash(params), "family": family, "dataset": ds.name, "validated": "true",
        "parity_max_abs_error": str(parity["max_abs_error"]), "servable": "true",
        **{f"metric.{k}": str(v) for k, v in metrics["summary"].items()},
    }
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                description=f"{family} on {ds.name} (data {ds.sha256[:12]})")
    c.set_registered_model_alias(name, "challenger", mv.version)
    record = {"name": name, "version": str(mv.version), "run_id": run_id, "source": source}
    paths.registered.write_text(json.dumps(record, indent=2) + "\n")
    return record | {"alias": "challenger"}


# ---- promotion gate (the decision itself: pipelines.gate) -------------------------------------
def _version_tags(c, name: str, version: str) -> dict[str, str]:
    return dict(c.get_model_version(name, version).tags)


def _champion(c, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def _record(c, name: str, version: str, run_id: str | None, record: dict[str, Any], out: Path | None) -> None:
    c.set_model_version_tag(name, version, "promotion.decision", record["decision"])
    c.set_model_version_tag(name, version, "promotion.reasons", "; ".join(record["reasons"])[:4900])
    c.set_model_version_tag(name, version, "promotion.at", record["at"])
    if record.get("checks"):  # every check: metric op limit -> status (observed; champion's value)
        c.set_model_version_tag(name, version, "promotion.checks", "; ".join(
            f"{k['check']}: {k['status']} (observed {k['observed']}, champion {k['champion']})"
            for k in record["checks"])[:4900])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")
        if run_id:
            tracking.log_artifact(c, run_id, out, f"promotion/v{version}")


def _push_history(c, name: str, version: str) -> None:
    model = c.get_registered_model(name)
    history = json.loads(model.tags.get("champion_history", "[]"))
    history.append(version)
    c.set_registered_model_tag(name, "champion_history", json.dumps(history[-50:]))


def promote(params: dict[str, Any], root: Path, family: str) -> dict[str, Any]:
    ds = require_validated(root, prepared_dir(root, params))
    reg_path = catalog.path("registered", root, ds.name, family)
    if not reg_path.exists():
        raise GenforgeError(f"{reg_path}: missing; run `genforge stage register --family {family}` first")
    reg = json.loads(reg_path.read_text())
    name, version = reg["name"], reg["version"]
    c = tracking.client()
    champion = _champion(c, name)
    champion_tags = dict(champion.tags) if champion is not None and str(champion.version) != version else None
    gate = gate_settings(params, family)
    if champion is not None and str(champion.version) == version:
        record = {"name": name, "version": version, "decision": "already champion", "champion_before": version,
                  "champion_after": version, "reasons": [f"version {version} already holds the champion alias"],
                  "gate": gate, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        out = catalog.path("promotion", root, ds.name, family)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")
        return {k: record[k] for k in ("name", "version", "decision", "champion_before", "champion_after", "reasons")}
    decision = gate_decision(_version_tags(c, name, version), champion_tags, gate)
    record = {"name": name, "version": version, "champion_before": str(champion.version) if champion else None,
              "gate": gate, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **decision}
    if decision["promoted"]:
        c.set_registered_model_alias(name, "champion", version)
        _push_history(c, name, version)
    record["champion_after"] = version if decision["promoted"] else record["champion_before"]
    _record(c, name, version, reg.get("run_id"), record, catalog.path("promotion", root, ds.name, family))
    return {k: record[k] for k in ("name", "version", "decision", "champion_before", "champion_after", "reasons")}


# ---- manual decisions and review -------------------------------------------------------------
def manual_promote(name: str, version: str, reason: str) -> dict[str, Any]:
    from serving.resolve import resolve

    c = tracking.client()
    mv = resolve(c, f"{name}/{version}")
    champion = _champion(c, name)
    c.set_registered_model_alias(name, "champion", mv.version)
    _push_history(c, name, mv.version)
    record = {"name": name, "version": mv.version, "decision": "manual-promote", "reasons": [reason],
              "champion_before": str(champion.version) if champion else None, "champion_after": mv.version,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    _record(c, name, mv.version, mv.run_id, record, None)
    return record


def rollback(name: str, reason: str) -> dict[str, Any]:
    from serving.resolve import resolve

    c = tracking.client()
    resolve(c, f"{name}@champion")
    history = json.loads(c.get_registered_model(name).tags.get("champion_history", "[]"))
    if len(history) < 2:
        raise GenforgeError(f"{name}: no earlier champion to roll back to (history: {history or 'empty'})")
    current, previous = history[-1], history[-2]
    c.set_registered_model_alias(name, "champion", previous)
    c.set_registered_model_tag(name, "champion_history", json.dumps(history[:-1]))
    record = {"name": name, "version": current, "decision": "rolled-back", "reasons": [reason],
              "champion_before": current, "champion_after": previous,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    _record(c, name, current, None, record, None)
    return record




def show(name: str) -> list[dict[str, Any]]:
    from evaluation.suite import SHOW_OUTPUTS
    from mlflow.exceptions import MlflowException

    c = tracking.client()
    try:
        model = c.get_registered_model(name)
    except MlflowException as exc:
        known = sorted(m.name for m in c.search_registered_models())
        raise GenforgeError(f"no registered model {name!r} (known: {', '.join(known) or 'none'})") from exc
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in sorted(c.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version)):
        tags = dict(mv.tags)
        row = {"version": int(mv.version), "aliases": ",".join(sorted(aliases.get(str(mv.version), []))) or "-"}
        for key in SHOW_OUTPUTS:
            v = observed(tags, key)
            row[key] = "-" if v is None else (("yes" if v else "no") if key == "mode_collapse" else round(v, 4))
        row["data"] = tags.get("data_sha256", "")[:12]
        row["decision"] = tags.get("promotion.decision", "-")
        rows.append(row)
    return rows
