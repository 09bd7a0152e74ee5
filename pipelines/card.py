"""The model card: the Markdown a reviewer decides a registry version from.

``render_card(record)`` is pure: a *card record* (a JSON-able dict, built from the registry by
``card_record``) in, Markdown out, in this order:

1. the decision and EVERY gate check (observed value, limit, the champion's value, pass or fail), the
   primary metric against the champion last; before ``promote`` the checks are a preview ("pending");
2. the samples, as the evaluation logged them: a sample grid (``GRID_ARTIFACTS``, images) linked as
   ``get-artifact?path=..&run_uuid=..``, a link relative to the MLflow UI's page, the only form its Markdown
   sanitizer keeps that works behind any host and ``--static-prefix`` (``data:`` URIs are stripped; absolute
   URLs would pin one server address); or a Markdown table of sample strings (``TABLE_ARTIFACTS``, written by
   a modality's sample metric, e.g. ``sample_table`` for text: one column per class), embedded as it is;
   with neither the card says how to get samples;
3. the metrics against the champion: value, champion's value, delta (this minus champion; "better" /
   "worse" where the gate gives the metric a direction) and the real-data floor (``<metric>_real_floor``);
4. the data set (name, sha256, validation result), 5. training (family, epochs, wall time, git commit,
   params hash, run), 6. how to serve it (the ``genforge generate`` and ``mlflow.pyfunc`` lines).

``publish_card`` sets the card as the version's description (cut to ``DESCRIPTION_LIMIT`` characters:
``model_versions.description`` is VARCHAR(5000) on PostgreSQL/MySQL stores) and logs the full card as the
run artifact ``model_card/v<version>/model_card.md``. ``register`` publishes it with the gate pending,
``promote`` and the manual ``registry promote|rollback`` publish it again with their decision.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable
from urllib.parse import urlencode

DESCRIPTION_LIMIT = 5000
IMAGE_MODALITIES = ("image",)  # modalities whose evaluation logs a sample grid image
GRID_ARTIFACTS = ("evaluation/samples.png",)  # run artifacts tried in order for the sample grid
TABLE_ARTIFACTS = ("evaluation/samples.md",)  # a Markdown table of samples (evaluation.suite.sample_table)
TABLE_LIMIT = 2000  # characters of a sample table the card embeds (the description holds 5000 in all)
VALIDATION_TAG = "data_validation"  # "passed (23 checks)", set at register from reports/<ds>/validation.json
PASS, FAIL = "✓ pass", "✗ fail"


def card_artifact(version: str) -> str:
    """The run artifact path of a version's card."""
    return f"model_card/v{version}/model_card.md"


# ---- formatting helpers (pure) ------------------------------------------------------------------
def fmt(value: Any) -> str:
    """A table cell: numbers with 4 significant digits, None as "–", strings as given (``|`` escaped)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def signed(delta: float | None) -> str:
    """``+1.25`` / ``-0.5`` / ``0`` (4 significant digits), "–" for no delta."""
    if delta is None or math.isnan(delta):
        return "–"
    return "0" if delta == 0 else f"{delta:+.4g}"


def metric_directions(record: dict[str, Any]) -> dict[str, str]:
    """{metric: "min" | "max"}: the better direction the gate gives a metric (a ``max`` limit: lower is
    better; a ``min`` limit: higher is better; the primary metric's ``direction``)."""
    out = {}
    for check in (record.get("decision") or {}).get("checks") or []:
        if check.get("op") in ("max", "min"):
            out[check["metric"]] = "min" if check["op"] == "max" else "max"
    primary, direction = (record.get("decision") or {}).get("primary_metric"), (record.get("decision") or {}).get("direction")
    if primary and direction in ("minimize", "maximize"):
        out[primary] = "min" if direction == "minimize" else "max"
    return out


def judgement(delta: float | None, direction: str | None) -> str:
    """"better" / "worse" / "same" for a delta (this minus champion) of a metric with a direction, else ""."""
    if delta is None or direction is None or math.isnan(delta):
        return ""
    if delta == 0:
        return "same"
    return "better" if (delta < 0) == (direction == "min") else "worse"


def metric_rows(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(headline rows, other rows) of the metrics table: {"metric", "value", "champion", "delta",
    "judgement", "floor"} for every ``metric.*`` tag but the ``*_real_floor`` ones (a column of their own).
    Headline: the primary metric, the gate's metrics and ``record["headline"]``, in that order."""
    tags, champ = record.get("tags") or {}, ((record.get("champion") or {}).get("tags") or {})
    values = {k[len("metric."):]: number(v) for k, v in tags.items() if k.startswith("metric.")}
    champion = {k[len("metric."):]: number(v) for k, v in champ.items() if k.startswith("metric.")}
    directions = metric_directions(record)
    decision = record.get("decision") or {}
    first = [decision.get("primary_metric"), *[c.get("metric") for c in decision.get("checks") or []],
             *(record.get("headline") or [])]
    names = [m for m in values if not m.endswith("_real_floor")]
    headline = [m for m in dict.fromkeys(first) if m in names]
    rows = []
    for m in headline + sorted(set(names) - set(headline)):
        value, other = values[m], champion.get(m)
        delta = value - other if value is not None and other is not None else None
        rows.append({"metric": m, "value": value, "champion": other, "delta": delta,
                     "judgement": judgement(delta, directions.get(m)), "floor": values.get(f"{m}_real_floor")})
    return rows[:len(headline)], rows[len(headline):]


def check_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every gate check as {"check", "observed", "limit", "champion", "status", "note"}, then the primary
    metric against the champion. ``status``: pass / fail / skipped (a ``required: false`` check whose metric
    is missing) / not compared; before ``promote`` (``record["pending"]``) the same, as a preview."""
    decision = record.get("decision") or {}
    rows = []
    for c in decision.get("checks") or []:
        status = {"passed": "pass", "failed": "fail"}.get(c.get("status"), c.get("status") or "–")
        rows.append({"check": c.get("check"), "observed": c.get("observed"), "limit": c.get("limit"),
                     "champion": c.get("champion"), "status": status, "note": c.get("reason", "")})
    primary = decision.get("primary_metric")
    if primary:
        hard_ok = all(r["status"] != "fail" for r in rows) and decision.get("value") is not None
        margin = (record.get("gate") or {}).get("margin", decision.get("margin", 0.0))
        better = "lower" if decision.get("direction") == "minimize" else "higher"
        champ = decision.get("champion_value")
        if not hard_ok:
            status, note = "not compared", "a check above failed"
        elif champ is None:
            status, note = "pass", "no champion to beat: the first passing version becomes champion"
        else:
            # the gate's own comparison (pipelines.gate.gate_decision), not the final decision: a reviewer's
            # reject or an awaiting approval does not make a challenger that beats the champion "fail" here
            from pipelines.gate import improvement

            gain = improvement(decision["value"], champ, decision.get("direction", "minimize"))
            status = "pass" if gain > float(margin or 0.0) else "fail"
            note = f"{better} is better; must beat the champion by more than {fmt(margin)}"
        rows.append({"check": f"{primary} beats the champion", "observed": decision.get("value"),
                     "limit": f"{'<' if better == 'lower' else '>'} {fmt(champ)} {'−' if better == 'lower' else '+'} "
                              f"{fmt(margin)}" if champ is not None else "–",
                     "champion": champ, "status": status, "note": note})
    return rows


def _status_cell(status: str, pending: bool) -> str:
    word = {"pass": PASS, "fail": FAIL}.get(status, status)
    return f"would {word}" if pending and status in ("pass", "fail") else word


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return lines


def grid_link(run_id: str, artifact: str) -> str:
    """The sample grid's URL relative to the MLflow UI's page (the ``get-artifact`` route of the server)."""
    return "get-artifact?" + urlencode({"path": artifact, "run_uuid": run_id})


# ---- the card (pure) ----------------------------------------------------------------------------
def render_card(record: dict[str, Any], limit: int | None = None) -> str:
    """The card's Markdown (see the module doc) from a card record. ``limit``: at most that many characters
    (the description): the "other metrics" table goes first, then the tail is cut with a pointer to the
    artifact. Raises nothing for missing parts: each section says what it lacks."""
    full = _render(record, others=True)
    if limit is None or len(full) <= limit:
        return full
    short = _render(record, others=False)
    if len(short) <= limit:
        return short
    note = (f"\n\n*(cut to fit MLflow's {limit}-character description; the full card is the run artifact "
            f"`{card_artifact(record['version'])}`)*\n")
    cut = short[:limit - len(note)]
    return cut[:cut.rfind("\n")] + note


def _render(record: dict[str, Any], others: bool) -> str:
    name, version = record["name"], str(record["version"])
    tags = record.get("tags") or {}
    champion = record.get("champion")
    champ_label = f"champion v{champion['version']}" if champion else "champion"
    decision = record.get("decision") or {}
    pending = bool(record.get("pending"))
    out = [f"# {name} v{version}: {tags.get('family', '?')} on {tags.get('dataset', '?')}", ""]

    # 1. decision and every check
    if pending:
        out.append("**Decision: pending**: the promotion gate runs at `genforge stage promote` "
                   "(the checks below are a preview against the current champion).")
    else:
        word = decision.get("decision", "–")
        mark = ("✓" if word in ("promoted", "manual-promote", "already champion", "approved") else
                "✗" if word == "rejected" else "…" if word == "awaiting approval" else "↺")
        when = f" at {decision['at']}" if decision.get("at") else ""
        out.append(f"**Decision: {mark} {word}**{when}; champion before: "
                   f"{'v' + str(decision['champion_before']) if decision.get('champion_before') else 'none'}, after: "
                   f"{'v' + str(decision['champion_after']) if decision.get('champion_after') else 'none'}.")
    reasons = decision.get("reasons") or []
    if reasons:
        out += [""] + [f"- {r}" for r in reasons]
    out.append("")
    checks = check_rows(record)
    if checks:
        if record.get("checks_from"):
            out += [f"Gate checks ({record['checks_from']}):", ""]
        out += _table(["check", "observed", "limit", champ_label, "status"],
                      [[r["check"], r["observed"], r["limit"], r["champion"],
                        _status_cell(r["status"], pending) + (f" ({r['note']})" if r["note"] else "")] for r in checks])
    else:
        out.append("The promotion gate has not run on this version.")

    # 2. samples, behind the modality
    out += ["", "## Samples", ""]
    modality, grid, table = record.get("modality") or "image", record.get("grid"), record.get("sample_table")
    if grid:
        out.append(f"![sample grid of {name} v{version} (run artifact {grid['artifact']})]"
                   f"({grid_link(grid['run_id'], grid['artifact'])})")
        out += ["", f"*Evaluation samples: run artifact `{grid['artifact']}` of run `{grid['run_id']}`.*"]
    elif table:
        out += table["text"].rstrip("\n").splitlines()
        out += ["", f"*Evaluation samples: run artifact `{table['artifact']}` of run `{table['run_id']}`.*"]
    elif modality in IMAGE_MODALITIES:
        out.append("No sample grid was logged for this version's run.")
    else:
        out.append(f"The {modality} modality has no image grid; generate samples with the command under "
                   f"*How to serve it*.")

    # 3. metrics against the champion
    headline, rest = metric_rows(record)
    out += ["", f"## Metrics against the {champ_label}" if champion else "## Metrics (no champion to compare with)", ""]
    header = ["metric", f"v{version}", champ_label, "delta", "real-data floor"]
    def cells(r):  # noqa: E306
        delta = signed(r["delta"]) + (f" ({r['judgement']})" if r["judgement"] else "")
        return [r["metric"], r["value"], r["champion"], delta, r["floor"]]
    if headline or rest:
        out += _table(header, [cells(r) for r in headline])
        if others and rest:
            out += ["", "Other metrics:", ""] + _table(header, [cells(r) for r in rest])
        elif rest:
            out += ["", f"*{len(rest)} other metrics: see the artifact `{card_artifact(version)}`.*"]
    else:
        out.append("No metrics recorded.")

    # 4. data set, 5. training
    data = record.get("dataset") or {}
    train = record.get("training") or {}
    wall = number(train.get("wall_seconds"))
    out += ["", "## Data set", "",
            f"- name: `{data.get('name') or tags.get('dataset', '–')}`",
            f"- sha256: `{data.get('sha256') or tags.get('data_sha256', '–')}`",
            f"- validation: {data.get('validation') or tags.get(VALIDATION_TAG) or ('passed' if tags.get('validated') == 'true' else 'unknown')}",
            "", "## Training", "",
            f"- family: `{tags.get('family', '–')}`, sampler: `{record.get('sampler') or '–'}`, modality: `{modality}`",
            f"- epochs: {fmt(train.get('epochs'))}, wall time: {'–' if wall is None else f'{wall:.1f} s'}"
            + (f", device: {train['device']}" if train.get("device") else ""),
            f"- git commit: `{tags.get('git_commit', '–')}`",
            f"- params hash: `{tags.get('params_hash', '–')}`",
            f"- MLflow run: `{record.get('run_id') or '–'}`"]

    # 6. how to serve it
    out += ["", "## How to serve it", "", "```", f"genforge generate {name}/{version} -n 16 --seed 0 "
            f"--out samples/{name}-v{version}", "```", "", "```python", "import mlflow",
            f'mlflow.pyfunc.load_model("models:/{name}/{version}").predict({{"n": 16, "seed": 0}})', "```", ""]
    return "\n".join(out)


# ---- the record, from the registry (MLflow) -----------------------------------------------------
def validation_summary(report: dict[str, Any]) -> str:
    """reports/<ds>/validation.json -> "passed (23 checks)" / "failed: check_a, check_b (23 checks)"."""
    checks = report.get("checks") or []
    failed = [str(c.get("name")) for c in checks if not c.get("success")] or [str(f) for f in report.get("failed") or []]
    if report.get("success") and not failed:
        return f"passed ({len(checks)} checks)"
    return f"failed: {', '.join(dict.fromkeys(failed)) or 'see the report'} ({len(checks)} checks)"


def _promotion_json(c, run_id: str | None, version: str) -> dict[str, Any] | None:
    """The gate's record logged by ``promote`` (``promotion/v<version>/promotion.json``), or None."""
    if not run_id:
        return None
    import tempfile
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="genforge-card-") as tmp:
        try:
            local = c.download_artifacts(run_id, f"promotion/v{version}/promotion.json", tmp)
            return json.loads(Path(local).read_text())
        except (MlflowException, OSError, ValueError):
            return None


def _artifact_text(c, run_id: str, artifact: str) -> str | None:
    """A small text run artifact (at most TABLE_LIMIT characters, cut at a line), or None when unreadable."""
    import tempfile
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="genforge-card-") as tmp:
        try:
            text = Path(c.download_artifacts(run_id, artifact, tmp)).read_text(encoding="utf-8", errors="replace")
        except (MlflowException, OSError):
            return None
    return text if len(text) <= TABLE_LIMIT else text[:text.rfind("\n", 0, TABLE_LIMIT) + 1]


def card_record(c, name: str, version: str, *, decision: dict[str, Any] | None = None,
                gate: dict[str, Any] | None = None, against: str | None = "auto",
                headline: Iterable[str] = ()) -> dict[str, Any]:
    """The card record of ``name``/``version`` from the registry (MLflow client ``c``).

    ``decision``: a promotion record (``promote``'s, or a manual promote/rollback's: its gate checks are
    taken from the version's ``promotion.json``); None: the version's latest recorded decision, or, when it
    has none, pending with a preview of ``gate`` (a resolved gate) when given. ``against``: the champion
    to compare with: a version, None (no comparison), or "auto" (the decision's champion before it, else
    the current champion; never the version itself)."""
    from pipelines import registry_state
    from pipelines.gate import gate_decision

    mv = registry_state.require_version(c, name, str(version))
    version, tags = str(mv.version), dict(mv.tags)
    run = None
    if mv.run_id:
        from mlflow.exceptions import MlflowException

        try:
            run = c.get_run(mv.run_id)
        except MlflowException:
            run = None
    needs_log = decision is None and tags.get("promotion.decision") or decision is not None and not decision.get("checks")
    logged = _promotion_json(c, mv.run_id, version) if needs_log else None
    pending = False
    checks_from = None
    if decision is None and tags.get("promotion.decision"):
        decision = logged if logged and logged.get("decision") == tags["promotion.decision"] else {
            "decision": tags["promotion.decision"], "reasons": [r for r in tags.get("promotion.reasons", "").split("; ") if r],
            "at": tags.get("promotion.at")}
    if decision is not None and not decision.get("checks") and logged and logged.get("checks"):
        keep = {k: logged.get(k) for k in ("checks", "primary_metric", "direction", "margin", "value", "champion_value",
                                           "promoted")}
        decision = {**decision, **keep}
        checks_from = f"as the promotion gate recorded them in promotion.json, last written {logged.get('at', '?')}"
    if against == "auto":
        against = None
        for key in ("champion_before", "champion_after"):
            if decision and decision.get(key) and str(decision[key]) != version:
                against = str(decision[key])
                break
        if against is None and decision is None:
            current, _ = registry_state.champion(c, name)
            against = str(current.version) if current is not None and str(current.version) != version else None
    champion = registry_state.get_version(c, name, against) if against else None
    champion_tags = dict(champion.tags) if champion is not None else None
    if decision is None:
        pending = True
        decision = gate_decision(tags, champion_tags, gate) if gate is not None else {}
    grid = table = None
    modality = tags.get("modality", "image")
    if run is not None:
        listed = {a.path for a in c.list_artifacts(mv.run_id, "evaluation")}
        artifact = next((a for a in GRID_ARTIFACTS if a in listed), None)
        grid = {"run_id": mv.run_id, "artifact": artifact} if artifact else None
        artifact = next((a for a in TABLE_ARTIFACTS if a in listed), None)
        text = _artifact_text(c, mv.run_id, artifact) if artifact and grid is None else None
        table = {"run_id": mv.run_id, "artifact": artifact, "text": text} if text else None
    params = run.data.params if run is not None else {}
    wall = None
    if run is not None and run.info.end_time and run.info.start_time:
        wall = (run.info.end_time - run.info.start_time) / 1000.0
    return {"name": name, "version": version, "run_id": mv.run_id, "tags": tags, "modality": modality,
            "sampler": tags.get("sampler"), "decision": decision, "pending": pending, "checks_from": checks_from,
            "gate": gate or (decision or {}).get("gate") or (logged or {}).get("gate"), "headline": list(headline),
            "champion": {"version": str(champion.version), "tags": champion_tags} if champion is not None else None,
            "grid": grid, "sample_table": table,
            "dataset": {"name": tags.get("dataset"), "sha256": tags.get("data_sha256"),
                        "validation": tags.get(VALIDATION_TAG)},
            "training": {"epochs": number(params.get("train.epochs")), "wall_seconds": wall,
                         "device": None, "git_commit": tags.get("git_commit"), "params_hash": tags.get("params_hash")}}


def publish_card(c, name: str, version: str, *, decision: dict[str, Any] | None = None,
                 gate: dict[str, Any] | None = None, facts: dict[str, str] | None = None) -> str:
    """Write the card of ``name``/``version``: ``facts`` (version tags such as modality, sampler,
    data_validation, set when missing), then the description (at most ``DESCRIPTION_LIMIT`` characters)
    and the run artifact ``model_card/v<version>/model_card.md``. Returns the full Markdown."""
    from evaluation.suite import HEADLINE_OUTPUTS

    from pipelines import registry_state

    mv = registry_state.require_version(c, name, str(version))
    for key, value in (facts or {}).items():
        if value is not None and mv.tags.get(key) != str(value):
            c.set_model_version_tag(name, str(version), key, str(value))
    record = card_record(c, name, str(version), decision=decision, gate=gate, headline=HEADLINE_OUTPUTS)
    text = render_card(record)
    if mv.run_id:
        c.log_text(mv.run_id, text, card_artifact(str(version)))
    c.update_model_version(name, str(version), description=render_card(record, limit=DESCRIPTION_LIMIT))
    return text


def publish_registered(c, name: str, version: str, gate: dict[str, Any], validation_path, sampler_path) -> str:
    """``register``'s card: the gate pending (a preview of ``gate``), with the facts only the project knows
    (reports/<ds>/validation.json, the exported sampler.json; an unreadable one is left out)."""
    from pathlib import Path

    def read(path) -> dict[str, Any] | None:
        try:
            value = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    return publish_card(c, name, version, gate=gate, facts=register_facts(read(validation_path), read(sampler_path)))


def register_facts(validation_report: dict[str, Any] | None, sampler_json: dict[str, Any] | None) -> dict[str, str]:
    """The version tags the card reads that ``register`` knows locally: modality, sampler kind, the data
    validation summary."""
    facts: dict[str, str] = {}
    if sampler_json:
        facts["modality"] = str(sampler_json.get("modality", "image"))
        if sampler_json.get("kind") or sampler_json.get("sampler"):
            facts["sampler"] = str(sampler_json.get("kind") or sampler_json.get("sampler"))
    if validation_report:
        facts[VALIDATION_TAG] = validation_summary(validation_report)
    return facts
