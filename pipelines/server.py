"""`genforge server start`: Prefect's API server and UI as a child process that talks to the port it serves on
and goes away with its parent.

Prefect's UI asks `/ui-settings` for the API address, which defaults to PREFECT_API_URL or port 4200, not the
port the server was started on; the child gets PREFECT_SERVER_API_HOST/PORT, PREFECT_UI_API_URL (both
spellings) and PREFECT_API_URL set to `http://<host>:<port>/api`. The child runs in its own process group;
SIGTERM, SIGINT and SIGHUP sent to genforge are forwarded to that group, a second signal (or GRACE_S seconds
without an exit) kills it, and genforge exits with the child's status, so no server is left orphaned.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

GRACE_S = 30.0  # after a forwarded signal, how long the server may take to shut down before it is killed
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def server_env(host: str, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ``base`` (default os.environ) with the API and UI addresses set to
    `http://<host>:<port>/api` (host given as a URL host: an IPv6 address in brackets)."""
    url_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    api = f"http://{url_host}:{port}/api"
    env = dict(os.environ if base is None else base)
    env.update({"PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port), "PREFECT_API_URL": api,
                "PREFECT_UI_API_URL": api, "PREFECT_SERVER_UI_API_URL": api})
    return env


def prefect_command(host: str, port: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    prefect = bin_dir / "prefect" if (bin_dir / "prefect").exists() else Path("prefect")
    return [str(prefect), "server", "start", "--host", host, "--port", str(port)]


def start_server(host: str, port: int, console: Console) -> int:
    """Run the Prefect server on ``host``:``port`` until it exits or genforge is signalled; returns the exit
    status to leave with (128 + N when the server died of signal N)."""
    env = server_env(host, port)
    console.print(f"Prefect UI at [bold]http://{host}:{port}[/bold]; to run flows against it, in another "
                  f"shell: [bold]export PREFECT_API_URL={env['PREFECT_API_URL']}[/bold]", highlight=False)
    child = subprocess.Popen(prefect_command(host, port), env=env, start_new_session=True)
    state = {"signalled_at": None, "count": 0}

    def forward(signum: int, _frame) -> None:
        state["count"] += 1
        state["signalled_at"] = state["signalled_at"] or time.monotonic()
        _signal_group(child, signal.SIGKILL if state["count"] > 1 else signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                since = state["signalled_at"]
                if since is not None and time.monotonic() - since > GRACE_S:
                    _signal_group(child, signal.SIGKILL)
    finally:
        if child.poll() is None:  # genforge itself is failing: never leave the server behind
            _signal_group(child, signal.SIGTERM)
            try:
                child.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        _signal_group(child, signal.SIGKILL)  # anything the server started and left in its group
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
