"""Concurrency (issue #12, kind 7): the first use of a fresh SQLite MLflow store by several processes at once
is serialised; two stages on one family, two data stages on one data set or two `genforge run` in one project
get one `busy:` line naming the holder, never corrupt each other; `generate` never replaces a user's file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.errors import BusyError, ServingError
from contracts.io import exclusive
from pipelines import catalog
from pipelines.stages import FAMILY_STAGES, stage
from tests.conftest import BIN, REPO, tiny_args, tiny_params

ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200",
       "PYTHONPATH": str(REPO)}


def _one_error_line(proc, *fragments: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- the SQLite store ------------------------------------------------------------------------
@pytest.mark.slow  # several processes migrating one fresh MLflow store (~18 s): `make test-all`
def test_processes_opening_a_fresh_store_together_all_succeed(tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"
    db.parent.mkdir()
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "registry", "show", f"model-{i}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    for i, proc in enumerate(procs):
        proc.stdout, proc.stderr = proc.communicate(timeout=300)
        _one_error_line(proc, f"no registered model 'model-{i}'")
    assert (db.parent / "mlflow.db.lock").exists()  # the lock lives beside the store
    after = subprocess.run([sys.executable, "-c", "from pipelines import tracking; "
                            "print(len(tracking.client().search_experiments()))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0 and after.stdout.strip() == "1", after.stderr  # usable: the Default experiment


def test_sqlite_path_of_a_tracking_uri():
    from pipelines.tracking import sqlite_path

    assert sqlite_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("http://127.0.0.1:5000") is None


# --- the lock itself -------------------------------------------------------------------------
def test_a_held_lock_makes_others_busy_naming_the_holder(tmp_path):
    lock = tmp_path / "locks" / "x.lock"
    code = (f"import sys, time; sys.argv = ['genforge', 'stage', 'train']\n"
            f"from contracts.io import exclusive\n"
            f"with exclusive({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match=rf"^busy: x is in use by pid {holder.pid} \(genforge stage train, "
                                            r"since \d{4}-\d\d-\d\dT"):
            with exclusive(lock, "x"):
                pass
        holder.send_signal(signal.SIGKILL)  # kill -9: the OS releases the lock with the process
        holder.wait(timeout=30)
        with exclusive(lock, "x"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_waiting_for_a_lock_times_out_with_busy(tmp_path):
    lock = tmp_path / "y.lock"
    with exclusive(lock, "y"):
        started = time.monotonic()
        code = f"from contracts.io import exclusive\nwith exclusive({str(lock)!r}, 'y', wait=0.5): pass\n"
        proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "busy: y is in use by pid" in proc.stderr
        assert time.monotonic() - started >= 0.5


def test_lock_paths_per_family_data_set_and_run(tmp_path):
    assert catalog.lock_path(tmp_path, "digits", "vae") == tmp_path / ".genforge/locks/digits-vae.lock"
    assert catalog.lock_path(tmp_path, "digits") == tmp_path / ".genforge/locks/data-digits.lock"
    assert catalog.lock_path(tmp_path) == tmp_path / ".genforge/locks/run.lock"


@pytest.mark.parametrize("name", [s.name for s in FAMILY_STAGES])
def test_every_family_stage_is_busy_while_another_holds_the_family(project, name):
    with exclusive(catalog.lock_path(project, "digits", "vae"), "digits/vae"):
        with pytest.raises(BusyError, match=f"busy: digits/vae is in use by pid {os.getpid()}"):
            stage(name).call(tiny_params(), project, "vae")
    assert not (project / "models").exists() and not (project / "reports").exists()


def test_data_stages_lock_the_data_set_and_families_do_not_block_each_other(project):
    with exclusive(catalog.lock_path(project, "digits"), "data set digits"):
        with pytest.raises(BusyError, match="busy: data set digits"):
            stage("prepare").call(tiny_params(), project)
        assert not (project / "data" / "prepared").exists()
    with exclusive(catalog.lock_path(project, "digits", "dcgan"), "digits/dcgan"):  # another family: not busy
        with pytest.raises(Exception) as err:
            stage("evaluate").call(tiny_params(), project, "vae")
        assert not isinstance(err.value, BusyError)


def test_cli_stage_and_run_say_busy_in_one_line(project):
    with exclusive(catalog.lock_path(project, "digits", "vae"), "digits/vae"):
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "stage", "evaluate", "--family", "vae",
                               *tiny_args()], cwd=project, env=ENV, capture_output=True, text=True, timeout=300)
        _one_error_line(proc, "busy: digits/vae is in use by pid", str(os.getpid()))
    with exclusive(catalog.lock_path(project), "the main run"):
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", *tiny_args()], cwd=project, env=ENV,
                              capture_output=True, text=True, timeout=300)
        _one_error_line(proc, f"busy: the main run of {project} is in use by pid {os.getpid()}")
    assert not (project / "data").exists()


# --- generate --out --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_onnx(tmp_path_factory) -> Path:
    from genmodels import get_family
    from serving.export import export_model

    out = tmp_path_factory.mktemp("model") / "onnx"
    export_model(get_family("vae").from_config({"image_shape": [1, 8, 8], "num_classes": 10, "seed": 0}).eval(), out)
    return out


def _user_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    user = tmp_path / "mine"
    (user / "png").mkdir(parents=True)
    files = {"preview.png": b"my own preview", "png/0000000.png": b"my own picture", "notes.txt": b"notes"}
    for name, data in files.items():
        (user / name).write_bytes(data)
    return user, files


def test_generate_refuses_a_folder_of_the_users(vae_onnx, tmp_path):
    from serving.generator import generate

    user, files = _user_folder(tmp_path)
    with pytest.raises(ServingError, match=r"holds files genforge did not write \(notes.txt, png/0000000.png, "
                                              r"preview.png\).*--overwrite"):
        generate(vae_onnx, 20, 0, user, png=True)
    assert {n: (user / n).read_bytes() for n in files} == files and sorted(os.listdir(user)) == sorted(
        ["png", "preview.png", "notes.txt"])


def test_overwrite_never_replaces_a_users_file(vae_onnx, tmp_path):
    from serving.generator import generate

    user, files = _user_folder(tmp_path)
    with pytest.raises(ServingError, match=r"mine/preview.png: exists and was not written by genforge"):
        generate(vae_onnx, 20, 0, user, png=True, overwrite=True)
    assert {n: (user / n).read_bytes() for n in files} == files
    (user / "preview.png").unlink()
    with pytest.raises(ServingError, match=r"mine/png/0000000.png: exists and was not written by genforge"):
        generate(vae_onnx, 20, 0, user, png=True, overwrite=True)
    assert not (user / "manifest.json").exists() and not (user / "shards").exists()  # refused before any write
    generate(vae_onnx, 20, 0, user, overwrite=True)  # no --png: beside the user's files, none of them replaced
    assert (user / "notes.txt").read_bytes() == b"notes" and (user / "png/0000000.png").read_bytes() == b"my own picture"
    assert (user / "manifest.json").is_file() and (user / "preview.png").read_bytes() != b"my own preview"


def test_overwrite_replaces_only_genforges_own_outputs(vae_onnx, tmp_path):
    from serving.generator import GenerationError, generate

    out = tmp_path / "gen"
    generate(vae_onnx, 20, 0, out, batch_size=5, png=True)
    (out / "notes.txt").write_text("mine")
    generate(vae_onnx, 20, 0, out, batch_size=5, png=True)  # the same job again: resumed, nothing to do
    with pytest.raises(GenerationError, match="holds another generation job.*--overwrite"):
        generate(vae_onnx, 10, 1, out, batch_size=10)
    result = generate(vae_onnx, 10, 1, out, batch_size=10, overwrite=True)
    assert result["n"] == 10 and json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.npz"]  # the old job's are gone
    assert not (out / "png").exists() or not any((out / "png").iterdir())
    assert (out / "notes.txt").read_text() == "mine"

