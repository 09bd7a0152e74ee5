"""Real DVC: `dvc repro validate` runs prepare and validate, then `dvc push`/`dvc pull` round-trips the data;
after `genforge run`, `dvc repro` has nothing to do; between two commits `dvc metrics diff` / `dvc plots diff`
compare the versioned summaries and curves, and `git checkout` + `dvc checkout` of the older one is consistent."""
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


@pytest.mark.slow  # ~20 s of real DVC runs (the render of every pipeline is checked in the default run, tests/test_stages.py): `make test-all`
def test_the_pipeline_of_another_params_file_replays_with_its_own_lock(tmp_path):
    """`genforge dvc-yaml --params params-tiny.yaml --write` + `dvc repro stages/tiny/dvc.yaml:validate` (real
    DVC): the stages run from the project root with that file's values and lock into stages/tiny/dvc.lock;
    the main pipeline is not touched."""
    import yaml

    from tests.conftest import tiny_params

    work, env = _tiny_git_project(tmp_path)
    params = tiny_params(*LOOSE_GATE)
    params["data"]["name"] = "tinyset"
    (work / "params-tiny.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    genforge, dvc = str(BIN / "genforge"), str(BIN / "dvc")
    assert "stages/tiny/dvc.yaml" in _sh([genforge, "dvc-yaml", "--params", "params-tiny.yaml", "--write"], work, env)
    log = _sh([dvc, "repro", "stages/tiny/dvc.yaml:validate"], work, env)
    assert {f"stages/tiny/dvc.yaml:{s}" for s in ("source", "prepare", "validate")} <= _ran(log), log
    assert (work / "reports" / "tinyset" / "validation.json").exists()
    lock = yaml.safe_load((work / "stages" / "tiny" / "dvc.lock").read_text())["stages"]
    assert lock["prepare"]["params"]["params-tiny.yaml"]["data"]["name"] == "tinyset"
    assert not (work / "dvc.lock").exists() and not (work / "data" / "prepared" / "mnist5k").exists()
    again = _sh([dvc, "repro", "stages/tiny/dvc.yaml:validate"], work, env)
    assert _ran(again) == {"stages/tiny/dvc.yaml:source"}, again
    assert "Stage 'stages/tiny/dvc.yaml:prepare' didn't change" in again, again


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


def _tiny_git_project(tmp_path: Path, **extra_env: str) -> tuple[Path, dict]:
    """(work, env): a copy of the project in tmp_path/work with the tiny digits settings written into
    params.yaml (dvc.yaml follows params.yaml), committed to a new git repository; env has its own MLflow store."""
    import yaml

    from tests.conftest import tiny_params

    work = tmp_path / "work"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", **extra_env}
    _copy_project(work)
    params = tiny_params(*LOOSE_GATE, "model.families=[vae,dcgan]")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(["git", "init", "-q", "-b", "main"], work, env)
    _sh(["git", "add", "-A"], work, env)
    _sh(["git", "commit", "-qm", "init"], work, env)
    return work, env


@pytest.mark.slow  # a whole genforge run + dvc repro (~40 s; the default run keeps the real dvc repro of a second params file): `make test-all`
def test_dvc_after_genforge_run_has_nothing_to_do_and_a_train_param_reruns_from_train(tmp_path):
    """`genforge run` (the Prefect flow) records dvc.lock; `dvc repro` then agrees with it."""
    import yaml

    work, env = _tiny_git_project(tmp_path)
    dvc = str(BIN / "dvc")

    log = _sh([str(BIN / "genforge"), "run", "--samples", "100"], work, env)
    assert "dvc.lock updated" in log
    # up to date but for the `source` fingerprint, which DVC reports as "always changed" by design
    assert _status(work, env) == {"source": ["always changed"]}
    repro = _sh([dvc, "repro"], work, env)
    assert _ran(repro) == {"source"} and "Stage 'prepare' didn't change, skipping" in repro

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["model"]["vae"]["epochs"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = _ran(_sh([dvc, "repro", "--dry"], work, env))
    assert "train@vae" in ran  # a dry run stops at the first changed stage of each chain
    assert not ran & {"prepare", "validate", "train@dcgan", "evaluate@dcgan"}

    metrics = _sh([dvc, "metrics", "show", "--json"], work, env)
    assert "fid_ratio" in metrics
    _check_versioned(work, env, "digits", ["vae", "dcgan"])


def _check_versioned(work: Path, env: dict, dataset: str, families: list[str]) -> dict:
    """The files git versions for DVC after a run: a flat numeric summary per family (DVC's only metrics), one
    loss CSV per training loss, the ROC (header only for a model without a score), all outside .gitignore.
    Returns {family: summary}."""
    import json
    import math

    from pipelines import catalog

    shown = json.loads(_sh([str(BIN / "dvc"), "metrics", "show", "--json"], work, env).strip().splitlines()[-1])
    files = shown[""]["data"]
    layouts = {f: catalog.Layout(work, dataset, f) for f in families}
    assert set(files) == {layouts[f].summary.relative_to(work).as_posix() for f in families}
    summaries = {}
    for family, paths in layouts.items():
        summary = json.loads(paths.summary.read_text())
        assert summary == files[paths.summary.relative_to(work).as_posix()]["data"]
        assert all(type(v) in (int, float) and math.isfinite(v) for v in summary.values()), summary
        assert {"fid", "fid_ratio", "coverage", "mode_collapse", "train_epochs", "train_seconds"} <= set(summary)
        assert 8 <= len(summary) <= 20, summary
        losses = sorted(p.name for p in paths.loss_curves.iterdir())
        assert losses and all((paths.loss_curves / n).read_text().startswith(f"epoch,{n[:-4]}\n1,") for n in losses)
        roc = paths.roc_curve.read_text().splitlines()
        assert roc[0] == "fpr,tpr" and (len(roc) > 2) == ("anomaly_auroc" in summary), (family, roc[:3])
        summaries[family] = summary
    versioned = [str(p.relative_to(work)) for ls in layouts.values() for p in (ls.summary, ls.roc_curve)]
    proc = subprocess.run(["git", "check-ignore", *versioned, "dvc_plots/index.html"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert proc.stdout.split() == ["dvc_plots/index.html"], proc.stdout  # the summaries are committed, not ignored
    return summaries


@pytest.mark.slow  # two whole pipeline runs and DVC across commits (~2-3 min on 2 cores): `make test-all`
def test_metrics_and_plots_diff_between_commits_and_a_consistent_checkout_of_the_older_one(tmp_path):
    """Run, commit, change model.vae.epochs, run, commit: `dvc metrics diff HEAD~1` is a readable table of the
    changed numbers, `dvc plots diff HEAD~1` writes dvc_plots/index.html (git-ignored), `dvc exp show` lists both
    commits; `git checkout HEAD~1` + `dvc checkout` restores the older model's files together and `dvc repro`
    has nothing to do; the MLflow registry (not versioned by git) keeps both versions and its champion."""
    import json

    import yaml
    from mlflow.tracking import MlflowClient

    work, env = _tiny_git_project(tmp_path, COLUMNS="200")
    db = work / "mlflow.db"
    dvc, genforge = str(BIN / "dvc"), str(BIN / "genforge")

    assert "dvc.lock updated" in _sh([genforge, "run", "--samples", "20"], work, env)
    first = _check_versioned(work, env, "digits", ["vae", "dcgan"])
    _sh(["git", "add", "-A"], work, env)
    _sh(["git", "commit", "-qm", "vae 2 epochs"], work, env)
    assert _sh(["git", "status", "--porcelain"], work, env) == ""  # nothing left out of the commit, nothing stray
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["model"]["vae"]["epochs"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "dvc.lock updated" in _sh([genforge, "run", "--samples", "20"], work, env)
    second = _check_versioned(work, env, "digits", ["vae", "dcgan"])
    assert second["dcgan"] == first["dcgan"] and second["vae"]["train_epochs"] == 3
    _sh(["git", "add", "-A"], work, env)
    _sh(["git", "commit", "-qm", "vae 3 epochs"], work, env)

    diff = _sh([dvc, "metrics", "diff", "HEAD~1"], work, env)
    print(diff)
    lines = diff.strip().splitlines()
    assert lines[0].split() == ["Path", "Metric", "HEAD~1", "workspace", "Change"]
    assert all(len(line) <= 200 for line in lines), max(lines, key=len)
    rows = {row.split()[1]: row.split()[2:] for row in lines[1:]}
    assert rows["train_epochs"] == ["2", "3", "1"]
    changed = {k for k in second["vae"] if second["vae"][k] != first["vae"][k]}
    assert set(rows) == changed and len(rows) >= 5  # one row per changed number, none for the unchanged dcgan
    assert all(row.split()[0] == "metrics/digits/vae/summary.json" for row in lines[1:])
    diff_json = json.loads(_sh([dvc, "metrics", "diff", "HEAD~1", "--json"], work, env).strip().splitlines()[-1])
    assert diff_json["metrics/digits/vae/summary.json"]["train_epochs"] == {"old": 2, "new": 3, "diff": 1}

    plots = _sh([dvc, "plots", "diff", "HEAD~1"], work, env)
    html = (work / "dvc_plots" / "index.html").read_text()
    assert "dvc_plots/index.html" in plots and "metrics/digits/vae/loss/loss.csv" in html
    assert "metrics/digits/vae/roc.csv" in html and "HEAD~1" in html and "workspace" in html
    assert _sh(["git", "status", "--porcelain"], work, env) == ""  # dvc_plots/ is ignored
    exp = _sh([dvc, "exp", "show", "-n", "2", "--csv", "--drop", "deps|params"], work, env)
    assert exp.count("metrics/digits/vae/summary.json:fid_ratio") == 1 and len(exp.strip().splitlines()) == 4

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    aliases_before = client.get_registered_model("digits-vae").aliases
    _sh(["git", "checkout", "-q", "HEAD~1"], work, env)
    _sh([dvc, "checkout"], work, env)
    assert _status(work, env) == {"source": ["always changed"]}
    vae = work / "models" / "digits" / "vae"
    train = json.loads((vae / "train.json").read_text())
    registered = json.loads((vae / "registered.json").read_text())
    promotion = json.loads((work / "reports" / "digits" / "vae" / "promotion.json").read_text())
    assert train["epochs"] == 2 and json.loads((work / "metrics/digits/vae/summary.json").read_text()) == first["vae"]
    assert registered["version"] == promotion["version"] == "1" and registered["run_id"] == train["run_id"]
    from contracts.io import sha256_mismatches

    assert sha256_mismatches(vae, train["files"]) == []  # model.pt and config.json of that very training
    # the registry is not rolled back: version 1 still exists, and champion/challenger point where they did
    assert client.get_model_version("digits-vae", registered["version"]).run_id == train["run_id"]
    assert client.get_registered_model("digits-vae").aliases == aliases_before
    repro = _sh([dvc, "repro"], work, env)
    assert _ran(repro) == {"source"}, repro
    assert _sh(["git", "status", "--porcelain"], work, env) == ""  # dvc.lock and the versioned files unchanged
