"""Manual approval (`params.yaml: registry.approval: manual`): a version that passes the gate waits for a
reviewer's decision instead of becoming champion at once.

- `promote` (pipelines/registry.py) records the decision `awaiting approval` (tags and promotion.json, with
  every gate check) and leaves `champion` where it is (`hold`).
- The retrain flow then pauses (`await_review`, Prefect's `pause_flow_run(wait_for_input=ReviewInput)`) for
  up to `registry.approval_timeout` seconds; a reviewer resumes it in the Prefect UI with approve/reject, a
  reason and a name. No answer in time: the version stays awaiting approval, the flow completes and says
  how to decide later. A version that failed the gate never waits.
- `genforge registry approve|reject NAME VERSION --reason ...` (`decide`) records the same decision from a
  terminal, at any time, and resumes the flow run that waits for that version (its id is the version's
  `approval.flow_run_id` tag while it waits), which then carries on.

A decision is final and recorded once: `approval.decision|by|at|reason|via` tags, `promotion.decision`
(`approved` / `rejected`) and promotion.json. Approving moves `champion` through
`registry_state.change_champion` (written ahead, completed by the next registry command after a crash);
rejecting writes the `approval.*` tags before `promotion.decision`, so a cut-short reject is completed by
running it again. Running the same decision again changes nothing; the other decision is refused.
"""
from __future__ import annotations

import datetime as dt
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines import catalog, registry_state, tracking
from pipelines.errors import GenforgeError, UsageError

AWAITING = "awaiting approval"
DECISIONS = {"approve": "approved", "reject": "rejected"}
TAG = "approval."  # approval.decision | by | at | reason | via
FLOW_RUN_TAG = "approval.flow_run_id"  # the flow run waiting for this version, while it waits
API_TAG = "approval.prefect_api"  # the Prefect API that run talks to ("" = the project's ephemeral one)
POLL_SECONDS = 3  # how often a paused flow asks whether it was resumed
UI_REVIEWER = "prefect-ui"  # the Prefect UI names no user: the reviewer field defaults to this


def settings(params: dict[str, Any], family: str) -> tuple[str, int]:
    """(`registry.approval`, `registry.approval_timeout` in seconds) for `family`, per-family overrides
    applied. Raises ConfigError for a bad value (did-you-mean for a misspelt mode)."""
    from pipelines.settings import known_families
    from pipelines.settings.sections import RegistrySettings

    registry = RegistrySettings.from_dict(params.get("registry"), "registry", known_families()).for_family(family)
    return registry.approval, registry.approval_timeout


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def later_hint(name: str, version: str) -> str:
    return f'genforge registry approve|reject {name} {version} --reason "..."'


# ---- promote: a passing gate waits for a reviewer ------------------------------------------------
def hold(params: dict[str, Any], family: str, record: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    """The gate's `record` as promote stores it: a reviewer's earlier rejection of this version stands
    (the gate is not asked again); with `registry.approval: manual` a passing gate becomes `awaiting
    approval` with champion unchanged; otherwise `record` as it is."""
    if tags.get(TAG + "decision") == "rejected":
        return {**record, "decision": "rejected", "promoted": False, "champion_after": record["champion_before"],
                "reasons": [_review_line(_review_of(tags)), *record["reasons"]]}
    if record["decision"] != "promoted" or settings(params, family)[0] != "manual":
        return record
    return {**record, "decision": AWAITING, "promoted": False, "gate_passed": True,
            "champion_after": record["champion_before"],
            "reasons": [*record["reasons"], "registry.approval is manual: a reviewer decides (Prefect UI, or "
                                            f"{later_hint(record['name'], record['version'])})"]}


# ---- the decision ------------------------------------------------------------------------------------
def _review_of(tags: dict[str, str]) -> dict[str, str]:
    return {k: tags.get(TAG + k, "") for k in ("decision", "by", "at", "reason", "via")}


def _review_line(review: dict[str, str]) -> str:
    return f"{review['decision']} by {review['by']} ({review['via']}, {review['at']}): {review['reason']}"


def _refuse_state(c, name: str, version: str, tags: dict[str, str], decision: str) -> None:
    """Raise the one-line reason a version cannot be decided on now (None: it awaits approval)."""
    champion, _ = registry_state.champion(c, name)
    if champion is not None and str(champion.version) == version:
        raise GenforgeError(f"{name}/{version} is already champion; nothing to approve or reject (to go back "
                            f"to the previous champion: genforge registry rollback {name} --reason ...)")
    state = tags.get("promotion.decision")
    if state == AWAITING:
        return
    if state is None:
        raise GenforgeError(f"{name}/{version} is not awaiting approval: the promotion gate has not run on it "
                            f"(run `genforge stage promote --family {tags.get('family', 'FAMILY')}` with "
                            f"registry.approval: manual)")
    if state == "rejected":
        why = (tags.get("promotion.reasons") or "").split("; ")[0]
        override = (f"; to override the gate: genforge registry promote {name} {version} --reason ..."
                    if decision == "approve" else "")
        raise GenforgeError(f"{name}/{version} is not awaiting approval: it failed the promotion gate ({why})"
                            f"{override}")
    raise GenforgeError(f"{name}/{version} is not awaiting approval (its decision: {state})")


def decide(name: str, version: str, decision: str, reason: str, by: str | None = None, via: str = "cli",
           root: Path | None = None, resume: bool = True) -> dict[str, Any]:
    """Record a reviewer's `decision` ("approve" | "reject") on `name`/`version`, which must be awaiting
    approval. Approve moves champion to it (written ahead, see module); both write the `approval.*` and
    `promotion.*` tags and, when `<root>/reports/<dataset>/<family>/promotion.json` is about this version,
    that file (also logged to the version's run). With `resume`, a flow run paused for this version is
    resumed with the decision as its input. The same decision again returns the recorded one with
    `already: True` and changes nothing (a cut-short one is completed). Returns the promotion record.

    Raises UsageError (exit 2) for an empty reason or an unknown decision; GenforgeError (exit 1, nothing
    changed) for an unknown model, a deleted version, one that is not awaiting approval (gate failed, no
    gate yet, already champion, decided otherwise)."""
    if decision not in DECISIONS:
        raise UsageError(f"decision {decision!r}: use approve or reject")
    if not str(version).isdigit():
        raise UsageError(f"VERSION must be a version number like 3, got {version!r}")
    if by is not None and not by.strip():
        raise UsageError("--by: give the reviewer's name, or leave --by out for your login name")
    reason, by = (reason or "").strip(), (by or "").strip() or _user()
    if not reason:
        raise UsageError("--reason: give the reason for the decision (it is recorded on the version)")
    wanted, version = DECISIONS[decision], str(version)
    c = tracking.client()
    registry_state.require_model(c, name)
    registry_state.reconcile(c, name)  # an approve a crash cut short is completed first
    mv = registry_state.require_version(c, name, version)
    tags = dict(mv.tags)
    prior = _review_of(tags)
    # an approval from an earlier round (approved, rolled back, gated again) does not count: an approve writes
    # promotion.decision with the approval.* tags in one write-ahead move, so "approved" + "awaiting" is a new round
    if prior["decision"] and not (prior["decision"] == "approved" and tags.get("promotion.decision") == AWAITING):
        if prior["decision"] != wanted:
            raise GenforgeError(f"{name}/{version} was already {_review_line(prior)}; a decision is final (steer "
                                f"the champion with genforge registry promote|rollback)")
        if wanted == "rejected" and tags.get("promotion.decision") == AWAITING:  # a reject cut short: finish it
            _write_reject(c, name, version, _reject_tags(prior, name, version))
        record = _record(c, name, version, prior, None, already=True)
        return {**record, "already": True,
                "promotion_json": _update_promotion_json(c, mv, record, root)}
    _refuse_state(c, name, version, tags, decision)
    champion, _ = registry_state.champion(c, name)
    before = str(champion.version) if champion is not None else None
    review = {"decision": wanted, "by": by, "at": _now(), "reason": reason, "via": via}
    record = _record(c, name, version, review, before)
    if wanted == "approved":
        past = registry_state.history(c, name, before)
        record_tags = {**{TAG + k: v for k, v in review.items()}, **registry_state.decision_tags(record)}
        registry_state.change_champion(c, name, version, past + [version], version, record_tags, "approve")
    else:
        _write_reject(c, name, version, _reject_tags(review, name, version))
    record["promotion_json"] = _update_promotion_json(c, mv, record, root)
    from pipelines.card import publish_card

    publish_card(c, name, version, decision=record)  # the model card says who decided, when and why
    if resume:
        record["flow_run"] = resume_waiting_flow(tags, review)
    return record


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _record(c, name: str, version: str, review: dict[str, str], champion_before: str | None,
            already: bool = False) -> dict[str, Any]:
    approved = review["decision"] == "approved"
    after = version if approved else champion_before
    if already:  # the decision was recorded before: report where champion is now
        champion, _ = registry_state.champion(c, name)
        after = champion_before = str(champion.version) if champion is not None else None
    return {"name": name, "version": version, "decision": review["decision"], "promoted": approved,
            "reasons": [_review_line(review)], "approval": review, "champion_before": champion_before,
            "champion_after": after, "at": review["at"]}


def _reject_tags(review: dict[str, str], name: str, version: str) -> dict[str, str]:
    """In the order they are written: who/when/why, then `approval.decision`, then `promotion.decision`. Cut
    short before `approval.decision`, nothing counts as decided (the rerun decides afresh); after it, the
    version reads as awaiting approval with a recorded rejection, which the next reject completes."""
    record = {"decision": "rejected", "reasons": [_review_line(review)], "at": review["at"], "approval": review}
    decision = registry_state.decision_tags(record)
    return {**{TAG + k: v for k, v in review.items() if k != "decision"},
            **{k: v for k, v in decision.items() if k != "promotion.decision"},
            TAG + "decision": review["decision"], "promotion.decision": decision["promotion.decision"]}


def _write_reject(c, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():  # in order (see _reject_tags)
        c.set_model_version_tag(name, version, key, value[:4900])


def _update_promotion_json(c, mv, record: dict[str, Any], root: Path | None) -> str | None:
    """Add the decision to promotion.json when it is about this version (it holds the gate's checks); log it
    to the version's run. Returns its path, or None when the file is missing or about another version."""
    from pipelines.config import project_root
    from pipelines.registry import _write_promotion

    tags = dict(mv.tags)
    if not tags.get("dataset") or not tags.get("family"):
        return None
    path = catalog.path("promotion", Path(root or project_root()), tags["dataset"], tags["family"])
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(current, dict) or str(current.get("version")) != str(mv.version) or \
            current.get("name") != record["name"]:
        return None
    if current.get("approval") == record["approval"] and current.get("decision") == record["decision"]:
        return str(path)  # already there (the same decision run again)
    gate_reasons = [r for r in current.get("gate_reasons", current.get("reasons") or [])]
    merged = {**current, **{k: v for k, v in record.items() if k not in ("already", "flow_run")},
              "gate_reasons": gate_reasons, "reasons": [*record["reasons"], *gate_reasons]}
    _write_promotion(c, merged, mv.run_id, path)
    return str(path)


# ---- resuming a paused flow run ------------------------------------------------------------------------
@lru_cache(maxsize=1)
def review_input():
    """The Prefect RunInput the paused flow waits for (the UI renders it as a form): decision (approve |
    reject), reason (not blank: the server refuses a blank one), reviewer (defaults to "prefect-ui")."""
    from typing import Literal

    from prefect.input import RunInput
    from pydantic import Field

    class ReviewInput(RunInput):
        decision: Literal["approve", "reject"] = Field(
            description="approve: this version becomes champion; reject: champion stays where it is")
        reason: str = Field(min_length=1, pattern=r"\S",
                            description="Why: recorded on the version and in promotion.json")
        reviewer: str = Field(UI_REVIEWER, pattern=r"\S", description="Who decides (recorded with the reason)")

    return ReviewInput


def _api_settings(api: str | None):
    """Prefect settings for talking to `api` (the flow's server), or the current ones when it was the
    ephemeral server of the project (which shares PREFECT_HOME's database)."""
    import contextlib

    if not api:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: api})


def resume_waiting_flow(tags: dict[str, str], review: dict[str, str]) -> str | None:
    """Resume the flow run that paused for this version (the `approval.flow_run_id` tag) with `review` as its
    input; it then records the same decision (nothing left to do) and continues. Returns what happened, in
    words, or None when no flow run waits. Never raises: the decision is already recorded."""
    run_id = tags.get(FLOW_RUN_TAG)
    if not run_id:
        return None
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    payload = {"decision": "approve" if review["decision"] == "approved" else "reject",
               "reason": review["reason"], "reviewer": review["by"]}
    try:
        with _api_settings(tags.get(API_TAG)):
            resume_flow_run(UUID(run_id), run_input=payload)
    except Exception as exc:  # noqa: BLE001 (no longer paused, timed out, server gone: the decision stands)
        text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        where = tags.get(API_TAG) or "the project's Prefect database"
        return f"flow run {run_id} ({where}) was not resumed ({text}); the decision is recorded"
    return f"resumed flow run {run_id}: it continues with this decision"


# ---- in the retrain flow ------------------------------------------------------------------------------
def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _checks_markdown(record: dict[str, Any]) -> str:
    rows = ["| check | this version | champion |", "|---|---|---|"]
    for k in record.get("checks") or []:
        mark = {"passed": "✓", "failed": "✗"}.get(k["status"], k["status"])
        rows.append(f"| {mark} {k['check']} | {_number(k['observed'])} | {_number(k['champion'])} |")
    return "\n".join(rows)


def _description(name: str, version: str, record: dict[str, Any]) -> str:
    """The Markdown the Prefect UI shows above the decision form."""
    before = record.get("champion_before")
    reasons = [r for r in record.get("reasons") or [] if not r.startswith("registry.approval is manual")]
    lines = [f"### {name} v{version} passed the promotion gate and awaits your decision", "",
             f"Champion now: {'v' + str(before) if before else 'none'}. **approve** makes v{version} champion; "
             f"**reject** leaves the champion as it is. Give a reason (required) and your name.", "",
             _checks_markdown(record), "", *[f"- {r}" for r in reasons], "",
             f"From a terminal instead: `genforge registry approve {name} {version} --reason \"...\"` "
             f"(or `reject`)"]
    return "\n".join(lines)


def review_pending(params: dict[str, Any], root: Path, results: dict[str, Any]) -> None:
    """Call from a flow after the family chains: for every family whose promote left its version awaiting
    approval, wait for the reviewer (`await_review`); the outcome goes to `results["approval:<family>"]`."""
    for key in [k for k in results if k.startswith("promote:")]:
        promoted = (results[key] or {}).get("result") or {}
        if promoted.get("decision") == AWAITING:
            family = key.split(":", 1)[1]
            results[f"approval:{family}"] = await_review(params, root, family, str(promoted["name"]),
                                                         str(promoted["version"]))


def await_review(params: dict[str, Any], root: Path, family: str, name: str, version: str) -> dict[str, Any]:
    """Pause the current flow run for a reviewer's ReviewInput (at most `registry.approval_timeout` s), then
    record it (`decide`). Returns the promotion record, or {"decision": "awaiting approval", ...} when no
    decision came (timeout, 0 timeout, a server that cannot pause), with the CLI line to decide later."""
    from prefect import get_run_logger
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    log = get_run_logger()
    timeout = settings(params, family)[1]
    waiting = {"decision": AWAITING, "name": name, "version": version, "decide_with": later_hint(name, version)}
    if timeout <= 0:
        log.info("%s/%s awaits approval (registry.approval_timeout is 0: not waiting); decide with: %s",
                 name, version, later_hint(name, version))
        return waiting
    run_id = str(FlowRunContext.get().flow_run.id)
    c = tracking.client()
    c.set_model_version_tag(name, version, API_TAG, _api_url() or "")
    c.set_model_version_tag(name, version, FLOW_RUN_TAG, run_id)
    log.info("%s/%s passed the gate and awaits approval: waiting up to %d s. Prefect UI: open flow run %s, "
             "Resume, choose approve or reject and give a reason. Terminal: %s", name, version, timeout, run_id,
             later_hint(name, version))
    try:
        model = review_input().with_initial_data(description=_description(name, version, _promotion(root, c, name,
                                                                                                     version)),
                                                 reviewer=UI_REVIEWER)
        answer = pause_flow_run(wait_for_input=model, timeout=timeout, poll_interval=POLL_SECONDS,
                                key=f"approval-{name}-{version}")
    except FlowPauseTimeout:
        _running_again(run_id)
        log.warning("no decision on %s/%s within %d s: it stays awaiting approval and champion is unchanged. "
                    "Decide later with: %s", name, version, timeout, later_hint(name, version))
        return {**waiting, "timed_out": True}
    except RuntimeError as exc:  # the API refused the pause
        log.warning("%s/%s awaits approval; this flow run cannot pause here (%s). Decide with: %s", name,
                    version, exc, later_hint(name, version))
        return waiting
    finally:
        try:
            c.delete_model_version_tag(name, version, FLOW_RUN_TAG)
        except Exception:  # noqa: BLE001 (the version was deleted meanwhile: nothing waits for it)
            pass
    try:
        record = decide(name, version, answer.decision, answer.reason, answer.reviewer or UI_REVIEWER,
                        via=UI_REVIEWER, root=root, resume=False)
    except GenforgeError as exc:
        log.warning("%s/%s: the reviewer's %s was not recorded: %s", name, version, answer.decision, exc)
        return {**waiting, "error": str(exc)}
    log.info("%s/%s %s%s", name, version, _review_line(record["approval"]),
             f"; champion is now v{record['champion_after']}" if record["champion_after"] else "")
    return record


def _promotion(root: Path, c, name: str, version: str) -> dict[str, Any]:
    mv = registry_state.get_version(c, name, version)
    tags = dict(mv.tags) if mv is not None else {}
    try:
        record = json.loads(catalog.path("promotion", root, tags["dataset"], tags["family"]).read_text())
    except (OSError, ValueError, KeyError):
        return {}
    return record if isinstance(record, dict) and str(record.get("version")) == version else {}


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _running_again(run_id: str) -> None:
    """After a pause timed out the server would turn the run's next state into Failed ("paused and never
    resumed"); the run goes on, so it is set Running again (forced: the timed-out pause can no longer be
    resumed normally)."""
    from uuid import UUID

    from prefect import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Running(), force=True)
