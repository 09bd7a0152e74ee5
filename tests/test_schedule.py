"""Scheduled retraining against a real Prefect API server on a free loopback port."""
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import BIN, LOOSE_GATE, free_port, stop_process_group, tiny_args

ONE_FAMILY = (*LOOSE_GATE, "model.families=[vae]")




def test_schedule_without_a_server_says_how_to_start_one(cli, project, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = cli(["schedule", "--cron", "0 3 * * *"], project)
    assert proc.returncode == 1 and "genforge server start" in proc.stderr and "PREFECT_API_URL" in proc.stderr


@pytest.mark.slow  # a real server / remote round trip: `make test-all`
def test_served_schedule_is_visible_and_a_triggered_run_completes(project, monkeypatch, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_HOME": str(tmp_path / "server"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    served = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("the Prefect server did not start in 180 s")
        monkeypatch.setenv("PREFECT_API_URL", api)
        served = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "schedule", "--cron", "0 3 * * *",
                                   "--name", "nightly", *tiny_args(*ONE_FAMILY)],
                                  cwd=project, env={**os.environ, "PREFECT_API_URL": api}, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Prefect's REST API, not its client: settings cached by earlier tests in this process would
        # point a client at their ephemeral server
        deployment = None
        deadline = time.time() + 300
        while deployment is None and time.time() < deadline:
            assert served.poll() is None, "genforge schedule exited early"
            reply = httpx.get(f"{api}/deployments/name/scheduled-retrain/nightly", timeout=10)
            if reply.status_code == 200:
                deployment = reply.json()
            else:
                time.sleep(1)
        assert deployment is not None, "the deployment never appeared"
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
        assert deployment["parameters"]["root"] == str(project)

        run = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=10)
        run.raise_for_status()
        state, deadline = None, time.time() + 420
        while time.time() < deadline:
            state = httpx.get(f"{api}/flow_runs/{run.json()['id']}", timeout=10).json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state == "COMPLETED", state
        assert (project / "models" / "digits" / "vae" / "registered.json").exists()
    finally:
        if served is not None:
            stop_process_group(served)
        stop_process_group(server)
