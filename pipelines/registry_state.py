"""The registry's state as genforge reads and changes it: versions that may have been deleted (in the MLflow
UI), aliases that may point at nothing, the champion history, and champion moves that survive a crash.

A champion move (promote, manual promote, rollback) is written ahead: the whole change (new alias target,
new history, the decision tags) goes first into the registered model's `genforge.pending` tag, then the
version's tags, the history and the alias are set, then the pending tag is removed. Each step is
idempotent, so a crash at any point leaves either nothing changed (no pending tag yet) or a pending change
that the next registry command (`reconcile`) completes: history, tags and alias always end up coherent.
"""
from __future__ import annotations

import json
from typing import Any

from pipelines.errors import GenforgeError
from serving.resolve import FILES_TAG  # noqa: F401 ({"artifacts/onnx/<graph>": sha256, ...}, checked on fetch)

HISTORY_TAG = "champion_history"
PENDING_TAG = "genforge.pending"
CONTENT_TAG = "genforge.content_sha256"  # hash of the version's files and metrics: register finds it again
PENDING_TEXT = 1500  # registered-model tags hold 5000 characters: long reasons/checks are cut in the intent


def _mlflow_error():
    from mlflow.exceptions import MlflowException

    return MlflowException


def versions(c, name: str) -> list[str]:
    """The versions the registry holds for `name` (deleted ones are gone), in order."""
    return [str(v) for v in sorted(int(mv.version) for mv in c.search_model_versions(f"name='{name}'"))]


def get_version(c, name: str, version: str):
    """The model version, or None when it does not exist (never registered, or deleted)."""
    try:
        return c.get_model_version(name, str(version))
    except _mlflow_error():
        return None


def require_model(c, name: str):
    try:
        return c.get_registered_model(name)
    except _mlflow_error() as exc:
        known = sorted(m.name for m in c.search_registered_models())
        raise GenforgeError(f"no registered model {name!r} in the registry (known: {', '.join(known) or 'none'})") from exc


def require_version(c, name: str, version: str, label: str | None = None):
    """The version, or one line saying it is gone and which versions exist."""
    mv = get_version(c, name, version)
    if mv is None:
        held = versions(c, name)
        raise GenforgeError(f"{name}: {label or 'version ' + str(version)} no longer exists (deleted from the registry, or never "
                            f"registered; versions now: {', '.join(held) or 'none'})")
    return mv


def champion(c, name: str):
    """(champion version or None, the version a dangling `champion` alias names or None)."""
    model = c.get_registered_model(name)
    target = (model.aliases or {}).get("champion")
    if target is None:
        return None, None
    mv = get_version(c, name, str(target))
    return (mv, None) if mv is not None else (None, str(target))


def history(c, name: str, current: str | None) -> list[str]:
    """The champion history as recorded, made coherent with the alias: a champion moved outside genforge (the
    MLflow UI, or an old crash between alias and history) is appended, so the history ends at the champion."""
    raw = c.get_registered_model(name).tags.get(HISTORY_TAG, "[]")
    try:
        recorded = [str(v) for v in json.loads(raw)]
    except (ValueError, TypeError):
        recorded = []
    if current is not None and (not recorded or recorded[-1] != str(current)):
        recorded.append(str(current))
    return recorded


def decision_tags(record: dict[str, Any]) -> dict[str, str]:
    """The version tags that record a decision: decision, reasons, time and every gate check."""
    tags = {"promotion.decision": record["decision"], "promotion.reasons": "; ".join(record["reasons"])[:4900],
            "promotion.at": record["at"]}
    if record.get("checks"):  # every check: metric op limit -> status (observed; champion's value)
        tags["promotion.checks"] = "; ".join(
            f"{k['check']}: {k['status']} (observed {k['observed']}, champion {k['champion']})"
            for k in record["checks"])[:4900]
    if record.get("primary_metric"):
        tags["promotion.primary_metric"] = str(record["primary_metric"])
    if record["decision"] == "rejected":  # `fid_ratio 812.3 > 500; ...`: what `registry show` prints
        from pipelines.gate import rejection_text

        tags["promotion.rejected"] = rejection_text(record)[:4900]
    return tags


def change_champion(c, name: str, target: str, new_history: list[str], tag_version: str,
                    tags: dict[str, str], op: str) -> None:
    """Move `champion` to `target`, with `new_history` and `tags` on `tag_version`, written ahead (see module)."""
    short = {k: v[:PENDING_TEXT] for k, v in tags.items()}
    change = {"op": op, "champion": str(target), "history": [str(v) for v in new_history[-50:]],
              "version": str(tag_version), "tags": short}
    c.set_registered_model_tag(name, PENDING_TAG, json.dumps(change))
    _complete(c, name, change, tags)


def _complete(c, name: str, change: dict[str, Any], tags: dict[str, str]) -> None:
    for key, value in tags.items():
        c.set_model_version_tag(name, change["version"], key, value)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(change["history"]))
    c.set_registered_model_alias(name, "champion", change["champion"])
    c.delete_registered_model_tag(name, PENDING_TAG)


def reconcile(c, name: str) -> dict[str, Any] | None:
    """Complete a champion move a crash interrupted (None when there was none). A move whose target was
    deleted meanwhile is dropped: nothing moves, and the history stays as it was."""
    try:
        raw = c.get_registered_model(name).tags.get(PENDING_TAG)
    except _mlflow_error():
        return None
    if not raw:
        return None
    try:
        change = json.loads(raw)
        target, version = str(change["champion"]), str(change["version"])
        short = {str(k): str(v) for k, v in dict(change["tags"]).items()}
        change["history"] = [str(v) for v in change["history"]]
    except (ValueError, TypeError, KeyError):
        change = None
    if change is None or get_version(c, name, target) is None:
        c.delete_registered_model_tag(name, PENDING_TAG)
        return None
    mv = get_version(c, name, version)
    done = mv is not None and all(mv.tags.get(k, "")[:PENDING_TEXT] == v for k, v in short.items())
    # the version's full tags were written (done) or it was deleted: only history and alias are left
    _complete(c, name, change, {} if done or mv is None else short)
    return change


def registered_problem(record: dict[str, Any]) -> str | None:
    """Why a registered.json record no longer names a live registry version (None: it does): the version was
    deleted, the store was emptied or replaced (same number, another run or other files)."""
    from pipelines import tracking

    name, version = record.get("name"), record.get("version")
    if not name or not version:
        return "it names no model version"
    mv = get_version(tracking.client(), str(name), str(version))
    if mv is None:
        return f"{name}/{version} is not in the registry (deleted, or the MLflow store was emptied or replaced)"
    if record.get("run_id") and mv.run_id != record["run_id"]:
        return f"{name}/{version} in the registry is run {mv.run_id}, not {record['run_id']} (the store was replaced)"
    if record.get("content_sha256") and mv.tags.get(CONTENT_TAG) != record["content_sha256"]:
        return f"{name}/{version} in the registry holds other files (the store was replaced)"
    return None


def run_exists(run_id: str | None) -> bool:
    from pipelines import tracking

    if not run_id:
        return False
    try:
        tracking.client().get_run(str(run_id))
    except _mlflow_error():
        return False
    return True
