"""What an operator sees of a flow run in Prefect's UI: task names carrying the data set and family
(`prepare-mnist5k`, `train-vae`), a family skipped because nothing changed shown as a `Skipped` task with the
reason, one Markdown artifact per family per retrain run (`<dataset>-<family>-decision`: the decision, the
main metrics against the champion, every gate check, links to the MLflow run and model version, the preview
image) and one table artifact per generation (`<model>-generation`).

Links into MLflow's UI use `MLFLOW_UI_URL` (e.g. http://127.0.0.1:5000) when set, else the tracking URI when
it is an MLflow server (http/https); with a local store (SQLite) the artifact gives the `mlflow ui` command
to run and the page's path. Artifacts are reports: one that cannot be written is a warning, never a failed run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, State

from pipelines import catalog

MLFLOW_UI_URL = "MLFLOW_UI_URL"


def task_run_name(stage: str, dataset: str, family: str | None) -> str:
    """A stage's task-run name: `<stage>-<family>` for a family's stages, `<stage>-<dataset>` for the data
    stages (`prepare-mnist5k`, `train-vae`)."""
    return f"{stage}-{family or dataset}"


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes only) from names such as `mnist5k`, `wgan_gp`."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


@task(persist_result=False)
def _skipped(reason: str) -> State:
    """A task that ends in a Completed state named `Skipped`, its message the reason (shown in the UI)."""
    get_run_logger().info("skipped: %s", reason)
    return Completed(name="Skipped", message=reason)


def record_skip(stage: str, family: str, reason: str) -> None:
    """Show `<stage>-<family>` as a task run in state `Skipped` with ``reason`` (in the flow's logs too)."""
    _skipped.with_options(task_run_name=f"{stage}-{family}")(reason)


# ---- links into MLflow ----------------------------------------------------------------------------
def mlflow_ui_base() -> str | None:
    """The MLflow UI's address: $MLFLOW_UI_URL, else the tracking URI when it is a server; None for a local
    store (nothing serves a UI unless someone runs `mlflow ui`)."""
    from pipelines.tracking import tracking_uri

    explicit = os.environ.get(MLFLOW_UI_URL, "").strip()
    if explicit:
        return explicit.rstrip("/")
    uri = tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def mlflow_link(text: str, route: str) -> str:
    """A Markdown link to MLflow UI page ``route`` (e.g. `#/models/mnist5k-vae/versions/3`), or, without a
    known UI address, ``text`` and the route to open after `mlflow ui` (see ``open_hint``)."""
    base = mlflow_ui_base()
    return f"[{text}]({base}/{route})" if base else f"{text} (`{route}`)"


def open_hint() -> str:
    """How to open MLflow's UI when no UI address is known: the `mlflow ui` command for this store."""
    from pipelines.tracking import tracking_uri

    if mlflow_ui_base():
        return ""
    return (f"MLflow pages: run `mlflow ui --backend-store-uri {tracking_uri()}` and open http://127.0.0.1:5000/ "
            f"followed by the page's path above (or set {MLFLOW_UI_URL} for clickable links).")


# ---- the family artifact ----------------------------------------------------------------------------
def _num(value: Any) -> str:
    if value is None or value == "":
        return "-"
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _delta(new: Any, old: Any) -> str:
    try:
        return f"{float(new) - float(old):+.4g}"
    except (TypeError, ValueError):
        return "-"


def family_markdown(info: dict[str, Any]) -> str:
    """The artifact's Markdown from ``info``: model, family, decision ("promoted", "rejected", "skipped", ...),
    reason (a skip's or the rejection's), version and champion (the versions compared; either may be None),
    metrics ([(name, value, champion's value)], the primary metric first), primary_metric, checks (the gate's
    records from promotion.json), run_link, version_link, champion_link, preview (a path), hint."""
    decision = str(info.get("decision") or "-")
    mark = {"promoted": "✓", "rejected": "✗", "skipped": "–"}.get(decision, "•")  # no emoji: fonts lack them
    lines = [f"# {info['model']}: {mark} {decision}", ""]
    if info.get("reason"):
        lines += [f"**{'Why' if decision != 'skipped' else 'Skipped'}:** {info['reason']}", ""]
    version, champion = info.get("version"), info.get("champion")
    lines += [f"- version: **{version or '-'}**, champion before this run: **{champion or 'none'}**",
              f"- primary metric: `{info.get('primary_metric') or '-'}`"]
    if info.get("version_link"):
        lines.append(f"- model version: {info['version_link']}")
    if info.get("champion_link"):
        lines.append(f"- champion: {info['champion_link']}")
    if info.get("run_link"):
        lines.append(f"- MLflow run: {info['run_link']}")
    if info.get("preview"):
        lines.append(f"- preview: `{info['preview']}`")
    if info.get("metrics"):
        compared = champion is not None and str(champion) != str(version)
        lines += ["", f"| metric | v{version or '-'} |" + (f" champion v{champion} | Δ |" if compared else ""),
                  "|---|---:|" + ("---:|---:|" if compared else "")]
        for name, value, champ in info["metrics"]:
            label = f"**{name}** (primary)" if name == info.get("primary_metric") else name
            both = f" {_num(champ)} | {_delta(value, champ)} |" if compared else ""
            lines.append(f"| {label} | {_num(value)} |{both}")
    if info.get("checks"):
        lines += ["", "| gate check | observed | limit | champion | result |", "|---|---:|---:|---:|---|"]
        for c in info["checks"]:
            status = {"passed": "✓ passed", "failed": "✗ failed"}.get(c.get("status"), str(c.get("status")))
            lines.append(f"| {c.get('check')} | {_num(c.get('observed'))} | {_num(c.get('limit'))} | "
                         f"{_num(c.get('champion'))} | {status} |")
    if info.get("hint"):
        lines += ["", info["hint"]]
    return "\n".join(lines) + "\n"


def _version(c, name: str, version: Any):
    from pipelines import registry_state

    return registry_state.get_version(c, name, str(version)) if version not in (None, "", "None") else None


def family_info(params: dict[str, Any], root: Path, family: str, results: dict[str, Any]) -> dict[str, Any]:
    """What the family's artifact says, from this run's results, promotion.json and the registry."""
    from evaluation.suite import SHOW_OUTPUTS

    from pipelines import tracking
    from pipelines.gate import observed, rejection_text
    from pipelines.prepare import dataset_name
    from pipelines.registry import gate_settings, model_name

    dataset = dataset_name(params)
    name, c = model_name(dataset, family), tracking.client()
    primary = gate_settings(params, family)["primary_metric"]
    train_status = str(results.get(f"train:{family}", {}).get("status", ""))
    promote = results.get(f"promote:{family}", {}).get("result") or {}
    info: dict[str, Any] = {"model": name, "family": family, "primary_metric": primary}
    if train_status.startswith("skipped:"):
        from pipelines import registry_state

        champion, _ = registry_state.champion(c, name)
        info |= {"decision": "skipped", "reason": train_status.removeprefix("skipped:").strip(),
                 "version": str(champion.version) if champion else None,
                 "champion": str(champion.version) if champion else None}
        current, before, checks = champion, champion, []
    else:
        record: dict[str, Any] = {}
        try:
            record = json.loads(catalog.path("promotion", root, dataset, family).read_text())
        except (OSError, ValueError):
            pass
        if str(record.get("version")) != str(promote.get("version")):
            record = {}  # not this run's decision
        info |= {"decision": promote.get("decision"), "version": promote.get("version"),
                 "champion": promote.get("champion_before"),
                 "reason": rejection_text({**record, **promote}) if promote.get("decision") == "rejected" else ""}
        current, before = _version(c, name, promote.get("version")), _version(c, name, promote.get("champion_before"))
        checks = record.get("checks") or []
    other = before is not None and (current is None or str(before.version) != str(current.version))
    tags, champ_tags = (dict(current.tags) if current else {}), (dict(before.tags) if other else None)
    info["metrics"] = [(m, observed(tags, m), observed(champ_tags, m)) for m in dict.fromkeys([primary, *SHOW_OUTPUTS])
                       if m == primary or observed(tags, m) is not None or observed(champ_tags, m) is not None]
    info["checks"] = checks
    if current is not None:
        info["version_link"] = mlflow_link(f"{name} v{current.version}", f"#/models/{name}/versions/{current.version}")
        if current.run_id:
            run = c.get_run(current.run_id)
            info["run_link"] = mlflow_link(run.info.run_name or current.run_id[:8],
                                           f"#/experiments/{run.info.experiment_id}/runs/{current.run_id}")
    if other:
        info["champion_link"] = mlflow_link(f"{name} v{before.version}", f"#/models/{name}/versions/{before.version}")
    preview = catalog.path("plots", root, dataset, family) / "samples.png"
    if preview.exists():
        info["preview"] = str(preview.relative_to(root) if preview.is_relative_to(root) else preview)
    info["hint"] = open_hint()
    return info


def publish_family(params: dict[str, Any], root: Path, family: str, results: dict[str, Any]) -> str | None:
    """Create the family's Markdown artifact (key `<dataset>-<family>-decision`); returns the key, or None
    (with a warning in the flow's log) when it could not be written."""
    from pipelines.prepare import dataset_name

    key = artifact_key(dataset_name(params), family, "decision")
    try:
        info = family_info(params, root, family, results)
        create_markdown_artifact(markdown=family_markdown(info), key=key,
                                 description=f"{info['model']}: {info.get('decision')}")
    except Exception as exc:  # noqa: BLE001 (a report must not fail the run it reports on)
        get_run_logger().warning("no Prefect artifact for %s: %s: %s", family, exc.__class__.__name__, exc)
        return None
    return key


def publish_generation(summary: dict[str, Any]) -> str | None:
    """A table artifact (key `<model>-generation`) of what a generate flow run wrote: model, version, n, seed,
    out dir, samples/s, provider, seconds, shards generated and reused."""
    model = str(summary.get("model", ""))
    key = artifact_key(model.split("/")[0], "generation")
    try:
        create_table_artifact([summary], key=key, description=f"samples generated from {model}")
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("no Prefect artifact for the generation: %s: %s", exc.__class__.__name__, exc)
        return None
    return key
