"""What git versions for DVC (pipelines/versioned.py): the flat metrics summary, the loss and ROC data plots, and the
.gitignore / dvc.yaml rules that keep them committed while everything DVC caches stays out of git."""
import json
import math
import subprocess

import numpy as np
import pytest
import yaml

from evaluation import suite
from evaluation.anomaly import roc_points
from pipelines import catalog, versioned
from pipelines.stages import STAGES
from tests.conftest import REPO

DS, FAM = "digits", "vae"


# ---- the summary ---------------------------------------------------------------------------------------
def test_every_metric_s_summary_is_among_its_outputs_and_holds_what_the_gate_decides_on():
    from genmodels import FAMILIES
    from pipelines.gate import resolve_gate

    for name in suite.METRICS:
        metric = suite.get_metric(name)
        assert metric.summary is None or set(metric.summary) <= set(metric.outputs), name
    keys = suite.summary_outputs()
    assert set(keys) <= set(suite.metric_outputs())
    assert list(keys)[:3] == ["fid", "fid_real_floor", "fid_ratio"]  # table order
    assert "kid_real_floor" not in keys and "anomaly_noise_auroc" not in keys  # trimmed to what reviewers compare
    registry = yaml.safe_load((REPO / "params.yaml").read_text())["registry"]
    for family in FAMILIES:  # whatever the gate checks (but export's parity) a reviewer can diff between commits
        gate = resolve_gate(registry, family)
        gated = {c["metric"] for c in gate["checks"]} - {"parity_max_abs_error"} | {gate["primary_metric"]}
        assert gated <= set(keys), (family, gated - set(keys))


def _sample_report() -> dict:
    """A metrics.json `metrics` section with a value for every registered output, of every kind evaluate may
    meet: floats, ints, booleans, numpy scalars, lists, strings, NaN and infinities, each with a setting."""
    kinds = [0.25, 3, True, np.float32(1.5), [1, 2], "a-string-value", float("nan"), np.bool_(False), float("inf"),
             np.int64(7), {"nested": 1}, None]
    return {key: {"value": kinds[i % len(kinds)], "setting": {"path": "reports/x.png", "n": 5}}
            for i, key in enumerate(suite.metric_outputs())}


def test_the_summary_is_flat_and_numeric_for_a_sample_of_every_registered_output():
    report = _sample_report()
    summary = versioned.flat_summary(report, {"epochs": 4, "train_seconds": 12.3456789, "run_id": "abc",
                                              "history": [{"epoch": 1, "loss": 2.0}]})
    keys = suite.summary_outputs()

    def numeric(v):
        return isinstance(v, (bool, int, float, np.generic)) and not isinstance(v, np.ndarray) \
            and math.isfinite(float(v))
    expected = [k for k in keys if numeric(report[k]["value"])] + ["train_epochs", "train_seconds"]
    assert list(summary) == expected  # registry order, then training's numbers
    for key, value in summary.items():
        assert type(value) in (int, float) and math.isfinite(value), (key, value)
    bools = [k for k in keys if isinstance(report[k]["value"], (bool, np.bool_))]
    assert bools and all(summary[k] in (0, 1) and type(summary[k]) is int for k in bools)
    assert summary["train_epochs"] == 4 and summary["train_seconds"] == 12.3457  # 6 significant digits
    text = versioned.json_text(summary)  # allow_nan=False: raises on anything JSON cannot hold
    assert json.loads(text) == summary
    assert "a-string-value" not in text and "reports/" not in text and "NaN" not in text and "Infinity" not in text


def test_the_summary_of_plain_values_and_of_an_empty_evaluation():
    assert versioned.flat_summary({"fid": 1.0 / 3, "mode_collapse": False, "loss": 5.0}) == \
        {"fid": 0.333333, "mode_collapse": 0}  # "loss" is no registered output
    assert versioned.flat_summary({}, None) == {}


# ---- data plots ------------------------------------------------------------------------------------------
def test_loss_curves_are_one_csv_per_loss_and_replace_the_old_folder(tmp_path):
    folder = tmp_path / "loss"
    folder.mkdir()
    (folder / "gone.csv").write_text("epoch,gone\n1,1\n")
    history = [{"epoch": 1, "loss_d": 1.5, "loss_g": 0.5}, {"epoch": 2, "loss_d": 1.25, "loss_g": float("nan")}]
    versioned.write_loss_curves(folder, history)
    assert sorted(p.name for p in folder.iterdir()) == ["loss_d.csv", "loss_g.csv"]
    assert (folder / "loss_d.csv").read_text() == "epoch,loss_d\n1,1.5\n2,1.25\n"
    assert (folder / "loss_g.csv").read_text() == "epoch,loss_g\n1,0.5\n"  # a non-finite mean is no point
    versioned.write_loss_curves(folder, [])  # DVC needs a file to version, even for no history
    assert [p.name for p in folder.iterdir()] == ["loss.csv"] and (folder / "loss.csv").read_text() == "epoch,loss\n"
    assert not list(tmp_path.glob(".loss.*"))  # no temp folder left


def test_a_curve_csv_refuses_what_is_not_a_number():
    assert versioned.curve_csv([], ("fpr", "tpr")) == "fpr,tpr\n"
    assert versioned.curve_csv([{"fpr": np.float32(0.5), "tpr": 1}], ("fpr", "tpr")) == "fpr,tpr\n0.5,1\n"
    with pytest.raises(ValueError, match="row 1: 'tpr' is 'x', not a finite number"):
        versioned.curve_csv([{"fpr": 0, "tpr": 0}, {"fpr": 1, "tpr": "x"}], ("fpr", "tpr"))
    with pytest.raises(ValueError, match="row 0: 'tpr' is None"):
        versioned.curve_csv([{"fpr": 0}], ("fpr", "tpr"))
    with pytest.raises(ValueError, match="'fpr' is nan"):
        versioned.curve_csv([{"fpr": float("nan"), "tpr": 0}], ("fpr", "tpr"))


def test_roc_points_run_from_0_0_to_1_1_and_separate_perfectly_scored_anomalies():
    rng = np.random.default_rng(0)
    points = roc_points(rng.normal(0, 1, 200), rng.normal(1, 1, 300))
    assert points[0] == {"fpr": 0.0, "tpr": 0.0} and points[-1] == {"fpr": 1.0, "tpr": 1.0}
    assert all(a["fpr"] <= b["fpr"] and a["tpr"] <= b["tpr"] for a, b in zip(points, points[1:]))
    assert len(points) <= 1 + len(np.unique([p["fpr"] for p in points])) * 2  # corners only: a small file
    assert {"fpr": 0.0, "tpr": 1.0} in roc_points([0.1, 0.2], [0.8, 0.9])
    with pytest.raises(ValueError, match="scores_anomalous contains NaN"):
        roc_points([0.1], [float("nan")])


# ---- dvc.yaml and .gitignore -----------------------------------------------------------------------------
def _ignored(paths: list[str]) -> set[str]:
    """Which of `paths` (relative to the repository) git ignores, whether tracked or not."""
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(paths),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode in (0, 1), proc.stderr
    return set(proc.stdout.split())


def test_dvc_yaml_metrics_and_plots_are_the_catalog_s_versioned_paths():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    do = {name: body.get("do", body) for name, body in stages.items()}

    def entries(stage, kind):
        return {next(iter(i)) if isinstance(i, dict) else i: (next(iter(i.values())) if isinstance(i, dict) else {})
                for i in do[stage].get(kind, [])}
    fmt = lambda name: catalog.entry(name).format("${data.name}", "${item}")  # noqa: E731
    assert entries("evaluate", "metrics") == {fmt("summary"): {"cache": False}}
    plots = entries("evaluate", "plots")
    assert plots[fmt("roc_curve")] == {"cache": False, "x": "fpr", "y": "tpr", "template": "simple",
                                       "x_label": "false positive rate", "y_label": "true positive rate"}
    assert plots[fmt("plots")] == {}  # the PNGs: cached by DVC, restored by `dvc checkout`
    assert entries("train", "plots") == {fmt("loss_curves"): {"cache": False, "x": "epoch", "template": "linear"}}
    assert all(not do[s].get("metrics") for s in do if s != "evaluate")


def test_git_versions_every_uncached_output_and_ignores_every_cached_one_and_dvc_plots():
    """`git checkout` + `dvc checkout` of an older commit restores every output: a `cache: false` one only when
    git tracks it (not ignored), and a cached one must stay out of git. The `source` fingerprint is the
    exception: always changed, it is re-derived by every `dvc repro`."""
    outs = {o.entry: o for s in STAGES for o in s.outputs if not s.always_changed}
    paths = {name: catalog.entry(name).format(DS, FAM) + ("/x.csv" if catalog.entry(name).folder else "")
             for name in outs}
    ignored = _ignored([*paths.values(), "dvc_plots/index.html", "metrics/digits/vae/.loss.tmp-1-x/a.csv"])
    for name, out in outs.items():
        assert (paths[name] in ignored) == out.cache, (name, paths[name], out.cache)
    assert {"summary", "loss_curves", "roc_curve"} <= {n for n, o in outs.items() if not o.cache}
    assert {"dvc_plots/index.html", "metrics/digits/vae/.loss.tmp-1-x/a.csv"} <= ignored
