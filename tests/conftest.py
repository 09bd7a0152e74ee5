"""Shared fixtures: every test runs offline, with Prefect/MLflow state in a temp folder, never $HOME."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

os.environ.update({
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # as genforge's own defaults (pipelines/env.py)
})


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once: each test gets a copy instead of 3-10 s of migrations."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    code = ("from mlflow.tracking import MlflowClient; "
            f"MlflowClient(tracking_uri='sqlite:///{path}').search_experiments()")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch, _mlflow_template):
    state = tmp_path_factory.mktemp("state")
    shutil.copy(_mlflow_template, state / "mlflow.db")
    monkeypatch.setenv("PREFECT_HOME", str(state / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow.db'}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Model tests on 8x8 tensors gain nothing from intra-op threads, and on a shared machine two threads
    that wait on each other make every op ~10x slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`; restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def project(tmp_path) -> Path:
    """A throwaway project folder holding the repository's params.yaml: outputs land here."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def run_cli(args: list[str], cwd: Path, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"genforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli


# A whole pipeline in seconds: scikit-learn's 8x8 digits and tiny models
TINY_SETS = [
    "data.source=digits", "data.name=digits", "validation.min_train_samples=100",
    "train.log_every=5",
    "model.vae.width=4", "model.vae.latent_dim=4", "model.vae.epochs=2", "model.vae.batch_size=128",
    "model.vae.iwae_k=4", "model.vae.score_samples=2",
    "model.dcgan.epochs=2", "model.dcgan.batch_size=128",
    "model.cvae.width=4", "model.cvae.latent_dim=4", "model.cvae.epochs=2", "model.cvae.batch_size=128", "model.cvae.iwae_k=4",
    "model.cvae.score_samples=2",
    "model.wgan_gp.epochs=2", "model.wgan_gp.batch_size=128", "model.wgan_gp.ngf=8", "model.wgan_gp.ndf=8",
    "model.wgan_gp.n_critic=2",
    "evaluation.num_samples=200", "evaluation.classifier.epochs=2", "evaluation.anomaly.max_images=100",
    "evaluation.nll_max_images=100",
]


@pytest.fixture(scope="session")
def prepared_digits(tmp_path_factory):
    """(project root, tiny params) with the 8x8 digits prepared and validated once per session; for tests
    that only read the prepared data (metrics on sample sets, the known-bad ladder)."""
    from pipelines.prepare import prepare, prepared_dir
    from pipelines.validate import validate

    root = tmp_path_factory.mktemp("prepared-digits")
    params = tiny_params()
    prepare(params, root)
    validate(params, root, prepared_dir(root, params))
    return root, params


# a gate every tiny model passes: the tests of promotion mechanics need a promotable version
LOOSE_GATE = ("registry.max_fid_ratio=1000000", "registry.min_coverage=0", "registry.min_class_coverage=0",
              "registry.forbid_mode_collapse=false", "registry.min_conditional_accuracy=0", "registry.max_copy_rate=1")


def tiny_args(*extra: str) -> list[str]:
    return [arg for item in (*TINY_SETS, *extra) for arg in ("--set", item)]


def tiny_params(*extra: str) -> dict:
    from pipelines.config import load_params

    return load_params(REPO / "params.yaml", [*TINY_SETS, *extra])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, children included."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until_up(url: str, seconds: float = 180, proc: subprocess.Popen | None = None,
                  what: str = "the server") -> None:
    """Poll `url` until it answers 200; fail the test after `seconds`, or at once when `proc` has exited."""
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before answering at {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{what} did not answer at {url} in {seconds:.0f} s")


@contextmanager
def prefect_server(home: Path):
    """A real `prefect server start` (no UI) on a free loopback port with its state in `home`; yields its API
    URL and stops it, children included, on exit."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_HOME": str(home),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_up(f"{api}/health", proc=server, what="the Prefect server")
        yield api
    finally:
        stop_process_group(server)


def pytest_sessionfinish(session, exitstatus):
    """Prefect stops its ephemeral API server at interpreter exit and logs that to a stream pytest has already
    closed; without this every passing run ends with a 'Logging error' traceback. Only logging's own
    handler errors are silenced, and only after the session."""
    import logging

    logging.raiseExceptions = False
