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

from contracts.io import atomic_write_text
from pipelines import approval, card, catalog, commit, registry_state, tracking
from pipelines.errors import DataError, GenforgeError
from pipelines.gate import gate_decision, observed, parity_limit, resolve_gate
from pipelines.prepare import prepared_dir
from pipelines.catalog import model_dir
from pipelines.validate import require_validated

def model_name(dataset: str, family: str) -> str:
    return f"{dataset}-{family}"


def gate_settings(params: dict[str, Any], family: str) -> dict[str, Any]:
    """The resolved gate of ``family`` (see pipelines.gate): checks, primary metric, direction, margin.
    The defaults under ``registry`` are those of the data's modality (evaluation.suite.gates), and a gate
    written for another modality applies where its metrics do: a check whose metric no evaluation of this
    data's modality writes (an image `max_fid_ratio` on text) is left out, and such a primary metric gives
    way to the modality's default (with its direction)."""
    from evaluation.suite.gates import applies, default_gate
    from pipelines.sources import source_modality

    modality = source_modality((params.get("data") or {}).get("source", "mnist5k"))
    defaults = default_gate(modality)
    gate = resolve_gate(params.get("registry") or {}, family, defaults=defaults)
    gate["checks"] = [c for c in gate["checks"] if applies(c["metric"], modality)]
    if not applies(gate["primary_metric"], modality):
        gate.update({k: defaults[k] for k in ("primary_metric", "direction")})
    return gate


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
def _artifact_digests(paths: catalog.Layout) -> dict[str, str]:
    """sha256 of every file register stores in the version's MLflow model directory (paths relative to it)."""
    from pipelines.mlmodel import file_digests

    return file_digests(paths)


REGISTER_DONE_TAG = "genforge.register_complete"  # set once registered.json names the version


def _existing_version(c, name: str, run_id: str, content: str):
    """The version an interrupted `register` of this very run and content made (a crash after creating the
    version, before registered.json named it and the version was marked complete), or None. A version whose
    register completed is not reused: registering again after a completed register is a deliberate new
    version (the registry keeps the history of re-registrations)."""
    from mlflow.exceptions import MlflowException

    try:
        found = c.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    same = [mv for mv in found if dict(mv.tags).get(registry_state.CONTENT_TAG) == content
            and dict(mv.tags).get(REGISTER_DONE_TAG) != "true"]
    return min(same, key=lambda mv: int(mv.version)) if same else None


def register(params: dict[str, Any], root: Path, family: str) -> dict[str, Any]:
    """Register the model as a new version @challenger. When an earlier register of this run with these files
    and metrics was cut short (the version exists, registered.json does not name it), point @challenger and
    registered.json at that version instead of adding another: a crash never leaves a duplicate."""
    from pipelines.config import params_hash
    from pipelines.train import check_model_files

    ds = require_validated(root, prepared_dir(root, params))
    mdir = model_dir(root, ds.name, family)
    paths = catalog.Layout(root, ds.name, family)
    metrics_path = paths.metrics
    onnx_dir = paths.onnx
    for needed, stage in ((paths.train_info, "train"), (metrics_path, "evaluate"), (onnx_dir / "parity.json", "export")):
        if not needed.exists():
            raise GenforgeError(f"{needed}: missing; run `genforge stage {stage} --family {family}` first")
    train_info = _trained(mdir, paths, family)
    metrics = _read_json(metrics_path, "evaluate")
    parity = _read_json(onnx_dir / "parity.json", "export")
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
    check_model_files(mdir)  # never store a torn model.pt/config.json
    files = _artifact_digests(paths)
    content = params_hash({"files": files, "metrics": metrics.get("summary"), "data": ds.sha256})

    c = tracking.client()
    run_id = train_info["run_id"]
    name = model_name(ds.name, family)
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description=f"genforge {family} trained on {ds.name}")
    mv = _existing_version(c, name, run_id, content)
    if mv is None:
        from pipelines.mlmodel import checkpoint_files, log_model

        # the source is an MLflow model (MLmodel, pyfunc over the ONNX sampler) logged as a LoggedModel
        model_id = log_model(c, run_id, name, onnx_dir, checkpoint_files(paths), content,
                             {"family": family, "dataset": ds.name, "data_sha256": ds.sha256}, metrics["summary"])
        source = f"models:/{model_id}"
        tags = {
            "data_sha256": ds.sha256, "git_commit": _git_commit(root), "params_hash": train_info["params_hash"],
            "run_params_hash": params_hash(params), "family": family, "dataset": ds.name, "validated": "true",
            "parity_max_abs_error": str(parity["max_abs_error"]), "servable": "true",
            "class_names": json.dumps(list(ds.spec.class_names)),
            registry_state.CONTENT_TAG: content, registry_state.FILES_TAG: json.dumps(files, sort_keys=True),
            **{f"metric.{k}": str(v) for k, v in metrics["summary"].items()},
        }
        mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id,
                                    description=f"{family} on {ds.name} (data {ds.sha256[:12]})")
    c.set_registered_model_alias(name, "challenger", mv.version)
    record = {"name": name, "version": str(mv.version), "run_id": run_id, "source": mv.source,
              "content_sha256": content}
    atomic_write_text(paths.registered, json.dumps(record, indent=2) + "\n")
    card.publish_registered(c, name, str(mv.version), gate_settings(params, family),  # the model card, gate pending
                            catalog.validation_report(root, ds.name), onnx_dir / "sampler.json")
    c.set_model_version_tag(name, mv.version, REGISTER_DONE_TAG, "true")
    return record | {"alias": "challenger"}


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"unreadable ({str(exc).splitlines()[0]}); rerun `genforge stage {stage}`") from exc
    if not isinstance(value, dict):
        raise DataError(path, f"not a JSON object; rerun `genforge stage {stage}`")
    return value


# ---- promotion gate (the decision itself: pipelines.gate) -------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write_promotion(c, record: dict[str, Any], run_id: str | None, out: Path) -> None:
    atomic_write_text(out, json.dumps(record, indent=2, default=str) + "\n")
    if run_id:
        tracking.log_artifact(c, run_id, out, f"promotion/v{record['version']}")


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    from pipelines.gate import rejection_text

    summary = {k: record.get(k) for k in ("name", "version", "decision", "champion_before", "champion_after", "reasons")}
    return summary | ({"rejected": rejection_text(record)} if record.get("decision") == "rejected" else {})


def promote(params: dict[str, Any], root: Path, family: str) -> dict[str, Any]:
    ds = require_validated(root, prepared_dir(root, params))
    reg_path = catalog.path("registered", root, ds.name, family)
    if not reg_path.exists():
        raise GenforgeError(f"{reg_path}: missing; run `genforge stage register --family {family}` first")
    reg = _read_json(reg_path, f"register --family {family}")
    name, version = str(reg.get("name")), str(reg.get("version"))
    c = tracking.client()
    out = catalog.path("promotion", root, ds.name, family)
    resumed = registry_state.reconcile(c, name)  # a move a crash interrupted is completed first
    mv = registry_state.get_version(c, name, version)
    if mv is None:
        raise GenforgeError(f"{reg_path}: names {name}/{version}, which the registry no longer holds (deleted, or "
                            f"the MLflow store was emptied or replaced); run `genforge stage register --family "
                            f"{family}` again")
    champion, _ = registry_state.champion(c, name)
    gate = gate_settings(params, family)
    if champion is not None and str(champion.version) == version:
        tags = dict(mv.tags)
        if resumed and resumed["version"] == version and tags.get("promotion.decision") == "promoted":
            # this very promotion was cut short by a crash and has just been completed: report it
            record = {"name": name, "version": version, "decision": "promoted", "gate": gate,
                      "champion_before": (resumed["history"][-2] if len(resumed["history"]) > 1 else None),
                      "champion_after": version, "reasons": [tags.get("promotion.reasons", "")],
                      "at": tags.get("promotion.at", _now()), "completed_after_crash": True}
        else:
            record = {"name": name, "version": version, "decision": "already champion", "champion_before": version,
                      "champion_after": version, "reasons": [f"version {version} already holds the champion alias"],
                      "gate": gate, "at": _now()}
        _write_promotion(c, record, None, out)
        return _summary(record)
    champion_tags = dict(champion.tags) if champion is not None else None
    decision = gate_decision(dict(mv.tags), champion_tags, gate)
    record = {"name": name, "version": version, "champion_before": str(champion.version) if champion else None,
              "gate": gate, "at": _now(), **decision}
    record["champion_after"] = version if decision["promoted"] else record["champion_before"]
    record = approval.hold(params, family, record, dict(mv.tags))  # registry.approval: manual waits for a reviewer
    if record["decision"] == "promoted":
        new_history = registry_state.history(c, name, record["champion_before"]) + [version]
        registry_state.change_champion(c, name, version, new_history, version,
                                       registry_state.decision_tags(record), "promote")
    else:
        for key, value in registry_state.decision_tags(record).items():
            c.set_model_version_tag(name, version, key, value)
    _write_promotion(c, record, reg.get("run_id"), out)
    card.publish_card(c, name, version, decision=record)
    return _summary(record)


# ---- manual decisions and review -------------------------------------------------------------
def manual_promote(name: str, version: str, reason: str) -> dict[str, Any]:
    c = tracking.client()
    registry_state.require_model(c, name)
    registry_state.reconcile(c, name)
    mv = registry_state.require_version(c, name, str(version))
    champion, _ = registry_state.champion(c, name)
    before = str(champion.version) if champion else None
    record = {"name": name, "version": str(mv.version), "decision": "manual-promote", "reasons": [reason],
              "champion_before": before, "champion_after": str(mv.version), "at": _now()}
    past = registry_state.history(c, name, before)
    new_history = past if past and past[-1] == str(mv.version) else past + [str(mv.version)]
    registry_state.change_champion(c, name, str(mv.version), new_history, str(mv.version),
                                   registry_state.decision_tags(record), "manual-promote")
    card.publish_card(c, name, str(mv.version), decision=record)
    return record


def rollback(name: str, reason: str) -> dict[str, Any]:
    """Move champion back to the previous champion. Refused, with champion left where it is, when there is
    no champion, no earlier one, or the earlier one was deleted from the registry."""
    c = tracking.client()
    registry_state.require_model(c, name)
    registry_state.reconcile(c, name)
    champion, dangling = registry_state.champion(c, name)
    if champion is None:
        recorded = registry_state.history(c, name, None)
        gone = dangling or (recorded[-1] if recorded else None)
        if gone is not None and registry_state.get_version(c, name, gone) is None:
            raise GenforgeError(f"{name}: champion v{gone} no longer exists (deleted from the registry), so there "
                                f"is nothing to roll back from; choose one with `genforge registry promote {name} "
                                f"VERSION --reason ...` (versions: {', '.join(registry_state.versions(c, name)) or 'none'})")
        raise GenforgeError(f"{name} has no champion to roll back from; promote one first")
    current = str(champion.version)
    past = registry_state.history(c, name, current)
    if len(past) < 2:
        raise GenforgeError(f"{name}: no earlier champion to roll back to (history: {past or 'empty'})")
    previous = past[-2]
    registry_state.require_version(c, name, previous, f"previous champion v{previous}")
    record = {"name": name, "version": current, "decision": "rolled-back", "reasons": [reason],
              "champion_before": current, "champion_after": previous, "at": _now()}
    registry_state.change_champion(c, name, previous, past[:-1], current, registry_state.decision_tags(record),
                                   "rollback")
    card.publish_card(c, name, current, decision=record)
    return record


def _rejected(tags: dict[str, str]) -> str:
    """A rejected version's reasons: the `promotion.rejected` tag (`fid_ratio 812.3 > 500; ...`), or, for
    versions decided before that tag existed, the failed entries of `promotion.reasons`."""
    if tags.get("promotion.rejected"):
        return tags["promotion.rejected"]
    reasons = [r.strip() for r in tags.get("promotion.reasons", "").split("; ") if r.strip()]
    return "; ".join(r.removeprefix("failed: ") for r in reasons if r.startswith("failed:")) or "; ".join(reasons[-1:])


def _reasons(tags: dict[str, str]) -> str:
    """Why a version's decision is what it is, in one line ("" when there is nothing to say): a reviewer's
    decision and reason, a rejected version's failed checks, a manual promote's or rollback's reason."""
    decision, review = tags.get("promotion.decision", "-"), tags.get("approval.decision")
    if review and review == decision:
        return f"{review} by {tags.get('approval.by', '?')}: {tags.get('approval.reason', '')}"
    if decision == "rejected":
        return _rejected(tags)
    return tags.get("promotion.reasons", "") if decision in ("manual-promote", "rolled-back") else ""


def records(name: str) -> list[dict[str, Any]]:
    """`registry show --json`: one typed record per version, oldest first: version (int), aliases (list),
    created (ISO 8601, UTC), git_commit and data_sha256 (full), metrics ({output: float or None}, the main
    ones, evaluation.suite.SHOW_OUTPUTS that some version of this model has; mode_collapse as a bool),
    primary_metric and primary_value, decision,
    reasons (a list), approval ({decision, by, at, reason, via} or None). Raises GenforgeError for an
    unknown model."""
    from evaluation.suite import SHOW_OUTPUTS

    c = tracking.client()
    model = registry_state.require_model(c, name)
    out = []
    versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version))
    shown = [k for k in SHOW_OUTPUTS if any(observed(dict(mv.tags), k) is not None for mv in versions)]
    for mv in versions:
        tags, version = dict(mv.tags), int(mv.version)
        metrics: dict[str, Any] = {key: observed(tags, key) for key in shown}
        if metrics.get("mode_collapse") is not None:
            metrics["mode_collapse"] = bool(metrics["mode_collapse"])
        primary = tags.get("promotion.primary_metric")
        reasons = _reasons(tags)
        out.append({
            "version": version,
            "aliases": sorted(a for a, v in (model.aliases or {}).items() if str(v) == str(version)),
            "created": dt.datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, dt.timezone.utc).isoformat(),
            "git_commit": tags.get("git_commit"), "data_sha256": tags.get("data_sha256"), "metrics": metrics,
            "primary_metric": primary, "primary_value": observed(tags, primary) if primary else None,
            "decision": tags.get("promotion.decision"),
            "reasons": [r.strip() for r in reasons.split("; ") if r.strip()],
            "approval": ({k: tags.get(f"approval.{k}") for k in ("decision", "by", "at", "reason", "via")}
                         if tags.get("approval.decision") else None),
        })
    return out


def show(name: str) -> list[dict[str, Any]]:
    """One row per version, oldest first: version, aliases, created (UTC), git (short commit), data (sha256
    prefix), the main metrics (those of evaluation.suite.SHOW_OUTPUTS some version has), primary (the gate's
    primary metric and value),
    decision and reasons (a rejected version's failed checks, a manual decision's reason). Raises
    GenforgeError for an unknown model."""
    from evaluation.suite import SHOW_OUTPUTS

    c = tracking.client()
    model = registry_state.require_model(c, name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version))
    shown = [k for k in SHOW_OUTPUTS if any(observed(dict(mv.tags), k) is not None for mv in versions)]
    for mv in versions:
        tags = dict(mv.tags)
        created = dt.datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, dt.timezone.utc)
        row = {"version": int(mv.version), "aliases": ",".join(sorted(aliases.get(str(mv.version), []))) or "-",
               "created": created.strftime("%Y-%m-%d %H:%M UTC"), "git": tags.get("git_commit", "")[:8] or "-",
               "data": tags.get("data_sha256", "")[:12]}
        for key in shown:  # the metrics some version of this model has (another modality's: none)
            v = observed(tags, key)
            row[key] = "-" if v is None else (("yes" if v else "no") if key == "mode_collapse" else round(v, 4))
        primary = tags.get("promotion.primary_metric")
        value = observed(tags, primary) if primary else None
        row["primary"] = f"{primary} {value:.4g}" if value is not None else "-"
        row["decision"] = tags.get("promotion.decision", "-")
        row["reasons"] = _reasons(tags) or "-"
        rows.append(row)
    return rows
