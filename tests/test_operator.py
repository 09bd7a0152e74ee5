"""What operators see: rejection lines, tables that are never cut, the generate progress bar, the Prefect
artifacts' Markdown, and `genforge server start` on its own port (a real Prefect server, slow)."""
import io
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from rich.console import Console

from pipelines.flow_reports import artifact_key, family_markdown, mlflow_link, task_run_name
from pipelines.gate import failed_check_text, gate_decision, rejection_text
from pipelines.server import server_env
from pipelines.terminal import print_table, report, sample_progress
from tests.conftest import BIN, free_port, wait_until_up

GOOD = {"metric.fid_ratio": "2.0", "metric.coverage": "0.8", "metric.class_coverage": "1.0", "metric.copy_rate": "0.0",
        "metric.mode_collapse": "0", "parity_max_abs_error": "1e-6", "validated": "true"}
GATE = {"max_fid_ratio": 5.0, "min_coverage": 0.5, "primary_metric": "fid_ratio", "margin": 0.1}


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, color_system="standard", width=200), buf


def test_task_names_and_artifact_keys():
    assert task_run_name("prepare", "mnist5k", None) == "prepare-mnist5k"
    assert task_run_name("train", "mnist5k", "vae") == "train-vae"
    assert artifact_key("mnist5k", "wgan_gp", "decision") == "mnist5k-wgan-gp-decision"
    assert artifact_key("My.Data", "vae") == "my-data-vae"


def test_rejection_text_names_each_failed_check_or_the_champion_comparison():
    decision = gate_decision({**GOOD, "metric.fid_ratio": "9.5", "metric.coverage": "0.1"}, None, GATE)
    assert decision["decision"] == "rejected"
    assert rejection_text(decision) == "fid_ratio 9.5 > 5; coverage 0.1 < 0.5"
    missing = gate_decision({k: v for k, v in GOOD.items() if k != "metric.coverage"}, None, GATE)
    assert "coverage missing (required)" in rejection_text(missing)
    assert failed_check_text({"metric": "validated", "op": "equals", "observed": "false", "limit": "true"}) == \
        "validated false != true"
    beaten = gate_decision(GOOD, {**GOOD, "metric.fid_ratio": "2.05"}, GATE)  # better, but not by the margin
    assert rejection_text(beaten) == "fid_ratio 2 vs champion 2.05: improvement 0.05 <= margin 0.1"
    assert rejection_text(gate_decision(GOOD, None, GATE)) == ""


def test_a_rejected_decision_is_a_red_cross_never_a_green_tick():
    console, buf = _terminal()
    out = Console(file=io.StringIO())
    report(console, out, "promote vae", {"decision": "rejected", "rejected": "fid_ratio 9.5 > 5"}, time.perf_counter())
    text = buf.getvalue()
    assert "\x1b[1;31m✗ rejected: fid_ratio 9.5 > 5" in text and "✓" not in text
    console, buf = _terminal()
    report(console, out, "promote vae", {"decision": "promoted"}, time.perf_counter())
    assert "\x1b[32m✓" in buf.getvalue() and "✗" not in buf.getvalue()


def test_a_piped_table_is_never_cut():
    long = "fid_ratio 812.3 > 500; coverage 0.0007 < 0.03; class_coverage 0.1 < 0.7; " * 4
    rows = [{"version": 1, "aliases": "champion", "decision": "promoted", "reasons": "-"},
            {"version": 2, "aliases": "challenger", "decision": "rejected", "reasons": long.strip()}]
    pipe = io.StringIO()
    print_table(Console(file=pipe, width=80), rows, "digits-vae")  # not a terminal: as wide as the content
    text = pipe.getvalue()
    assert "…" not in text and long.strip() in text and "champion" in text and "\x1b[" not in text
    assert "✗ rejected" in text
    console, buf = _terminal()  # a terminal: long cells wrap, still nothing is cut
    print_table(console, rows, "digits-vae")
    assert "…" not in buf.getvalue()


def test_generate_progress_bar_only_on_a_terminal():
    with sample_progress(Console(file=io.StringIO()), 10, "digits-vae/1") as progress:
        assert progress is None  # piped or logged: no bar
    console, buf = _terminal()
    with sample_progress(console, 1000, "digits-vae/1") as progress:
        progress(0, 1000)
        time.sleep(0.05)
        progress(500, 1000)
        time.sleep(0.05)
        progress(1000, 1000)
    text = buf.getvalue()
    assert "digits-vae/1" in text and "samples/s" in text and "ETA" in text and "1000/1000" in text


def test_family_markdown_shows_decision_metrics_checks_and_links(monkeypatch):
    decision = gate_decision({**GOOD, "metric.fid_ratio": "9.5"}, {**GOOD, "metric.fid_ratio": "3.0"}, GATE)
    info = {"model": "mnist5k-vae", "decision": "rejected", "reason": rejection_text(decision), "version": "4",
            "champion": "3", "primary_metric": "fid_ratio", "checks": decision["checks"],
            "metrics": [("fid_ratio", 9.5, 3.0), ("coverage", 0.8, 0.8)], "preview": "reports/x/plots/samples.png",
            "version_link": mlflow_link("mnist5k-vae v4", "#/models/mnist5k-vae/versions/4")}
    md = family_markdown(info)
    assert md.startswith("# mnist5k-vae: ✗ rejected") and "**Why:** fid_ratio 9.5 > 5" in md
    assert "| **fid_ratio** (primary) | 9.5 | 3 | +6.5 |" in md
    assert "| fid_ratio <= 5 | 9.5 | 5 | 3 | ✗ failed |" in md
    assert "| coverage >= 0.5 | 0.8 | 0.5 | 0.8 | ✓ passed |" in md
    assert "`reports/x/plots/samples.png`" in md
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    assert mlflow_link("v4", "#/models/m/versions/4") == "v4 (`#/models/m/versions/4`)"
    monkeypatch.setenv("MLFLOW_UI_URL", "http://mlflow.internal:5000/")
    assert mlflow_link("v4", "#/models/m/versions/4") == "[v4](http://mlflow.internal:5000/#/models/m/versions/4)"
    monkeypatch.delenv("MLFLOW_UI_URL")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org")
    assert mlflow_link("v4", "#/r") == "[v4](https://mlflow.example.org/#/r)"


def test_server_env_points_the_ui_at_its_own_port():
    env = server_env("127.0.0.1", 4255, {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "PATH": "/bin"})
    for key in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL"):
        assert env[key] == "http://127.0.0.1:4255/api"
    assert env["PREFECT_SERVER_API_PORT"] == "4255" and env["PATH"] == "/bin"
    assert server_env("::1", 4255, {})["PREFECT_UI_API_URL"] == "http://[::1]:4255/api"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow  # a real Prefect server: `make test-all`
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_start_serves_its_port_and_takes_its_server_down(project, tmp_path, sig):
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_HOME": str(tmp_path / "server"),
           "PREFECT_API_URL": "http://127.0.0.1:4200/api"}  # a stale setting must not win over --port
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "server", "start", "--port", str(port)],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc=proc, what="genforge server start")
        settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"  # the UI talks to this port, not 4200
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10, follow_redirects=True).status_code == 200
        children = _children(proc.pid)
        assert children, "no prefect child process"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode in (0, 128 + sig), proc.communicate()  # the server's own status
        deadline = time.time() + 10
        while any(_alive(c) for c in children) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(c) for c in children), "the prefect server outlived genforge"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
