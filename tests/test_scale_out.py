"""Beyond one machine, by configuration alone, shown for real on loopback: an MLflow tracking server,
an S3-compatible DVC remote (moto's server mode), and the Dask task runner."""
import os
import subprocess
import time

import httpx
import pytest

from tests.conftest import BIN, LOOSE_GATE, free_port, stop_process_group, tiny_params
from tests.test_dvc import _copy_project, _sh



def _start(args: list[str], url: str, env: dict, cwd=None, timeout: float = 120) -> subprocess.Popen:
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"{args[0]} exited with {proc.returncode}"
        try:
            httpx.get(url, timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    stop_process_group(proc)
    pytest.fail(f"{args[0]} did not answer at {url} in {timeout} s")




@pytest.mark.slow  # a real server / remote round trip: `make test-all`
def test_stages_register_against_an_mlflow_tracking_server(project, monkeypatch, tmp_path):
    from pipelines import tracking
    from pipelines.evaluate import evaluate
    from pipelines.prepare import prepare
    from pipelines.registry import export, promote, register
    from pipelines.train import train
    from pipelines.validate import validate

    port = free_port()
    server = _start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                     "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                     "--artifacts-destination", str(tmp_path / "artifacts")],
                    f"http://127.0.0.1:{port}/health", {**os.environ}, timeout=180)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        params = tiny_params(*LOOSE_GATE)
        prepare(params, project)
        validate(params, project, project / "data" / "prepared" / "digits")
        train(params, project, "vae", progress=False)
        evaluate(params, project, "vae")
        export(params, project, "vae")
        record = register(params, project, "vae")
        assert promote(params, project, "vae")["decision"] == "promoted"
        c = tracking.client()
        assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == record["version"]
        # the version's source is its MLflow model (a LoggedModel), its files are behind the server's
        # mlflow-artifacts:/ proxy: nothing names the workspace
        assert record["source"].startswith("models:/m-")
        location = c.get_model_version_download_uri("digits-vae", record["version"])
        assert location.startswith("mlflow-artifacts:/") and str(project) not in location
        # the artifacts went through the server into its destination, not into the project
        assert list((tmp_path / "artifacts").rglob("decoder.onnx"))
        [mlmodel] = list((tmp_path / "artifacts").rglob("MLmodel"))
        assert str(project) not in mlmodel.read_text()
        assert not (project / "mlartifacts").exists()
        # served through the server both ways, with the same samples
        import sys

        import mlflow.pyfunc
        import numpy as np

        from serving.generator import generate, iter_samples
        from serving.resolve import fetch_onnx, resolve

        local = fetch_onnx(resolve(c, "digits-vae@champion"), tmp_path / "cache")
        generate(local, 20, 1, tmp_path / "gen")
        monkeypatch.setattr(sys, "path", list(sys.path))  # load_model puts the model's code/ first
        predicted = mlflow.pyfunc.load_model("models:/digits-vae@champion").predict({"n": 20, "seed": 1})
        assert np.array_equal(predicted, np.concatenate([x for x, _ in iter_samples(tmp_path / "gen")]))
    finally:
        stop_process_group(server)


@pytest.mark.slow  # a real server / remote round trip: `make test-all`
def test_dvc_push_and_pull_through_an_s3_compatible_server(tmp_path):
    port = free_port()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**os.environ, **creds, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    endpoint = f"http://127.0.0.1:{port}"
    moto = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], endpoint, env)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in creds.items()
                                                     if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket="genforge")
        dvc, work, clone = str(BIN / "dvc"), tmp_path / "work", tmp_path / "clone"
        _copy_project(work)
        _sh(["git", "init", "-q", "-b", "main"], work, env)
        _sh(["git", "add", "-A"], work, env)
        _sh(["git", "commit", "-qm", "init"], work, env)
        remote = ["remote", "add", "--local", "-d", "s3", "s3://genforge/dvc"]
        endpoint_cfg = ["remote", "modify", "--local", "s3", "endpointurl", endpoint]
        _sh([dvc, *remote], work, env)
        _sh([dvc, *endpoint_cfg], work, env)
        _sh([dvc, "repro", "prepare"], work, env)
        _sh([dvc, "push"], work, env)
        _sh(["git", "add", "-A"], work, env)
        _sh(["git", "commit", "-qm", "data"], work, env)
        _sh(["git", "clone", "-q", str(work), str(clone)], tmp_path, env)
        _sh([dvc, *remote], clone, env)
        _sh([dvc, *endpoint_cfg], clone, env)
        _sh([dvc, "pull", "prepare"], clone, env)
        for name in ("train.npz", "test.npz", "meta.json"):
            assert (clone / "data/prepared/mnist5k" / name).read_bytes() == \
                (work / "data/prepared/mnist5k" / name).read_bytes()
    finally:
        stop_process_group(moto)


@pytest.mark.slow
def test_dask_task_runner_runs_the_families_in_parallel(project):
    from pipelines.flows import run_retrain

    params = tiny_params(*LOOSE_GATE, "model.families=[vae,dcgan]")
    results = run_retrain(params, project, "dask")
    for family in ("vae", "dcgan"):
        assert results[f"promote:{family}"]["result"]["decision"] == "promoted"
