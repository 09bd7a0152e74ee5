"""Manual approval (registry.approval: manual) against a real SQLite registry: promote leaves a passing version
awaiting approval; `genforge registry approve|reject` decide, once, crash-safe; every refusal is one line
that changes nothing. The paused retrain flow against a real Prefect server: tests/test_approval_flow.py."""
import json
import sys

import pytest
from mlflow.tracking import MlflowClient

from contracts.errors import ConfigError
from pipelines import approval, registry_state, tracking
from pipelines.errors import GenforgeError
from pipelines.registry import manual_promote, promote, register, show
from tests.conftest import LOOSE_GATE, tiny_params
from tests.test_registry_states import MODEL, made, prepared  # noqa: F401 (fixtures: a registrable tiny model)

MANUAL = tiny_params(*LOOSE_GATE, "model.vae.epochs=1", "registry.approval=manual")


def _genforge(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`genforge ARGS` in this process (the subprocess start alone would cost seconds): (exit code, out, err)."""
    from pipelines import cli

    monkeypatch.setattr(sys, "argv", ["genforge", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _state(name: str = MODEL) -> dict:
    c = tracking.client()
    model = c.get_registered_model(name)
    return {"aliases": dict(model.aliases), "tags": dict(model.tags),
            "versions": {mv.version: dict(mv.tags) for mv in c.search_model_versions(f"name='{name}'")}}


def _tags(version: str, name: str = MODEL) -> dict:
    return dict(tracking.client().get_model_version(name, version).tags)


def _champion(name: str = MODEL) -> str | None:
    target = tracking.client().get_registered_model(name).aliases.get("champion")
    return None if target is None else str(target)


def test_approval_settings_are_typed_with_per_family_overrides():
    from pipelines.settings import validate_settings

    assert approval.settings(tiny_params(), "vae") == ("auto", 3600)
    params = tiny_params("registry.families.vae.approval=manual", "registry.families.vae.approval_timeout=60")
    validate_settings(params)
    assert approval.settings(params, "vae") == ("manual", 60) and approval.settings(params, "dcgan") == ("auto", 3600)
    for item, message in (("registry.approval=manul", "registry.approval: 'manul' is not one of 'auto', 'manual'; "
                                                      "did you mean 'manual'?"),
                          ("registry.approval_timeout=-5", "registry.approval_timeout: expected an integer >= 0"),
                          ("registry.families.vae.aproval=manual", "registry.families.vae.aproval: unknown setting; "
                                                                   "did you mean 'approval'?")):
        with pytest.raises(ConfigError) as err:
            validate_settings(tiny_params(item))
        assert str(err.value).startswith(message), str(err.value)


def test_manual_gate_waits_then_approve_moves_champion_once(made, monkeypatch, capsys):  # noqa: F811
    assert register(MANUAL, made.root, "vae")["version"] == "1"
    result = promote(MANUAL, made.root, "vae")
    assert result["decision"] == "awaiting approval" and result["champion_after"] is None
    assert _champion() is None
    tags = _tags("1")
    assert tags["promotion.decision"] == "awaiting approval"
    assert "fid_ratio <= 1e+06: passed" in tags["promotion.checks"]
    held = json.loads(made.promotion.read_text())
    assert held["decision"] == "awaiting approval" and held["checks"] and not held["promoted"]
    assert [row["decision"] for row in show(MODEL)] == ["awaiting approval"]  # `genforge registry show`

    code, out, err = _genforge(monkeypatch, capsys, "registry", "approve", MODEL, "1", "--reason", "grid looks sharp",
                               "--by", "alice")
    assert code == 0, err
    assert "approved by alice" in err and json.loads(out)["champion_after"] == "1"
    assert show(MODEL)[0]["reasons"] == "approved by alice: grid looks sharp"  # the reviewer's reason
    assert _champion() == "1"
    tags = _tags("1")
    assert {k: tags[f"approval.{k}"] for k in ("decision", "by", "reason", "via")} == {
        "decision": "approved", "by": "alice", "reason": "grid looks sharp", "via": "cli"}
    assert tags["promotion.decision"] == "approved" and "alice" in tags["promotion.reasons"]
    assert "fid_ratio" in tags["promotion.checks"]  # the gate's checks stay on the version
    record = json.loads(made.promotion.read_text())
    assert record["decision"] == "approved" and record["approval"]["reason"] == "grid looks sharp"
    assert record["checks"] == held["checks"] and record["champion_after"] == "1"
    assert json.loads(tracking.client().get_registered_model(MODEL).tags["champion_history"]) == ["1"]
    card = tracking.client().get_model_version(MODEL, "1").description  # the model card says who decided and why
    assert "Decision: ✓ approved" in card and "alice" in card and "grid looks sharp" in card

    before = _state()
    code, out, err = _genforge(monkeypatch, capsys, "registry", "approve", MODEL, "1", "--reason", "again")
    assert code == 0 and "already approved by alice" in err and _state() == before
    code, _, err = _genforge(monkeypatch, capsys, "registry", "reject", MODEL, "1", "--reason", "changed my mind")
    assert code == 1 and err.splitlines()[0].startswith(f"error: {MODEL}/1 was already approved by alice")
    assert len(err.strip().splitlines()) == 1 and _state() == before


def test_reject_and_every_refusal_change_nothing(made, monkeypatch, capsys):  # noqa: F811
    v1 = register(MANUAL, made.root, "vae")["version"]
    manual_promote(MODEL, v1, "setup")
    metrics = json.loads(made.metrics.read_text())

    def register_with(**summary):
        made.metrics.write_text(json.dumps({**metrics, "summary": {**metrics["summary"], **summary}}))
        return register(MANUAL, made.root, "vae")["version"]

    v2 = register_with(fid_ratio=1.0)
    assert promote(MANUAL, made.root, "vae")["decision"] == "awaiting approval" and _champion() == v1

    def refused(args, message, code=1):
        before = _state()
        got, _, err = _genforge(monkeypatch, capsys, "registry", *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert got == code and lines[0].startswith(f"error: {message}"), err
        assert "Traceback" not in err and _state() == before

    refused(["approve", MODEL, v2, "--reason", "  "], "--reason: give the reason", code=2)
    refused(["approve", MODEL, v1, "--reason", "x"], f"{MODEL}/{v1} is already champion")
    refused(["approve", MODEL, "9", "--reason", "x"], f"{MODEL}: version 9 no longer exists")
    refused(["approve", "digits-vea", "1", "--reason", "x"], "no registered model 'digits-vea'")
    refused(["approve", MODEL, "x", "--reason", "x"], "VERSION must be a version number like 3, got 'x'", code=2)
    refused(["approve", MODEL, v2, "--reason", "x", "--by", " "], "--by: give the reviewer's name", code=2)

    code, out, err = _genforge(monkeypatch, capsys, "registry", "reject", MODEL, v2, "--reason", "blurry 7s")
    assert code == 0 and "rejected by" in err and _champion() == v1
    tags = _tags(v2)
    assert tags["promotion.decision"] == "rejected" and tags["approval.reason"] == "blurry 7s"
    assert tags["approval.decision"] == "rejected"
    assert "blurry 7s" in tags["promotion.rejected"]  # the reviewer's reason, shown by `registry show`
    shown = {str(row["version"]): row for row in show(MODEL)}
    assert shown[v2]["decision"] == "rejected" and shown[v2]["reasons"].endswith(": blurry 7s")
    record = json.loads(made.promotion.read_text())
    assert record["version"] == v2 and record["decision"] == "rejected" and record["champion_after"] == v1
    before = _state()
    assert approval.decide(MODEL, v2, "reject", "again")["already"] and _state() == before
    refused(["approve", MODEL, v2, "--reason", "x"], f"{MODEL}/{v2} was already rejected by")
    # the reviewer's rejection stands when the gate runs again on the same version
    assert promote(MANUAL, made.root, "vae")["decision"] == "rejected" and _champion() == v1
    assert _tags(v2)["promotion.reasons"].startswith("rejected by")

    v3 = register_with(fid_ratio=5e6)  # fails the loose gate
    assert promote(MANUAL, made.root, "vae")["decision"] == "rejected"
    refused(["approve", MODEL, v3, "--reason", "x"], f"{MODEL}/{v3} is not awaiting approval: it failed the "
                                                     "promotion gate (failed: fid_ratio")
    v4 = register_with(fid_ratio=0.5)  # registered, the gate not run yet
    refused(["reject", MODEL, v4, "--reason", "x"], f"{MODEL}/{v4} is not awaiting approval: the promotion gate "
                                                    "has not run on it")


# ---- cut short at every write, completed by running the same decision again ---------------------------------
WRITES = ("set_registered_model_tag", "set_model_version_tag", "set_registered_model_alias",
          "delete_registered_model_tag")


def _awaiting(name: str) -> None:
    c = tracking.client()
    c.create_registered_model(name)
    for fid in (2.0, 1.0):
        c.create_model_version(name, source="file:///nowhere",
                               tags={"validated": "true", "metric.fid_ratio": str(fid)})
    c.set_registered_model_alias(name, "champion", "1")
    c.set_registered_model_tag(name, registry_state.HISTORY_TAG, '["1"]')
    c.set_model_version_tag(name, "2", "promotion.decision", approval.AWAITING)


def test_approve_and_reject_cut_short_at_each_write_are_completed_by_running_them_again(project, monkeypatch):
    """approve writes the pending intent, 8 version tags, history, alias, then removes the intent (12 writes);
    reject writes 8 tags, approval.decision 7th and promotion.decision last. Cut at the writes where the
    outcome differs (the others are the same case as a neighbour): before anything, amid the tags, after the
    alias (before the intent is removed); just before and just after approval.decision."""
    for decision, cuts in (("approve", (1, 5, 12)), ("reject", (7, 8))):
        for k in cuts:
            name = f"m-{decision}-{k}"
            _awaiting(name)
            calls = {"n": 0}
            with monkeypatch.context() as m:
                for method in WRITES:
                    def wrapped(self, *args, _orig=getattr(MlflowClient, method), **kwargs):
                        calls["n"] += 1
                        if calls["n"] == k:
                            raise KeyboardInterrupt(f"killed at write {k}")
                        return _orig(self, *args, **kwargs)
                    m.setattr(MlflowClient, method, wrapped)
                with pytest.raises(KeyboardInterrupt):
                    approval.decide(name, "2", decision, "the reason", "carol")
            approval.decide(name, "2", decision, "the reason", "carol")  # the rerun completes it
            tags = _tags("2", name)
            wanted = "approved" if decision == "approve" else "rejected"
            assert tags["promotion.decision"] == wanted and tags["approval.by"] == "carol", (decision, k)
            assert tags["approval.reason"] == "the reason"
            assert _champion(name) == ("2" if decision == "approve" else "1"), (decision, k)
            model = tracking.client().get_registered_model(name)
            assert registry_state.PENDING_TAG not in model.tags
            assert json.loads(model.tags["champion_history"]) == (["1", "2"] if decision == "approve" else ["1"])
            other = "reject" if decision == "approve" else "approve"
            with pytest.raises(GenforgeError, match="already"):
                approval.decide(name, "2", other, "flip", "dave")
