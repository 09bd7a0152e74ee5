"""What users already have keeps working: artifacts written by genforge before contracts v2 (commit 92c87d4,
kept in tests/fixtures/legacy_v1/, see its README) load, validate, evaluate with the same numbers, export,
register and serve, and a registry version in the old format (a source folder holding `onnx/` with
`sampler.json`, no MLmodel) is served and promoted by hand."""
import json
import shutil

import numpy as np
import pytest

from pipelines import tracking
from pipelines.config import load_params
from tests.conftest import REPO, run_cli

FIXTURE = REPO / "tests" / "fixtures" / "legacy_v1"
FAMILIES = ("vae", "cvae", "ddpm", "pixelcnn")
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def legacy(tmp_path_factory, _mlflow_template):
    """The legacy project copied into a temp folder, validated with today's code; each model's train.json
    points at a run in this test's own MLflow store (run ids belong to the store they were made in)."""
    import os

    root = tmp_path_factory.mktemp("legacy-project")
    for item in ("params.yaml", "data", "models"):
        src = FIXTURE / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    shutil.copy(_mlflow_template, root / "mlflow.db")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        c = tracking.client()
        for family in FAMILIES:
            info_path = root / "models" / "legacy" / family / "train.json"
            info = json.loads(info_path.read_text())
            run = c.create_run(tracking.experiment_id(c, f"legacy-{family}"), run_name=f"train-{family}")
            c.set_terminated(run.info.run_id)
            info["run_id"] = run.info.run_id
            info_path.write_text(json.dumps(info, indent=2))
        params = load_params(root / "params.yaml")
        from pipelines.validate import validate

        report = validate(params, root, root / "data" / "prepared" / "legacy")
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return {"root": root, "params": params, "validation": report}


@pytest.fixture
def legacy_env(legacy, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{legacy['root'] / 'mlflow.db'}")
    monkeypatch.chdir(legacy["root"])
    return legacy


def test_legacy_params_file_and_prepared_data_still_validate(legacy_env):
    report = json.loads((legacy_env["root"] / "reports" / "legacy" / "validation.json").read_text())
    assert report["success"] is True and not report["failed"]


@pytest.mark.parametrize("family", FAMILIES)
def test_legacy_model_loads_and_evaluates_to_the_same_numbers(legacy_env, family):
    from pipelines.evaluate import evaluate
    from pipelines.train import load_model

    root = legacy_env["root"]
    model = load_model(root / "models" / "legacy" / family)
    assert model.family == family
    evaluate(legacy_env["params"], root, family)
    summary = json.loads((root / "reports" / "legacy" / family / "metrics.json").read_text())["summary"]
    expected = EXPECTED[family]["metrics_summary"]
    missing = sorted(set(expected) - set(summary))
    assert not missing, f"metrics the legacy evaluation reported and today's does not: {missing}"
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("family", FAMILIES)
def test_legacy_onnx_folder_serves_the_same_samples(legacy_env, tmp_path, family):
    from serving.generator import generate, iter_samples

    generate(legacy_env["root"] / "models" / "legacy" / family / "onnx", 12, 0, tmp_path / "out", batch_size=8)
    images = np.concatenate([x for x, _ in iter_samples(tmp_path / "out")]).astype(int)
    labels = np.concatenate([y for _, y in iter_samples(tmp_path / "out")])
    want = EXPECTED[family]["generate_n12_seed0"]
    # uint8 after rounding: the same graphs and noise give the same bytes; allow one grey level for a
    # float rounding tie on another CPU
    assert np.abs(images - np.asarray(want["images"])).max() <= 1
    assert labels.tolist() == want["labels"]


def test_old_format_registry_version_is_served_and_promoted(legacy_env, tmp_path):
    """A version registered before MLmodel sources: its source folder holds onnx/ + sampler.json only."""
    root = legacy_env["root"]
    source = tmp_path / "old-source"
    shutil.copytree(root / "models" / "legacy" / "ddpm" / "onnx", source / "onnx")
    c = tracking.client()
    c.create_registered_model("legacy-ddpm")
    mv = c.create_model_version("legacy-ddpm", source=str(source), tags={"family": "ddpm"})
    proc = run_cli(["generate", f"legacy-ddpm/{mv.version}", "-n", "12", "--seed", "0", "--batch-size", "8",
                    "--out", str(tmp_path / "served")], cwd=root)
    assert proc.returncode == 0, proc.stderr
    from serving.generator import iter_samples

    images = np.concatenate([x for x, _ in iter_samples(tmp_path / "served")]).astype(int)
    assert np.abs(images - np.asarray(EXPECTED["ddpm"]["generate_n12_seed0"]["images"])).max() <= 1
    proc = run_cli(["registry", "promote", "legacy-ddpm", str(mv.version), "--reason", "reviewed"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert str(c.get_model_version_by_alias("legacy-ddpm", "champion").version) == str(mv.version)


def test_a_version_registered_before_mlmodel_sources_is_served_promoted_and_rolled_back_to(legacy_env, tmp_path):
    """registry/vae-version.json: a version exactly as `register` wrote it before versions became MLflow models
    (the run's genforge_model/ folder, no MLmodel, genforge.sha256 keyed onnx/<file>). It is served by
    `genforge generate` (sha256 checked), promoted by the gate, and after a newer MLflow-model version took
    champion, a rollback makes it champion again and it is served again."""
    from pipelines.mlmodel import log_model
    from pipelines.registry import manual_promote, promote, rollback
    from serving.generator import generate, iter_samples
    from serving.resolve import fetch_onnx, resolve
    from tests.conftest import LOOSE_GATE

    root = legacy_env["root"]
    old = json.loads((FIXTURE / "registry" / "vae-version.json").read_text())
    c = tracking.client()
    run = c.create_run(tracking.experiment_id(c, "legacy-vae"), run_name="train-vae")
    for dest, src in old["artifacts"].items():
        c.log_artifact(run.info.run_id, str(root / src), dest.rsplit("/", 1)[0])
    c.create_registered_model("legacy-vae")
    mv = c.create_model_version("legacy-vae", source=f"{run.info.artifact_uri}/genforge_model", run_id=run.info.run_id,
                                tags=old["tags"], description=old["description"])
    resolved = resolve(c, f"legacy-vae/{mv.version}")
    assert not resolved.mlflow_model and resolved.onnx_path == "onnx" and "decoder.onnx" in resolved.onnx_files
    want = np.asarray(EXPECTED["vae"]["generate_n12_seed0"]["images"])

    def served(ref: str, out: str) -> np.ndarray:  # what `genforge generate REF` runs, in this process
        local = fetch_onnx(resolve(c, ref), root / ".genforge" / "models")
        generate(local, 12, 0, tmp_path / out, batch_size=8)
        return np.concatenate([x for x, _ in iter_samples(tmp_path / out)]).astype(int)

    assert np.abs(served(f"legacy-vae/{mv.version}", "old") - want).max() <= 1
    # the gate promotes it (stage promote reads registered.json and the version's tags)
    (root / "models" / "legacy" / "vae" / "registered.json").write_text(json.dumps(
        {"name": "legacy-vae", "version": str(mv.version), "run_id": run.info.run_id, "source": mv.source}))
    # it predates the copy_rate metric: a gate that insists on it says so instead of passing it silently...
    strict = load_params(root / "params.yaml", [*LOOSE_GATE, "registry.families.vae.checks="
                                                "[{metric: copy_rate, max: 0.1, required: true}]"])
    rejected = promote(strict, root, "vae")
    assert rejected["decision"] == "rejected" and any("copy_rate missing (required" in r for r in rejected["reasons"])
    # ...and the shipped gate promotes it, recording the check as skipped
    promoted = promote(load_params(root / "params.yaml", list(LOOSE_GATE)), root, "vae")
    assert promoted["decision"] == "promoted"
    assert any(r.startswith("skipped: copy_rate") for r in promoted["reasons"])
    # a version in today's layout (an MLflow model) beside it takes champion; rolling back brings the old one back
    onnx = root / "models" / "legacy" / "vae" / "onnx"
    model_id = log_model(c, run.info.run_id, "legacy-vae", onnx, [], "new-layout", {"family": "vae"}, {})
    new = c.create_model_version("legacy-vae", source=f"models:/{model_id}", run_id=run.info.run_id,
                                 tags={**old["tags"], "genforge.sha256": "{}"})
    manual_promote("legacy-vae", str(new.version), "today's layout")
    assert np.abs(served("legacy-vae@champion", "new") - want).max() <= 1
    assert rollback("legacy-vae", "back to the old one")["champion_after"] == str(mv.version)
    assert np.abs(served("legacy-vae@champion", "again") - want).max() <= 1
