"""Disk full and permissions (issue #12, kind 8): one `error:` line naming the path and the system's words
("No space left on device"), nothing half-written, the previous good state intact, normal file modes.
Paths (kind 9): data set, family and model names can never leave the project (checked in pipelines.catalog)."""
from __future__ import annotations

import errno
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.errors import StorageError
from contracts.io import atomic_dir, atomic_write_bytes, sha256_file, storage_error
from pipelines import catalog
from pipelines.errors import GenforgeError
from pipelines.stages import FAMILY_STAGES, STAGES
from tests.conftest import BIN, REPO, tiny_args, tiny_params

ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200",
       "PYTHONPATH": str(REPO)}


# --- the mapping -----------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES])
def test_machine_errors_become_one_line_naming_the_path(code):
    err = storage_error(RuntimeError("wrapped").with_traceback(None), "/fallback")
    assert err is None
    try:
        try:
            raise OSError(code, os.strerror(code), "/data/x.npz")
        except OSError as inner:
            raise RuntimeError("a library's wrapper") from inner
    except RuntimeError as outer:
        err = storage_error(outer)
    assert isinstance(err, StorageError) and str(err) == f"/data/x.npz: {os.strerror(code)}"
    assert str(storage_error(OSError(code, os.strerror(code)), "/given")) == f"/given: {os.strerror(code)}"
    assert storage_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")) is None


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_text("old")
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(StorageError, match=rf"^{tmp_path}/a.json: No space left on device$"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_atomic_dir_on_a_full_disk_keeps_the_old_folder(tmp_path):
    final = tmp_path / "prepared" / "digits"
    final.mkdir(parents=True)
    (final / "meta.json").write_text("old")
    with pytest.raises(StorageError, match=r"digits: No space left on device$"):
        with atomic_dir(final) as tmp:
            (tmp / "train.npz").write_bytes(b"partial")
            _enospc()
    assert os.listdir(final.parent) == ["digits"] and (final / "meta.json").read_text() == "old"


def test_prepare_over_the_file_size_limit_is_one_line_and_keeps_the_data(project):
    """A real write failure (RLIMIT_FSIZE: EFBIG, as a quota or a full disk would give ENOSPC)."""
    from pipelines.prepare import prepare

    prepare(tiny_params(), project)
    out = project / "data" / "prepared" / "digits"
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # normal modes, not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "stage", "prepare",
                           *tiny_args("data.test_fraction=0.3")], cwd=project, env=ENV, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {out.parent}/") and lines[0].endswith(": File too large")
    assert os.listdir(out.parent) == ["digits"]  # no temp folder left
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before


def test_generate_on_a_full_disk_is_resumable(tmp_path, monkeypatch):
    from genmodels import get_family
    from serving.export import export_model
    from serving.generator import generate

    model = tmp_path / "onnx"
    export_model(get_family("vae").from_config({"image_shape": [1, 8, 8], "num_classes": 10, "seed": 0}).eval(), model)
    out = tmp_path / "gen"
    calls = {"n": 0}
    real = os.fsync

    def full_after_three(fd):
        calls["n"] += 1
        if calls["n"] > 3:  # the manifest, the first shard and the manifest listing it fit
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", full_after_three)
    with pytest.raises(StorageError, match=r"/gen/shards/shard-00001.npz: No space left on device$"):
        generate(model, 20, 0, out, batch_size=5)
    monkeypatch.undo()
    assert not [p for p in out.rglob(".*")]  # no temp files
    result = generate(model, 20, 0, out, batch_size=5)
    assert result["complete"] and result["run"]["reused_shards"] == 1 and result["run"]["generated_shards"] == 3


def test_cli_turns_a_storage_oserror_anywhere_into_one_line(tmp_path):
    code = ("import errno, sys; import pipelines.registry as r, pipelines.cli as c\n"
            "def full(name):\n    raise OSError(errno.ENOSPC, 'No space left on device', '/big/mlflow.db')\n"
            "r.show = full; sys.argv = ['genforge', 'registry', 'show', 'x']; c.main()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: /big/mlflow.db: No space left on device"


# --- names that would leave the project ------------------------------------------------------
BAD_NAMES = ["..", "../x", "../../outside", "a/b", "/abs", ".hidden", "-x", "x/../y", "a\\..", ""]


@pytest.mark.parametrize("bad", [b for b in BAD_NAMES if b])
def test_catalog_refuses_names_that_leave_the_project(tmp_path, bad):
    with pytest.raises(GenforgeError, match="must be a plain name"):
        catalog.path("model_dir", tmp_path, "digits", bad)
    with pytest.raises(GenforgeError, match="must be a plain name"):
        catalog.path("prepared", tmp_path, bad)
    with pytest.raises(GenforgeError, match="must be a plain name"):
        catalog.outputs_dir(tmp_path, bad)
    with pytest.raises(GenforgeError, match="must be a plain name"):
        catalog.lock_path(tmp_path, "digits", bad)


def test_catalog_accepts_plain_names(tmp_path):
    assert catalog.path("model_dir", tmp_path, "mnist5k.v2", "wgan_gp") == tmp_path / "models/mnist5k.v2/wgan_gp"
    assert catalog.outputs_dir(tmp_path, "digits-vae") == tmp_path / "outputs/digits-vae"


@pytest.mark.parametrize("name", [s.name for s in FAMILY_STAGES])
def test_every_family_stage_refuses_a_path_as_family(project, tmp_path, name):
    """The flows call stages by name (no CLI check in between): refused before any file or registry access."""
    from pipelines.stages import stage

    with pytest.raises(GenforgeError, match=r"--family '\.\./\.\./outside' must be a plain name"):
        stage(name).call(tiny_params(), project, "../../outside")
    assert sorted(os.listdir(project)) == ["params.yaml"]


@pytest.mark.parametrize("name", [s.name for s in FAMILY_STAGES])
def test_every_family_command_refuses_a_path_as_family(project, name, monkeypatch, capsys):
    import pipelines.cli as cli

    monkeypatch.chdir(project)
    monkeypatch.setenv("GENFORGE_ROOT", str(project))
    monkeypatch.setattr(sys, "argv", ["genforge", "stage", name, "--family", "../../outside", *tiny_args()])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "unknown model family '../../outside'" in err.splitlines()[0]
    assert sorted(os.listdir(project)) == ["params.yaml"]


@pytest.mark.parametrize("name", [s.name for s in STAGES if not s.per_family])
def test_data_stages_refuse_a_path_as_data_name(project, name):
    from pipelines.stages import stage

    with pytest.raises(GenforgeError, match="data.name '../x'"):
        stage(name).call(tiny_params("data.name=../x"), project)
    assert not Path(project.parent / "x").exists()
