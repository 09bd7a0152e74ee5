"""Registry states a user or a crash can leave behind, against a real SQLite MLflow store: deleted versions, a
deleted champion, a dangling alias, an emptied registry; champion moves cut short at every step; register
run twice; corrupt model files and graphs in the store and in the local cache; the flow's cache after the
registry was emptied."""
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines import registry_state, tracking
from pipelines.errors import DataError, GenforgeError
from pipelines.registry import manual_promote, promote, register, rollback
from tests.conftest import LOOSE_GATE, tiny_params

MODEL = "digits-vae"
CHAMPION_MOVES = ("set_registered_model_tag", "set_model_version_tag", "set_registered_model_alias",
                  "delete_registered_model_tag")


def _craft(n: int, source: str = "file:///nowhere") -> None:
    c = tracking.client()
    c.create_registered_model(MODEL)
    for fid in range(n):
        c.create_model_version(MODEL, source=source, tags={"validated": "true", "metric.fid_ratio": str(100 - fid)})


def _state() -> dict:
    """Everything a registry command may change: versions, aliases, model tags, version tags."""
    c = tracking.client()
    try:
        model = c.get_registered_model(MODEL)
    except Exception:  # noqa: BLE001
        return {}
    versions = {mv.version: dict(mv.tags) for mv in c.search_model_versions(f"name='{MODEL}'")}
    return {"aliases": dict(model.aliases), "tags": dict(model.tags), "versions": versions}


def _champion() -> str | None:
    return _alias("champion")


def _history() -> list:
    return json.loads(tracking.client().get_registered_model(MODEL).tags.get("champion_history", "[]"))


# ---- deleted versions, deleted champion, dangling alias, emptied registry: one line, nothing changed -----
def _one_line(proc, message: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {message}"], proc.stderr


def test_deleted_versions_and_champion_give_one_line_and_change_nothing(cli, project, tmp_path):
    _craft(2)
    manual_promote(MODEL, "1", "first")
    manual_promote(MODEL, "2", "better")
    tracking.client().delete_model_version(MODEL, "1")
    before = _state()
    _one_line(cli(["registry", "rollback", MODEL, "--reason", "x"], project),
              f"{MODEL}: previous champion v1 no longer exists (deleted from the registry, or never registered; "
              "versions now: 2)")
    _one_line(cli(["registry", "promote", MODEL, "1", "--reason", "x"], project),
              f"{MODEL}: version 1 no longer exists (deleted from the registry, or never registered; versions now: 2)")
    _one_line(cli(["registry", "promote", MODEL, "99", "--reason", "x"], project),
              f"{MODEL}: version 99 no longer exists (deleted from the registry, or never registered; versions now: 2)")
    assert _state() == before and _champion() == "2"

    tracking.client().delete_model_version(MODEL, "2")  # the champion itself
    before = _state()
    _one_line(cli(["generate", f"{MODEL}@champion", "-n", "4", "--out", str(tmp_path / "o")], project),
              f"{MODEL} has no alias 'champion' (its version was deleted, or none was set; versions now: none)")
    _one_line(cli(["registry", "rollback", MODEL, "--reason", "x"], project),
              f"{MODEL}: champion v2 no longer exists (deleted from the registry), so there is nothing to roll back "
              f"from; choose one with `genforge registry promote {MODEL} VERSION --reason ...` (versions: none)")
    assert _state() == before and not (tmp_path / "o").exists()
    assert cli(["registry", "show", MODEL], project).returncode == 0


def test_a_dangling_alias_is_named_and_overwritten_by_a_promote(project):
    from serving.resolve import ResolveError, resolve

    _craft(2)
    manual_promote(MODEL, "1", "first")
    db = tracking.tracking_uri().removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:  # what mlflow#24825 left behind: an alias naming a deleted version
        con.execute("UPDATE registered_model_aliases SET version = 7 WHERE alias = 'champion'")
    with pytest.raises(ResolveError, match="it points at version 7, which no longer exists"):
        resolve(tracking.client(), f"{MODEL}@champion")
    with pytest.raises(GenforgeError, match="champion v7 no longer exists"):
        rollback(MODEL, "x")
    manual_promote(MODEL, "2", "repair")
    assert _champion() == "2" and _history() == ["1", "2"]


def test_rollback_without_champion_or_history(project):
    _craft(2)
    with pytest.raises(GenforgeError, match=f"^{MODEL} has no champion to roll back from; promote one first$"):
        rollback(MODEL, "x")
    manual_promote(MODEL, "1", "first")
    with pytest.raises(GenforgeError, match=r"no earlier champion to roll back to \(history: \['1'\]\)"):
        rollback(MODEL, "x")
    assert _champion() == "1"


def test_an_emptied_registry_gives_one_line_for_every_command(cli, project, tmp_path):
    _craft(1)
    tracking.client().delete_registered_model(MODEL)
    message = f"no registered model '{MODEL}' in the registry (known: none)"
    for args in (["registry", "show", MODEL], ["registry", "promote", MODEL, "1", "--reason", "x"],
                 ["registry", "rollback", MODEL, "--reason", "x"],
                 ["generate", f"{MODEL}@champion", "-n", "2", "--out", str(tmp_path / "o")]):
        _one_line(cli(args, project), message)
    assert _state() == {}


def test_the_champion_alias_moved_outside_genforge_joins_the_history(project):
    _craft(3)
    manual_promote(MODEL, "1", "first")
    tracking.client().set_registered_model_alias(MODEL, "champion", "3")  # the MLflow UI
    record = rollback(MODEL, "back")
    assert record["champion_before"] == "3" and _champion() == "1" and _history() == ["1"]


# ---- a champion move cut short at each step, then completed by the next command --------------------------
def _crash_at(monkeypatch, k: int) -> None:
    """Make the k-th registry write of the next champion move raise, as a kill would stop it there."""
    calls = {"n": 0}
    for method in CHAMPION_MOVES:
        orig = getattr(MlflowClient, method)

        def wrapped(self, *args, _orig=orig, **kwargs):
            calls["n"] += 1
            if calls["n"] == k:
                raise KeyboardInterrupt(f"crash at write {k}")
            return _orig(self, *args, **kwargs)
        monkeypatch.setattr(MlflowClient, method, wrapped)


def _coherent(champion: str, history: list, decision_version: str, decision: str) -> None:
    c = tracking.client()
    model = c.get_registered_model(MODEL)
    assert _champion() == champion and _history() == history
    assert registry_state.PENDING_TAG not in model.tags
    assert c.get_model_version(MODEL, decision_version).tags["promotion.decision"] == decision


@pytest.mark.parametrize("k", range(1, 8))  # pending, 3 version tags, history, alias, pending removed
def test_manual_promote_crash_at_each_write_then_any_command_completes_it(monkeypatch, project, k):
    _craft(2)
    manual_promote(MODEL, "1", "first")
    with monkeypatch.context() as m:
        _crash_at(m, k)
        with pytest.raises(KeyboardInterrupt):
            manual_promote(MODEL, "2", "second")
    champion = _champion()
    assert champion in ("1", "2")
    # the write-ahead record exists from the first write on: the next command completes the move
    if k == 1:
        assert _history() == ["1"] and champion == "1"
    manual_promote(MODEL, "2", "second")
    _coherent("2", ["1", "2"], "2", "manual-promote")
    record = rollback(MODEL, "back")
    assert record["champion_after"] == "1"
    _coherent("1", ["1"], "2", "rolled-back")


@pytest.mark.parametrize("k", range(1, 8))
def test_rollback_crash_at_each_write_is_completed_by_the_next_command(monkeypatch, project, k):
    _craft(2)
    manual_promote(MODEL, "1", "first")
    manual_promote(MODEL, "2", "second")
    with monkeypatch.context() as m:
        _crash_at(m, k)
        with pytest.raises(KeyboardInterrupt):
            rollback(MODEL, "bad samples")
    if k == 1:  # nothing was written: the rollback is simply run again
        rollback(MODEL, "bad samples")
    else:  # the intent was recorded: any registry command completes it first (show stays read-only)
        with pytest.raises(GenforgeError, match="no earlier champion"):
            rollback(MODEL, "again")
    _coherent("1", ["1"], "2", "rolled-back")


def test_a_pending_move_whose_target_was_deleted_is_dropped(monkeypatch, project):
    _craft(3)
    manual_promote(MODEL, "1", "first")
    with monkeypatch.context() as m:
        _crash_at(m, 2)
        with pytest.raises(KeyboardInterrupt):
            manual_promote(MODEL, "2", "second")
    tracking.client().delete_model_version(MODEL, "2")
    manual_promote(MODEL, "3", "third")
    _coherent("3", ["1", "3"], "3", "manual-promote")


# ---- register, promote, files: a prepared project with a crafted (untrained) model -------------------------
PARAMS = tiny_params(*LOOSE_GATE, "model.vae.epochs=1")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from pipelines.prepare import prepare
    from pipelines.validate import validate
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("states-project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    prepare(PARAMS, root)
    validate(PARAMS, root, root / "data" / "prepared" / "digits")
    return root


@pytest.fixture
def made(prepared, monkeypatch):
    """A model as train, evaluate and export leave it (weights untrained), its run in this test's store."""
    import torch

    from contracts.io import tree_sha256
    from pipelines import catalog
    from pipelines.registry import export
    from pipelines.train import plan_training

    monkeypatch.chdir(prepared)  # MLflow artifacts under the project
    ds, model, _, fingerprint = plan_training(PARAMS, prepared, "vae")
    paths = catalog.Layout(prepared, ds.name, "vae")
    for stale in (paths.model_dir, paths.report_dir, prepared / ".genforge"):
        shutil.rmtree(stale, ignore_errors=True)
    paths.model_dir.mkdir(parents=True)
    torch.save(model.state_dict(), paths.model)
    paths.model_config.write_text(json.dumps({
        "family": "vae", "config": {**model.config.architecture(), **model.config.evaluation_settings()},
        "training": model.config.training_settings(), "sampling": model.sampling}))
    c = tracking.client()
    run_id = c.create_run(tracking.experiment_id(c, MODEL)).info.run_id
    paths.train_info.write_text(json.dumps({"run_id": run_id, "data_sha256": ds.sha256, "params_hash": fingerprint,
                                            "sha256": tree_sha256(paths.model_dir, ["model.pt", "config.json"])}))
    export(PARAMS, prepared, "vae")
    paths.metrics.parent.mkdir(parents=True, exist_ok=True)
    paths.metrics.write_text(json.dumps({"run_id": run_id, "data_sha256": ds.sha256, "summary": {
        "fid_ratio": 2.0, "coverage": 0.5, "class_coverage": 1.0, "mode_collapse": 0, "copy_rate": 0.0}}))
    return paths


def _versions() -> list[str]:
    return registry_state.versions(tracking.client(), MODEL)


def test_register_after_a_crash_returns_the_version_and_registered_json_agrees_with_challenger(made, monkeypatch):
    first = register(PARAMS, made.root, "vae")
    assert first["version"] == "1" and _versions() == ["1"]
    # registering again after a completed register is a deliberate new version (what case 12's user does)
    assert register(PARAMS, made.root, "vae")["version"] == "2" and _versions() == ["1", "2"]
    with monkeypatch.context() as m:  # a crash between create_model_version and the alias
        m.setattr(MlflowClient, "set_registered_model_alias", lambda *a, **k: (_ for _ in ()).throw(OSError("kill")))
        with pytest.raises(OSError):
            register(PARAMS, made.root, "vae")
    assert _versions() == ["1", "2", "3"]
    assert json.loads(made.registered.read_text())["version"] == _alias("challenger") == "2"  # untouched
    again = register(PARAMS, made.root, "vae")  # the rerun after the crash: no duplicate
    assert again["version"] == "3" and _versions() == ["1", "2", "3"]
    assert json.loads(made.registered.read_text())["version"] == _alias("challenger") == "3"
    assert tracking.client().get_model_version(MODEL, "3").tags["genforge.register_complete"] == "true"
    # other metrics (a new evaluation) are another version
    metrics = json.loads(made.metrics.read_text())
    made.metrics.write_text(json.dumps({**metrics, "summary": {**metrics["summary"], "coverage": 0.6}}))
    assert register(PARAMS, made.root, "vae")["version"] == "4"
    assert json.loads(made.registered.read_text())["version"] == _alias("challenger") == "4"
    files = json.loads(tracking.client().get_model_version(MODEL, "4").tags[registry_state.FILES_TAG])
    assert {"checkpoint/model.pt", "checkpoint/config.json", "artifacts/onnx/sampler.json"} <= set(files)


def _logged_models() -> list:
    c = tracking.client()
    return c.search_logged_models([c.get_experiment_by_name(MODEL).experiment_id])


@pytest.mark.parametrize("crash_at", ["log_model_artifacts", "finalize_logged_model", "create_model_version"])
def test_register_after_a_crash_reuses_the_logged_model(made, monkeypatch, crash_at):
    """A crash while the version's MLflow model is uploaded (it stays PENDING) or after it is complete (READY,
    no version yet): the rerun finishes that LoggedModel and registers it, no second copy is logged."""
    with monkeypatch.context() as m:
        m.setattr(MlflowClient, crash_at, lambda *a, **k: (_ for _ in ()).throw(OSError("kill")))
        with pytest.raises(OSError):
            register(PARAMS, made.root, "vae")
    assert _versions() == []
    [model] = _logged_models()
    assert str(model.status) == ("READY" if crash_at == "create_model_version" else "PENDING")
    record = register(PARAMS, made.root, "vae")
    [after] = _logged_models()
    assert after.model_id == model.model_id and str(after.status) == "READY"
    assert record["version"] == "1" and record["source"] == f"models:/{model.model_id}"
    assert {a.path for a in tracking.client().list_logged_model_artifacts(model.model_id)} >= {"MLmodel", "artifacts"}
    linked = tracking.client().get_logged_model(model.model_id).metrics  # metrics.json's summary, linked once
    assert sorted(m.key for m in linked) == sorted(f"eval/{k}" for k in json.loads(made.metrics.read_text())["summary"])


def _alias(alias: str) -> str | None:
    version = tracking.client().get_registered_model(MODEL).aliases.get(alias)
    return None if version is None else str(version)


def test_stage_promote_crash_after_the_alias_moved_is_completed_by_the_rerun(made, monkeypatch):
    first = register(PARAMS, made.root, "vae")
    manual_promote(MODEL, first["version"], "setup")
    metrics = json.loads(made.metrics.read_text())
    made.metrics.write_text(json.dumps({**metrics, "summary": {**metrics["summary"], "fid_ratio": 1.0}}))
    assert register(PARAMS, made.root, "vae")["version"] == "2"
    orig = MlflowClient.set_registered_model_alias

    def crash_after_champion(self, name, alias, version):
        orig(self, name, alias, version)
        if alias == "champion":
            raise KeyboardInterrupt("killed right after the alias moved")
    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "set_registered_model_alias", crash_after_champion)
        with pytest.raises(KeyboardInterrupt):
            promote(PARAMS, made.root, "vae")
    result = promote(PARAMS, made.root, "vae")
    assert result["decision"] == "promoted" and result["champion_before"] == "1"
    _coherent("2", ["1", "2"], "2", "promoted")
    assert json.loads(made.promotion.read_text())["decision"] == "promoted"
    assert rollback(MODEL, "test")["champion_after"] == "1" and _champion() == "1"


def test_stage_promote_of_a_deleted_registration_says_register_again(made):
    register(PARAMS, made.root, "vae")
    tracking.client().delete_registered_model(MODEL)
    with pytest.raises(GenforgeError, match=r"registered.json: names digits-vae/1, which the registry no longer "
                                            r"holds .*; run `genforge stage register --family vae` again"):
        promote(PARAMS, made.root, "vae")


@pytest.mark.parametrize("damage", ["truncate", "flip", "evil", "badjson", "listjson"])
def test_corrupt_model_files_are_one_data_error(made, damage, tmp_path):
    import os

    import torch

    from pipelines.train import load_model

    target = made.model_config if damage.endswith("json") else made.model
    if damage == "truncate":
        made.model.write_bytes(made.model.read_bytes()[:-200])
    elif damage == "flip":  # same size, one byte changed: only the recorded sha256 tells
        data = bytearray(made.model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        made.model.write_bytes(bytes(data))
    elif damage == "evil":
        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path}/RAN",))
        torch.save({"x": Payload()}, made.model)
    else:
        made.model_config.write_text('{"family": "vae", "config": ' if damage == "badjson" else "[1, 2]")
    with pytest.raises(DataError, match="sha256 differs from the one train recorded") as err:
        load_model(made.model_dir)
    assert err.value.path == str(target)
    info = json.loads(made.train_info.read_text())
    made.train_info.write_text(json.dumps({k: v for k, v in info.items() if k != "sha256"}))  # no record
    expected = {"truncate": "unreadable or truncated", "evil": "not a plain state dict", "flip": None,
                "badjson": "not a genforge model config", "listjson": "not a genforge model config"}[damage]
    if expected:  # without a record, what can be told from the bytes alone
        with pytest.raises(DataError, match=expected) as err:
            load_model(made.model_dir)
        assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "RAN").exists()
    with pytest.raises(DataError, match="sha256 differs"):  # register refuses them as well
        made.train_info.write_text(json.dumps(info))
        register(PARAMS, made.root, "vae")
    assert _state() == {}


def test_corrupt_graphs_in_the_cache_are_refetched_and_in_the_store_reported(made):
    from serving.resolve import ResolveError, fetch_onnx, resolve

    register(PARAMS, made.root, "vae")
    c = tracking.client()
    resolved = resolve(c, f"{MODEL}/1")
    cache = made.root / ".genforge" / "models"
    local = fetch_onnx(resolved, cache)
    graph = sorted(local.glob("*.onnx"))[0]
    good = graph.read_bytes()
    graph.write_bytes(good[: len(good) // 2])  # a torn copy in the local cache
    assert fetch_onnx(resolved, cache) == local and graph.read_bytes() == good
    (local / "sampler.json").write_text("{}")  # an edited one
    fetch_onnx(resolved, cache)
    assert json.loads((local / "sampler.json").read_text()) != {}
    assert resolved.source.startswith("models:/") and resolved.onnx_path == "artifacts/onnx"
    stored = Path(resolved.location.removeprefix("file://")) / resolved.onnx_path / graph.name
    stored.write_bytes(good[:-10])  # the registry's own copy
    shutil.rmtree(cache)
    with pytest.raises(ResolveError, match=rf"onnx/{graph.name}: the registry's copy is corrupt or truncated"):
        fetch_onnx(resolved, cache)
    assert not (cache / MODEL / "1").exists()


def test_the_flow_registers_again_when_the_cached_registration_is_gone(made):
    from prefect import flow

    from pipelines.flows import _stage, product_problem

    @flow(name="register-only")
    def register_only(root: str) -> dict:
        results: dict = {}
        _stage("register", PARAMS, made.root, "vae", results)
        return results

    assert register_only(str(made.root))["register:vae"]["status"] == "ran"
    assert register_only(str(made.root))["register:vae"]["status"].startswith("skipped (cached")
    assert product_problem("register", PARAMS, made.root, "vae") is None
    tracking.client().delete_registered_model(MODEL)  # the registry is emptied; Prefect's cache remembers
    assert "not in the registry" in product_problem("register", PARAMS, made.root, "vae")
    assert register_only(str(made.root))["register:vae"]["status"] == "ran"
    assert _versions() == ["1"] and json.loads(made.registered.read_text())["version"] == _alias("challenger")
    made.registered.write_text(made.registered.read_text() + " ")  # an edited product is not reused either
    assert "not the ones the cached run wrote" in product_problem("register", PARAMS, made.root, "vae")
    # registering again after a completed register is a new version, and registered.json names it
    assert register_only(str(made.root))["register:vae"]["status"] == "ran" and _versions() == ["1", "2"]
    assert json.loads(made.registered.read_text())["version"] == _alias("challenger") == "2"
