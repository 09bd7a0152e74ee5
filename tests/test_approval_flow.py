"""The retrain flow with registry.approval: manual, end to end: `genforge run` pauses after the gate (a real
Prefect server on a free loopback port, or the project's ephemeral one) and waits for a reviewer; the
decision comes from `genforge registry approve`, from the Prefect UI's resume call with the input form's
values, or not at all (timeout: the version stays awaiting approval and the run still completes)."""
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from pipelines import tracking
from tests.conftest import LOOSE_GATE, free_port, prefect_server, run_cli, stop_process_group, tiny_args

pytestmark = pytest.mark.slow  # a real server and whole runs: `make test-all`

MODEL = "digits-vae"
MANUAL = (*LOOSE_GATE, "model.families=[vae]", "registry.approval=manual")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


def _run(project, api_url: str | None, *extra: str) -> tuple[subprocess.Popen, object]:
    """`genforge run` in the background (its output in run.log), talking to `api_url` (None: ephemeral)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    log = open(project / "run.log", "w")
    args = ["run", "--samples", "0", *tiny_args(*MANUAL, *extra)]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args],
                            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _tags(version: str = "1") -> dict:
    return dict(tracking.client().get_model_version(MODEL, version).tags)


def _paused(proc, project, api_url: str, timeout: float = 420) -> dict:
    """Wait until the flow run tagged on v1 is PAUSED on the server; its JSON."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, (project / "run.log").read_text()[-3000:]
        try:
            run_id = _tags().get("approval.flow_run_id")
        except Exception:  # noqa: BLE001 (not registered yet)
            run_id = None
        if run_id:
            run = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=10).json()
            if run["state"]["type"] == "PAUSED":
                return run
        time.sleep(2)
    pytest.fail("the flow run never paused:\n" + (project / "run.log").read_text()[-3000:])


def _finished(proc, log, project, timeout: float = 180) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        log.close()
        stop_process_group(proc)
    text = (project / "run.log").read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def _state(api_url: str, run_id: str) -> str:
    return httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]


def _champion() -> str | None:
    target = tracking.client().get_registered_model(MODEL).aliases.get("champion")
    return None if target is None else str(target)


def _promotion(project) -> dict:
    return json.loads((project / "reports" / "digits" / "vae" / "promotion.json").read_text())


def test_cli_approve_resumes_the_paused_flow_which_completes(project, api):
    proc, log = _run(project, api, "registry.approval_timeout=600")
    try:
        run = _paused(proc, project, api)
        assert _champion() is None and _tags()["promotion.decision"] == "awaiting approval"
        assert _tags()["approval.prefect_api"] == api
        # the CLI finds the server from the version's tags: no PREFECT_API_URL needed
        env_api = os.environ.pop("PREFECT_API_URL", None)
        try:
            decided = run_cli(["registry", "approve", MODEL, "1", "--reason", "sharp digits", "--by", "alice"],
                              project)
        finally:
            if env_api is not None:
                os.environ["PREFECT_API_URL"] = env_api
        assert decided.returncode == 0, decided.stderr
        assert f"resumed flow run {run['id']}" in decided.stderr
        text = _finished(proc, log, project)
    finally:
        stop_process_group(proc)
    assert _state(api, run["id"]) == "COMPLETED"
    assert "approved by alice (cli" in text
    assert _champion() == "1"
    tags = _tags()
    assert tags["approval.by"] == "alice" and tags["approval.reason"] == "sharp digits"
    assert tags["promotion.decision"] == "approved" and "approval.flow_run_id" not in tags
    record = _promotion(project)
    assert record["decision"] == "approved" and record["approval"]["reason"] == "sharp digits" and record["checks"]


def test_the_ui_resume_with_the_input_form_values_is_recorded_by_the_flow(project, api):
    proc, log = _run(project, api, "registry.approval_timeout=600")
    try:
        run = _paused(proc, project, api)
        keyset = run["state"]["state_details"]["run_input_keyset"]
        # what the UI shows: the description (markdown) and the form's JSON schema
        description = httpx.get(f"{api}/flow_runs/{run['id']}/input/{keyset['description']}", timeout=10).json()
        assert "awaits your decision" in description and "fid_ratio" in description
        schema = httpx.get(f"{api}/flow_runs/{run['id']}/input/{keyset['schema']}", timeout=10).json()
        assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
        # the UI's Resume button posts the form's values; a blank reason is refused by the server
        for blank in ("", "   "):
            refused = httpx.post(f"{api}/flow_runs/{run['id']}/resume", timeout=10,
                                 json={"run_input": {"decision": "approve", "reason": blank, "reviewer": "bob"}})
            assert refused.json()["status"] == "REJECT" and _state(api, run["id"]) == "PAUSED", refused.text
        resumed = httpx.post(f"{api}/flow_runs/{run['id']}/resume", timeout=10, json={
            "run_input": {"decision": "approve", "reason": "coverage up, samples clean", "reviewer": "bob"}})
        assert resumed.json()["status"] == "ACCEPT", resumed.text
        text = _finished(proc, log, project)
    finally:
        stop_process_group(proc)
    assert _state(api, run["id"]) == "COMPLETED" and "approved by bob (prefect-ui" in text
    assert _champion() == "1"
    tags = _tags()
    assert (tags["approval.by"], tags["approval.via"], tags["approval.reason"]) == (
        "bob", "prefect-ui", "coverage up, samples clean")
    assert _promotion(project)["approval"]["by"] == "bob"


def test_no_decision_in_time_leaves_it_awaiting_and_the_cli_decides_later(project, monkeypatch):
    """The project's ephemeral Prefect server (no PREFECT_API_URL) pauses too; a 5 s wait runs out."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc, log = _run(project, None, "registry.approval_timeout=5")
    text = _finished(proc, log, project, timeout=600)
    assert "Pausing flow" in text and "no decision on digits-vae/1 within 5 s" in text
    assert f"genforge registry approve|reject {MODEL} 1 --reason" in text
    assert _champion() is None and _tags()["promotion.decision"] == "awaiting approval"
    assert "approval.flow_run_id" not in _tags()
    # a flow run that cannot be reached (its server is gone) does not stop the decision
    gone = f"http://127.0.0.1:{free_port()}/api"
    c = tracking.client()
    c.set_model_version_tag(MODEL, "1", "approval.flow_run_id", "3429ffd9-a246-4fc3-8809-fb6e58e9dfb1")
    c.set_model_version_tag(MODEL, "1", "approval.prefect_api", gone)
    decided = run_cli(["registry", "reject", MODEL, "1", "--reason", "too blurry", "--by", "carol"], project)
    assert decided.returncode == 0, decided.stderr
    assert "was not resumed" in decided.stderr and gone in decided.stderr
    assert _tags()["promotion.decision"] == "rejected" and _champion() is None
    assert _promotion(project)["approval"]["reason"] == "too blurry"
