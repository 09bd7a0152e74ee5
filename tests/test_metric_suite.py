"""The metric registry (evaluation.suite): the table's contract, the configured set, skipped metrics, and
evaluate's values pinned against an independent computation on the 8x8 digits."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from contracts.errors import ConfigError
from evaluation import suite
from evaluation.suite.base import CAPABILITIES, MODALITIES, Metric
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# metrics.json keys of a tiny VAE with today's default set (pinned: renaming or dropping one is a change)
VAE_KEYS = {"fid", "fid_real_floor", "fid_ratio", "kid", "kid_real_floor", "precision", "precision_real_floor",
            "recall", "recall_real_floor", "density", "density_real_floor", "coverage", "coverage_real_floor",
            "class_coverage", "class_kl", "mode_collapse", "copy_rate", "copy_threshold", "copy_median_distance",
            "classifier_test_accuracy", "nll_nats", "bits_per_dim",
            "latent_traversal", "active_units", *(f"anomaly_{k}_{m}" for k in ("noise", "inversion", "occlusion")
                                                  for m in ("auroc", "aupr", "tpr_at_threshold")),
            "anomaly_auroc", "anomaly_aupr", "anomaly_tpr_at_threshold", "anomaly_threshold"}


def test_every_table_entry_keeps_the_metric_contract():
    seen: dict[str, str] = {}
    for name in suite.METRICS:
        metric = suite.get_metric(name)
        assert issubclass(metric, Metric) and metric.name == name
        assert metric.modality in MODALITIES and set(metric.needs) <= CAPABILITIES, name
        assert metric.outputs or metric.plots, f"{name} writes nothing"
        for key in metric.outputs:
            seen.setdefault(key, name)
    # within one modality (its own metrics and the "any" ones) every key has one writer; across modalities a
    # key may be shared (copy_rate, anomaly_auroc: one gate check for both)
    for modality in ("image", "tokens"):
        writers: dict[str, str] = {}
        for name in suite.default_metrics(modality):
            for key in suite.get_metric(name).outputs:
                assert key not in writers, f"{modality}: {key} written by {writers.get(key)} and {name}"
                writers[key] = name
    assert suite.metric_outputs() == seen
    assert suite.metric_outputs()["fid_ratio"] == "fid" and suite.metric_outputs()["anomaly_auroc"] == "anomaly"
    assert suite.metric_outputs()["copy_rate"] == "copy_rate" and suite.metric_outputs()["bits_per_char"] == "bits_per_char"
    assert set(suite.SHOW_OUTPUTS) <= set(seen) and set(suite.HEADLINE_OUTPUTS) <= set(seen)
    assert suite.default_metrics("image") == [n for n in suite.METRICS if suite.get_metric(n).modality in ("image", "any")]
    assert suite.default_metrics("image") == list(suite.METRICS)[:list(suite.METRICS).index("fid_inception") + 1]
    assert suite.default_metrics("tokens") == ["classifier_accuracy", "conditional_accuracy", "bits_per_char",
                                               "frechet_text", "novelty", "distinct_n", "length_kl", "text_anomaly",
                                               "sample_table"]


def test_the_registry_imports_without_torch():
    code = ("import sys; from evaluation import suite; [suite.get_metric(n) for n in suite.METRICS]; "
            "suite.metric_outputs(); suite.default_settings(); print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_default_settings_are_todays():
    ev = suite.default_settings()
    assert ev == {"metrics": None, "num_samples": 1000, "batch_size": 500, "seed": 0, "classifier": {"epochs": 8},
                  "sample_labels": "auto", "bits_per_char": {"max_texts": None, "batch_size": 500},
                  "text_anomaly": {"kinds": ["shuffled", "random", "reversed"], "fpr": 0.05, "max_texts": 1000},
                  "kid": {"subsets": 20, "subset_size": 500},
                  "mode_collapse": {"coverage_threshold": 0.7, "kl_threshold": 0.5, "recall_threshold": 0.2,
                                    "min_share": None},
                  "copy_rate": {"percentile": 1.0}, "nll_max_images": 500,
                  "anomaly": {"kinds": ["noise", "inversion", "occlusion"], "fpr": 0.05, "max_images": 500},
                  "inception_weights": None}


@pytest.mark.parametrize("names,message", [
    (["fid", "nl"], "evaluation.metrics: unknown metric 'nl' (did you mean 'nll'?); known: fid, kid, prdc"),
    ("fid", "evaluation.metrics: expected a list of metric names or null, got 'fid'"),
    (["nll", "nll"], "evaluation.metrics: listed twice: nll"),
])
def test_bad_metric_lists_are_config_errors(names, message):
    with pytest.raises(ConfigError) as err:
        suite.selected_metrics(names, "image")
    assert str(err.value).startswith(message)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _mlflow_template):
    import os
    import shutil

    from pipelines.prepare import prepare
    from pipelines.train import train
    from pipelines.validate import validate

    root = tmp_path_factory.mktemp("suite-project")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        params = tiny_params("model.vae.epochs=1")
        prepare(params, root)
        validate(params, root, root / "data" / "prepared" / "digits")
        train(params, root, "vae", progress=False)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return root, params


@pytest.fixture
def trained_env(trained, monkeypatch):
    """The trained project with its own MLflow store (evaluate logs to the run that trained the model)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained[0] / 'mlflow.db'}")
    return trained


def _evaluate(root, params, *extra):
    from pipelines.evaluate import evaluate

    if extra:
        from pipelines.config import apply_override

        params = json.loads(json.dumps(params))
        for item in extra:
            apply_override(params, item)
    evaluate(params, root, "vae")
    return json.loads((root / "reports" / "digits" / "vae" / "metrics.json").read_text())


def test_evaluate_runs_the_default_set_with_values_computed_independently(trained_env):
    import torch

    from evaluation import classifier as clf_lib
    from evaluation import metrics as metric_lib
    from pipelines.dataset import open_prepared
    from pipelines.train import load_model

    root, params = trained_env
    report = _evaluate(root, params)
    assert set(report["metrics"]) == VAE_KEYS
    assert report["skipped"] == {"conditional_accuracy": "the model lacks conditional (needs conditional, samples)",
                                 "fid_inception": "evaluation.inception_weights is not set (never downloaded)"}
    assert report["inception"] == {"computed": False, "reason": "evaluation.inception_weights is not set (never downloaded)"}
    assert report["summary"]["fid"] == report["metrics"]["fid"]["value"]

    ds = open_prepared(root / "data" / "prepared" / "digits")
    (train_x, train_y), (test_x, test_y) = ds.load("train"), ds.load("test")
    clf, info = clf_lib.load_or_train_classifier(root / "models" / "classifiers", ds.sha256, train_x, train_y,
                                                 ds.num_classes, test_images=test_x, test_labels=test_y,
                                                 seed=0, epochs=2)
    assert info["cached"] and report["metrics"]["classifier_test_accuracy"]["value"] == info["test_accuracy"]
    model = load_model(root / "models" / "digits" / "vae", "cpu")
    with torch.no_grad():
        samples = model.sample(200, generator=torch.Generator().manual_seed(0)).float().numpy()
        nll = model.nll(torch.from_numpy(test_x[:100].astype(np.float32) / 255.0)).numpy()
    real, fake = clf_lib.extract(clf, train_x)[0], clf_lib.extract(clf, samples)[0]
    floor = metric_lib.fid(real, clf_lib.extract(clf, test_x[:200])[0])
    got = report["metrics"]
    assert got["fid"]["value"] == pytest.approx(metric_lib.fid(real, fake), abs=1e-6)
    assert got["fid_ratio"]["value"] == pytest.approx(got["fid"]["value"] / floor, rel=1e-9)
    assert got["coverage"]["value"] == pytest.approx(metric_lib.prdc(real, fake, 5)["coverage"], abs=1e-9)
    assert got["nll_nats"]["value"] == pytest.approx(float(nll.mean()), abs=1e-5)
    assert got["bits_per_dim"]["value"] == pytest.approx(float(nll.mean()) / (64 * math.log(2)), abs=1e-6)
    assert got["nll_nats"]["setting"]["n_images"] == 100 and got["fid"]["setting"]["n_samples"] == 200
    from scipy.spatial.distance import cdist

    # pixels as the model takes them (uint8 / 255 in float32), then float64 distances
    flat = lambda x: (x.astype(np.float32) / np.float32(255.0 if x.dtype == np.uint8 else 1.0)).reshape(  # noqa: E731
        len(x), -1).astype(np.float64)
    sample_nn, test_nn = (cdist(flat(x), flat(train_x)).min(1) for x in (samples, test_x[:200]))
    assert got["copy_threshold"]["value"] == pytest.approx(np.percentile(test_nn, 1), abs=1e-9)
    assert got["copy_rate"]["value"] == np.mean(sample_nn <= got["copy_threshold"]["value"])
    assert got["copy_median_distance"]["value"] == pytest.approx(np.median(sample_nn), abs=1e-9)
    assert "domain-classifier" in got["nll_nats"]["setting"]["feature_extractor"]


def test_a_configured_subset_runs_only_its_metrics_and_records_what_it_skipped(trained_env):
    root, params = trained_env
    full = _evaluate(root, params)["metrics"]
    report = _evaluate(root, params, "evaluation.metrics=[nll, anomaly, conditional_accuracy]")
    assert report["metrics_run"] == ["nll", "anomaly", "conditional_accuracy"]
    assert set(report["metrics"]) == {k for k in VAE_KEYS if k in ("nll_nats", "bits_per_dim") or k.startswith("anomaly")}
    for key, entry in report["metrics"].items():  # the same values without the classifier-based metrics
        assert entry["value"] == full[key]["value"], key
    assert list(report["skipped"]) == ["conditional_accuracy"] and report["classifier"] is None
    plots = root / "reports" / "digits" / "vae" / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["roc.png", "score_histograms.png"]
    with pytest.raises(ConfigError, match=r"evaluation.metrics: unknown metric 'fdi' \(did you mean 'fid'\?\)"):
        _evaluate(root, params, "evaluation.metrics=[fdi]")
