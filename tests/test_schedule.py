"""Scheduled retraining against a real Prefect API server on a free loopback port."""
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import LOOSE_GATE, prefect_server, stop_process_group, tiny_args

ONE_FAMILY = (*LOOSE_GATE, "model.families=[vae]")




def test_schedule_without_a_server_says_how_to_start_one(cli, project, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = cli(["schedule", "--cron", "0 3 * * *"], project)
    assert proc.returncode == 1 and "genforge server start" in proc.stderr and "PREFECT_API_URL" in proc.stderr


@pytest.mark.slow  # a real server / remote round trip: `make test-all`
def test_served_schedule_is_visible_and_a_triggered_run_completes(project, monkeypatch, tmp_path):
    served = None
    with prefect_server(tmp_path / "server") as api:
        try:
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
