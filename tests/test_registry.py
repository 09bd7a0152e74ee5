"""Export, register, the promotion gate, review commands and the ORT generator against a real SQLite registry."""
import json
import subprocess
import sys

import pytest

from pipelines import tracking
from pipelines.errors import GenforgeError
from pipelines.evaluate import evaluate
from pipelines.prepare import prepare
from pipelines.registry import export, gate_decision, manual_promote, promote, register, rollback, show
from pipelines.train import train
from pipelines.validate import validate
from tests.conftest import LOOSE_GATE, REPO, tiny_params



def _chain(params, root, family="vae"):
    return {stage: fn(params, root, family) for stage, fn in
            (("train", lambda p, r, f: train(p, r, f, progress=False)), ("evaluate", evaluate), ("export", export),
             ("register", register), ("promote", promote))}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, _mlflow_template):
    """v1: a tiny VAE, promoted; v2: the same family collapsed to one image, registered and rejected."""
    import os
    import shutil

    root = tmp_path_factory.mktemp("registry-project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        params = tiny_params(*LOOSE_GATE)
        prepare(params, root)
        validate(params, root, root / "data" / "prepared" / "digits")
        v1 = _chain(params, root)
        import genmodels
        saved = genmodels.FAMILIES["vae"]
        genmodels.FAMILIES["vae"] = "tests.nan_family:CollapsedVAE"
        try:
            v2 = _chain(tiny_params(*LOOSE_GATE, "model.vae.epochs=1"), root)
        finally:
            genmodels.FAMILIES["vae"] = saved
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return {"root": root, "uri": uri, "params": params, "v1": v1, "v2": v2}


@pytest.fixture
def registry_env(chain, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain["uri"])
    return chain


def test_first_passing_version_becomes_champion_with_full_tags(registry_env):
    root, v1 = registry_env["root"], registry_env["v1"]
    assert v1["register"]["name"] == "digits-vae" and v1["register"]["version"] == "1"
    assert v1["promote"]["decision"] == "promoted"
    c = tracking.client()
    mv = c.get_model_version("digits-vae", "1")
    for tag in ("data_sha256", "git_commit", "params_hash", "parity_max_abs_error", "metric.fid", "metric.fid_ratio",
                "metric.coverage", "metric.mode_collapse", "promotion.decision", "promotion.reasons"):
        assert tag in mv.tags, tag
    assert float(mv.tags["parity_max_abs_error"]) <= 1e-4
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "1"
    promotion = json.loads((root / "reports" / "digits" / "vae" / "promotion.json").read_text())
    assert promotion["version"] == "2"  # the latest decision
    # the source is an MLflow model logged as a LoggedModel of the training run, holding the export folder
    assert mv.source.startswith("models:/m-")
    model_id = mv.source.removeprefix("models:/")
    logged = c.get_logged_model(model_id)
    assert str(logged.status) == "READY" and logged.source_run_id == mv.run_id
    arts = {a.path for a in c.list_logged_model_artifacts(model_id)}
    arts |= {a.path for a in c.list_logged_model_artifacts(model_id, "artifacts/onnx")}
    assert {"MLmodel", "checkpoint", "artifacts/onnx/sampler.json", "artifacts/onnx/decoder.onnx"} <= arts


def test_evaluation_report_has_every_metric_with_its_setting(registry_env):
    out = registry_env["root"] / "reports" / "digits" / "vae"
    report = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "fid_real_floor", "fid_ratio", "kid", "precision", "recall", "density", "coverage",
                "class_coverage", "class_kl", "mode_collapse", "nll_nats", "anomaly_auroc", "anomaly_aupr",
                "anomaly_tpr_at_threshold", "anomaly_noise_auroc"):
        assert key in report["metrics"], key
        assert report["metrics"][key]["setting"]["dataset"] == "digits"
    assert report["metrics"]["fid"]["setting"]["n_samples"] == 200
    assert "domain-classifier" in report["metrics"]["fid"]["setting"]["feature_extractor"]
    assert report["inception"]["computed"] is False and "not set" in report["inception"]["reason"]
    assert 0.0 <= report["summary"]["anomaly_auroc"] <= 1.0
    for png in ("samples.png", "interpolation.png", "roc.png", "score_histograms.png"):
        assert (out / "plots" / png).stat().st_size > 0
    run = tracking.client().get_run(report["run_id"])
    assert "eval/fid" in run.data.metrics


def test_collapsed_challenger_is_registered_but_not_promoted(registry_env):
    v2 = registry_env["v2"]
    assert v2["register"]["version"] == "2"
    assert v2["evaluate"]["mode_collapse"] == 1
    assert v2["promote"]["decision"] == "rejected"
    assert any("fid_ratio" in r and "champion" in r for r in v2["promote"]["reasons"])
    c = tracking.client()
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "1"
    assert str(c.get_model_version_by_alias("digits-vae", "challenger").version) == "2"
    assert c.get_model_version("digits-vae", "2").tags["promotion.decision"] == "rejected"


def test_registry_show_lists_versions_side_by_side(registry_env, cli):
    rows = show("digits-vae")
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[0]["aliases"] == "champion" and rows[1]["aliases"] == "challenger"
    assert rows[1]["mode_collapse"] == "yes" and rows[1]["decision"] == "rejected"
    proc = cli(["registry", "show", "digits-vae"], registry_env["root"])
    assert proc.returncode == 0 and "challenger" in proc.stdout and "rejected" in proc.stdout
    proc = cli(["registry", "show", "digits-nope"], registry_env["root"])
    assert proc.returncode == 1 and "no registered model 'digits-nope'" in proc.stderr


def test_gate_hard_thresholds_each_block_promotion():
    good = {"metric.fid_ratio": "2.0", "metric.coverage": "0.8", "metric.class_coverage": "1.0",
            "metric.mode_collapse": "0", "parity_max_abs_error": "1e-6", "validated": "true"}
    gate = {"max_fid_ratio": 5.0, "min_coverage": 0.5, "min_class_coverage": 0.9, "forbid_mode_collapse": True,
            "max_parity_error": 1e-4, "primary_metric": "fid_ratio", "direction": "minimize", "margin": 0.1}
    assert gate_decision(good, None, gate)["promoted"]
    for key, bad in (("metric.fid_ratio", "9"), ("metric.coverage", "0.1"), ("metric.class_coverage", "0.5"),
                     ("metric.mode_collapse", "1"), ("parity_max_abs_error", "0.01"), ("validated", "false")):
        decision = gate_decision({**good, key: bad}, None, gate)
        assert not decision["promoted"], key
    # conditional models also answer for drawing the class they are asked for
    gate["min_conditional_accuracy"] = 0.5
    assert gate_decision({**good, "metric.conditional_accuracy": "0.8"}, None, gate)["promoted"]
    decision = gate_decision({**good, "metric.conditional_accuracy": "0.3"}, None, gate)
    assert not decision["promoted"] and any("conditional_accuracy" in r for r in decision["reasons"])
    champion = {**good, "metric.fid_ratio": "2.05"}
    assert not gate_decision(good, champion, gate)["promoted"]  # better, but not by the margin
    assert gate_decision(good, {**good, "metric.fid_ratio": "3.0"}, gate)["promoted"]


def test_manual_promote_and_rollback_record_reasons(registry_env):
    c = tracking.client()
    manual_promote("digits-vae", "2", "reviewer wants to compare in production")
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "2"
    assert c.get_model_version("digits-vae", "2").tags["promotion.decision"] == "manual-promote"
    record = rollback("digits-vae", "collapsed samples in production")
    assert record["champion_after"] == "1"
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "1"
    assert "collapsed samples" in c.get_model_version("digits-vae", "2").tags["promotion.reasons"]
    with pytest.raises(GenforgeError, match="no earlier champion"):
        rollback("digits-vae", "again")


def test_register_refuses_a_model_whose_parity_failed(registry_env):
    root, params = registry_env["root"], registry_env["params"]
    onnx_dir = root / "models" / "digits" / "vae" / "onnx"
    backup = {p.name: p.read_bytes() for p in onnx_dir.iterdir()}
    try:
        parity = json.loads((onnx_dir / "parity.json").read_text())
        (onnx_dir / "parity.json").write_text(json.dumps({**parity, "passed": False, "max_abs_error": 0.5}))
        (onnx_dir / "sampler.json").unlink()
        before = len(show("digits-vae"))
        with pytest.raises(GenforgeError, match="not servable"):
            register(params, root, "vae")
        assert len(show("digits-vae")) == before
    finally:
        for name, data in backup.items():
            (onnx_dir / name).write_bytes(data)


def test_generate_from_the_registry_is_deterministic_and_torch_free(registry_env, tmp_path):
    root = registry_env["root"]
    code = ("import sys; from pipelines.cli import main\n"
            "sys.argv = ['genforge', 'generate', 'digits-vae@champion', '-n', '1000', '--seed', '3', "
            f"'--batch-size', '256', '--out', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TORCH_LOADED', 'torch' in sys.modules)")
    outs = []
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], cwd=root, capture_output=True,
                              text=True, timeout=300, env={**__import__("os").environ})
        assert proc.returncode == 0, proc.stderr
        assert "TORCH_LOADED False" in proc.stdout
        outs.append(tmp_path / name)
    manifest = json.loads((outs[0] / "manifest.json").read_text())
    assert manifest["model"] == {"name": "digits-vae", "version": "1"} and manifest["n"] == 1000
    assert sum(s["count"] for s in manifest["shards"]) == 1000
    for shard in manifest["shards"]:
        assert (outs[0] / shard["file"]).read_bytes() == (outs[1] / shard["file"]).read_bytes()
    assert (outs[0] / "preview.png").exists()


@pytest.mark.parametrize("ref,message", [("digits-nope@champion", "no registered model 'digits-nope'"),
                                         ("digits-vae@gold", "has no alias 'gold'"),
                                         ("digits-vae/99", "has no version 99"),
                                         ("digits vae", "must be <name>@<alias>")])
def test_generate_bad_references(registry_env, cli, tmp_path, ref, message):
    proc = cli(["generate", ref, "-n", "10", "--out", str(tmp_path / "o")], registry_env["root"])
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_generate_refuses_another_jobs_folder_and_bad_n(registry_env, cli, tmp_path):
    root, out = registry_env["root"], tmp_path / "o"
    assert cli(["generate", "digits-vae/1", "-n", "300", "--seed", "1", "--out", str(out)], root).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = cli(["generate", "digits-vae/1", "-n", "300", "--seed", "2", "--out", str(out)], root)
    assert proc.returncode == 1 and "error:" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    proc = cli(["generate", "digits-vae/1", "-n", "0", "--out", str(tmp_path / "zero")], root)
    assert proc.returncode == 1 and "n must be" in proc.stderr
    proc = cli(["generate", "digits-vae/1", "-n", "5", "--label", "3", "--out", str(tmp_path / "lab")], root)
    assert proc.returncode == 1 and "error:" in proc.stderr


def test_likelihood_families_compete_on_bits_per_dim_by_default():
    from pipelines.config import load_params
    from pipelines.registry import gate_settings

    params = load_params(REPO / "params.yaml")
    for family in ("pixelcnn", "realnvp"):
        assert gate_settings(params, family)["primary_metric"] == "bits_per_dim"
    assert gate_settings(params, "dcgan")["primary_metric"] == "fid_ratio"
    gate = gate_settings(params, "pixelcnn")
    tags = {"metric.fid_ratio": "100", "metric.coverage": "0.2", "metric.class_coverage": "1.0",
            "metric.mode_collapse": "0", "parity_max_abs_error": "1e-6", "validated": "true"}
    # a worse FID but a better likelihood still wins for a likelihood model
    challenger = {**tags, "metric.fid_ratio": "150", "metric.bits_per_dim": "0.12"}
    assert gate_decision(challenger, {**tags, "metric.bits_per_dim": "0.13"}, gate)["promoted"]
    assert not gate_decision(challenger, {**tags, "metric.bits_per_dim": "0.11"}, gate)["promoted"]
