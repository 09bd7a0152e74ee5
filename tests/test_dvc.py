"""Real DVC: `dvc repro validate` runs prepare and validate, then `dvc push`/`dvc pull` round-trips the data."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LOOSE_GATE, BIN, REPO

PROJECT_FILES = ["pipelines", "genmodels", "evaluation", "serving", "contracts", "dvc.yaml", "params.yaml", ".dvcignore",
                 ".gitignore", ".dvc/config", ".dvc/.gitignore"]


def _sh(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _copy_project(dest: Path) -> None:
    for item in PROJECT_FILES:
        src = REPO / item
        if not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / item)


def _ran(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def _status(work: Path, env: dict) -> dict:
    import json

    return json.loads(_sh([str(BIN / "dvc"), "status", "--json"], work, env).strip().splitlines()[-1])


@pytest.mark.slow  # a real server / remote round trip: `make test-all`
def test_dvc_repro_then_push_and_pull_into_a_fresh_clone(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    dvc = str(BIN / "dvc")
    work, remote = tmp_path / "work", tmp_path / "remote"
    _copy_project(work)
    _sh(["git", "init", "-q", "-b", "main"], work, env)
    _sh(["git", "add", "-A"], work, env)
    _sh(["git", "commit", "-qm", "init"], work, env)
    # the test's own remote, in .dvc/config.local, so the user's default remote is left alone
    _sh([dvc, "remote", "add", "--local", "-d", "test", str(remote)], work, env)

    log = _sh([dvc, "repro", "validate"], work, env)
    assert "Running stage 'prepare'" in log and "Running stage 'validate'" in log
    assert (work / "reports" / "mnist5k" / "validation.json").exists()
    again = _sh([dvc, "repro", "validate"], work, env)
    # only the always-changed `source` fingerprint reruns; its output is unchanged, so prepare is skipped
    assert _ran(again) == {"source"} and "Stage 'prepare' didn't change, skipping" in again

    _sh([dvc, "push"], work, env)
    _sh(["git", "add", "-A"], work, env)
    _sh(["git", "commit", "-qm", "data"], work, env)
    clone = tmp_path / "clone"
    _sh(["git", "clone", "-q", str(work), str(clone)], tmp_path, env)
    _sh([dvc, "remote", "add", "--local", "-d", "test", str(remote)], clone, env)
    _sh([dvc, "pull", "prepare"], clone, env)
    for name in ("train.npz", "test.npz", "meta.json"):
        pulled = clone / "data" / "prepared" / "mnist5k" / name
        assert pulled.read_bytes() == (work / "data" / "prepared" / "mnist5k" / name).read_bytes()


def test_dvc_after_genforge_run_has_nothing_to_do_and_a_train_param_reruns_from_train(tmp_path):
    """`genforge run` (the Prefect flow) records dvc.lock; `dvc repro` then agrees with it."""
    import yaml

    from tests.conftest import tiny_params

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"}
    dvc, work = str(BIN / "dvc"), tmp_path / "work"
    _copy_project(work)
    params = tiny_params(*LOOSE_GATE, "model.families=[vae,dcgan]")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(["git", "init", "-q", "-b", "main"], work, env)
    _sh(["git", "add", "-A"], work, env)
    _sh(["git", "commit", "-qm", "init"], work, env)

    log = _sh([str(BIN / "genforge"), "run", "--samples", "100"], work, env)
    assert "dvc.lock updated" in log
    # up to date but for the `source` fingerprint, which DVC reports as "always changed" by design
    assert _status(work, env) == {"source": ["always changed"]}
    repro = _sh([dvc, "repro"], work, env)
    assert _ran(repro) == {"source"} and "Stage 'prepare' didn't change, skipping" in repro

    params["model"]["vae"]["epochs"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = _ran(_sh([dvc, "repro", "--dry"], work, env))
    assert "train@vae" in ran  # a dry run stops at the first changed stage of each chain
    assert not ran & {"prepare", "validate", "train@dcgan", "evaluate@dcgan"}

    metrics = _sh([dvc, "metrics", "show", "--json"], work, env)
    assert "fid_ratio" in metrics
