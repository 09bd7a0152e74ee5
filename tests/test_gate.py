"""The promotion gate as configured checks: every op, missing metrics, required: false, per-family overrides,
legacy shorthands, typos and the champion comparison (pure functions, no registry)."""
import pytest

from pipelines.config import load_params
from pipelines.errors import ConfigError
from pipelines.gate import DEFAULT_CHECKS, gate_decision, resolve_gate
from pipelines.registry import gate_settings
from tests.conftest import REPO

GOOD = {"metric.fid_ratio": "2.0", "metric.coverage": "0.8", "metric.class_coverage": "1.0", "metric.copy_rate": "0.0",
        "metric.mode_collapse": "0", "parity_max_abs_error": "1e-6", "validated": "true"}


def _statuses(decision):
    return {c["metric"]: c["status"] for c in decision["checks"]}


def test_shipped_params_resolve_to_todays_thresholds():
    params = load_params(REPO / "params.yaml")
    for family in ("vae", "cvae", "dcgan", "pixelcnn"):
        gate = gate_settings(params, family)
        assert gate["checks"] == resolve_gate({})["checks"] == resolve_gate({"checks": DEFAULT_CHECKS})["checks"]
    assert gate_settings(params, "pixelcnn")["primary_metric"] == "bits_per_dim"
    assert resolve_gate(gate_settings(params, "vae")) == gate_settings(params, "vae")  # idempotent


@pytest.mark.parametrize("op,limit,value,status", [("max", 5.0, "5.0", "passed"), ("max", 5.0, "5.01", "failed"),
                                                  ("min", 0.5, "0.5", "passed"), ("min", 0.5, "0.49", "failed"),
                                                  ("max", 5.0, "nan", "failed"), ("min", 0.5, "nan", "failed")])
def test_each_op_compares_inclusively_and_nan_fails(op, limit, value, status):
    gate = {"checks": [{"metric": "fid_ratio", op: limit}]}
    decision = gate_decision({**GOOD, "metric.fid_ratio": value}, None, gate)
    check = decision["checks"][0]
    assert (check["metric"], check["op"], check["limit"], check["status"]) == ("fid_ratio", op, limit, status)
    assert decision["promoted"] is (status == "passed")


def test_every_check_is_recorded_with_observed_limit_and_champion_value():
    champion = {**GOOD, "metric.fid_ratio": "3.0", "metric.coverage": "0.7"}
    decision = gate_decision(GOOD, champion, {})
    by_metric = {c["metric"]: c for c in decision["checks"]}
    assert list(by_metric) == ["fid_ratio", "coverage", "class_coverage", "mode_collapse", "copy_rate",
                               "conditional_accuracy", "parity_max_abs_error", "validated"]
    assert by_metric["fid_ratio"] == {"check": "fid_ratio <= 300", "metric": "fid_ratio", "op": "max",
                                      "limit": 300.0, "observed": 2.0, "champion": 3.0, "required": True,
                                      "status": "passed", "passed": True}
    assert by_metric["parity_max_abs_error"]["observed"] == 1e-6 and by_metric["coverage"]["champion"] == 0.7
    assert decision["promoted"] and decision["champion_value"] == 3.0


def test_a_missing_required_metric_fails_and_an_optional_one_is_skipped_with_the_reason():
    tags = {k: v for k, v in GOOD.items() if k != "metric.coverage"}
    decision = gate_decision(tags, None, {})
    assert _statuses(decision)["coverage"] == "failed" and not decision["promoted"]
    assert ("failed: coverage >= 0.05 (coverage missing (required: the version's metrics do not report it; "
            "evaluate it again, or make the check `required: false`))") in decision["reasons"]
    assert _statuses(decision)["conditional_accuracy"] == "skipped"
    decision = gate_decision(GOOD, None, {})
    assert decision["promoted"]
    assert "skipped: conditional_accuracy >= 0.7 (conditional_accuracy missing (required: false))" in decision["reasons"]
    # a conditional model answers for it
    assert not gate_decision({**GOOD, "metric.conditional_accuracy": "0.3"}, None, {})["promoted"]
    parity_missing = {k: v for k, v in GOOD.items() if k != "parity_max_abs_error"}
    assert _statuses(gate_decision(parity_missing, None, {}))["parity_max_abs_error"] == "failed"


def test_data_validated_is_always_checked():
    decision = gate_decision({**GOOD, "validated": "false"}, None, {"checks": []})
    assert not decision["promoted"] and _statuses(decision)["validated"] == "failed"


def test_per_family_checks_replace_the_global_entry_for_their_metric_and_add_new_ones():
    registry = {"checks": [{"metric": "fid_ratio", "max": 500.0}, {"metric": "coverage", "min": 0.03}],
                "families": {"vae": {"checks": [{"metric": "coverage", "min": 0.5}, {"metric": "recall", "min": 0.1}]}}}
    vae = {c["metric"]: c for c in resolve_gate(registry, "vae")["checks"]}
    assert vae["coverage"] == {"metric": "coverage", "min": 0.5, "required": True}
    assert vae["recall"]["min"] == 0.1 and vae["fid_ratio"]["max"] == 500.0
    assert "parity_max_abs_error" in vae  # always present, the export tolerance
    dcgan = {c["metric"]: c for c in resolve_gate(registry, "dcgan")["checks"]}
    assert dcgan["coverage"]["min"] == 0.03 and "recall" not in dcgan
    assert not gate_decision({**GOOD, "metric.recall": "0.05"}, None, resolve_gate(registry, "vae"))["promoted"]


def test_a_family_without_fid_is_gated_on_the_metrics_it_has():
    registry = {"families": {"toy": {"checks": [{"metric": "fid_ratio", "max": 500.0, "required": False},
                                                {"metric": "coverage", "min": 0.03, "required": False},
                                                {"metric": "class_coverage", "min": 0.7, "required": False},
                                                {"metric": "mode_collapse", "max": 0, "required": False},
                                                {"metric": "copy_rate", "max": 0.1, "required": False},
                                                {"metric": "bits_per_dim", "max": 2.0}],
                                     "primary_metric": "bits_per_dim"}}}
    gate = resolve_gate(registry, "toy")
    tags = {"metric.bits_per_dim": "1.5", "parity_max_abs_error": "0", "validated": "true"}
    decision = gate_decision(tags, None, gate)
    assert decision["promoted"] and _statuses(decision)["fid_ratio"] == "skipped"
    assert not gate_decision({**tags, "metric.bits_per_dim": "2.5"}, None, gate)["promoted"]
    assert not gate_decision(tags, {**tags, "metric.bits_per_dim": "1.4"}, gate)["promoted"]  # champion better


def test_champion_comparison_by_direction_and_margin():
    gate = {"margin": 0.1}
    assert not gate_decision(GOOD, {**GOOD, "metric.fid_ratio": "2.05"}, gate)["promoted"]  # not by the margin
    assert gate_decision(GOOD, {**GOOD, "metric.fid_ratio": "3.0"}, gate)["promoted"]
    up = {"primary_metric": "coverage", "direction": "maximize"}
    assert gate_decision(GOOD, {**GOOD, "metric.coverage": "0.7"}, up)["promoted"]
    decision = gate_decision(GOOD, {**GOOD, "metric.coverage": "0.9"}, up)
    assert not decision["promoted"] and "coverage 0.8 vs champion 0.9" in decision["reasons"][-1]
    assert gate_decision(GOOD, {"validated": "true"}, gate)["promoted"]  # a champion without the metric


def test_legacy_shorthands_set_their_checks_limit():
    gate = {"max_fid_ratio": 5.0, "min_coverage": 0.5, "min_class_coverage": 0.9, "forbid_mode_collapse": True,
            "max_parity_error": 1e-4, "min_conditional_accuracy": 0.6}
    checks = {c["metric"]: c for c in resolve_gate(gate)["checks"]}
    assert checks["fid_ratio"]["max"] == 5.0 and checks["coverage"]["min"] == 0.5
    assert checks["conditional_accuracy"] == {"metric": "conditional_accuracy", "min": 0.6, "required": False}
    assert "mode_collapse" not in {c["metric"] for c in resolve_gate({"forbid_mode_collapse": False})["checks"]}
    # a shorthand on top of a checks list without that metric adds to it; per family it overrides the global
    assert {c["metric"]: c for c in resolve_gate({"checks": [], "max_parity_error": 0.01})["checks"]} == {
        "parity_max_abs_error": {"metric": "parity_max_abs_error", "max": 0.01, "required": True}}
    fam = resolve_gate({"families": {"vae": {"min_coverage": 0.2}}}, "vae")
    assert {c["metric"]: c for c in fam["checks"]}["coverage"]["min"] == 0.2


@pytest.mark.parametrize("registry,message", [
    ({"checks": [{"metric": "fid_ratoi", "max": 1}]},
     "registry.checks[0].metric: unknown metric 'fid_ratoi' (did you mean 'fid_ratio'?)"),
    ({"checks": [{"metric": "fid_ratio", "mx": 1}]},
     "registry.checks[0].mx: unknown field (did you mean 'max'?); known: metric, min, max, required"),
    ({"checks": [{"metric": "fid_ratio"}]}, "registry.checks[0]: give exactly one of min or max for 'fid_ratio', got neither"),
    ({"checks": [{"metric": "fid_ratio", "min": 1, "max": 2}]},
     "registry.checks[0]: give exactly one of min or max for 'fid_ratio', got ['min', 'max']"),
    ({"checks": [{"metric": "fid_ratio", "max": "high"}]}, "registry.checks[0].max: expected a number, got 'high'"),
    ({"checks": [{"metric": "fid_ratio", "max": 1, "required": "no"}]},
     "registry.checks[0].required: expected true or false, got 'no'"),
    ({"checks": [{"metric": "coverage", "min": 0}, {"metric": "coverage", "min": 1}]},
     "registry.checks[1]: a second check for 'coverage'"),
    ({"checks": {"metric": "fid_ratio"}}, "registry.checks: expected a list of checks, got {'metric': 'fid_ratio'}"),
    ({"direction": "minimise"}, "registry.direction: expected minimize or maximize, got 'minimise' (did you mean 'minimize'?)"),
    ({"primary_metric": "bits_per_dimm"}, "registry.primary_metric: unknown metric 'bits_per_dimm' (did you mean 'bits_per_dim'?)"),
    ({"max_fid_ratoi": 3}, "registry.max_fid_ratoi: unknown key (did you mean 'max_fid_ratio'?)"),
    ({"checks": [{"metric": "fid_ratio", "max": 500}], "max_fid_ratio": 10},
     "registry.max_fid_ratio: conflicts with the registry.checks entry for 'fid_ratio'; keep one of them"),
    ({"families": {"vae": {"checks": [{"metric": "coverage", "min": 0}], "min_coverage": 0.1}}},
     "registry.families.vae.min_coverage: conflicts with the registry.families.vae.checks entry for 'coverage'"),
    ({"families": {"vae": {"checks": [{"metric": "covrage", "min": 0}]}}},
     "registry.families.vae.checks[0].metric: unknown metric 'covrage' (did you mean 'coverage'?)"),
    ({"families": {"vae": {"direction": "up"}}}, "registry.families.vae.direction: expected minimize or maximize"),
])
def test_typos_and_conflicts_are_config_errors(registry, message):
    with pytest.raises(ConfigError) as err:
        resolve_gate(registry, "vae")
    assert str(err.value).startswith(message)


def test_anomaly_and_registry_side_metrics_are_valid_check_names():
    gate = resolve_gate({"checks": [{"metric": "anomaly_auroc", "min": 0.6}, {"metric": "anomaly_noise_auroc", "min": 0.5},
                                    {"metric": "parity_max_abs_error", "max": 1e-3}, {"metric": "nll_nats", "max": 90}]})
    assert [c["metric"] for c in gate["checks"]] == ["anomaly_auroc", "anomaly_noise_auroc", "parity_max_abs_error",
                                                      "nll_nats"]


def test_the_gate_s_defaults_follow_the_data_s_modality_and_other_modalities_checks_drop_out():
    """Text data with no registry section gets the text gate (bits/char primary); params.yaml's image gate on
    text keeps only the checks whose metrics text evaluation writes (copy_rate, conditional accuracy, parity),
    and its image primary metric gives way to bits/char; images are unchanged."""
    from evaluation.suite.gates import TOKENS_GATE
    from pipelines.config import load_params
    from pipelines.registry import gate_settings

    text = gate_settings({"data": {"source": "names"}}, "gpt")
    assert text["primary_metric"] == "bits_per_char" and text["direction"] == "minimize"
    assert [c["metric"] for c in text["checks"]] == [c["metric"] for c in TOKENS_GATE["checks"]]
    mixed = gate_settings(load_params(REPO / "params.yaml", ["data.source=text:corpus.txt"]), "lstm")
    kept = {c["metric"]: c for c in mixed["checks"]}
    assert not {"fid_ratio", "coverage", "class_coverage", "mode_collapse"} & set(kept)
    assert kept["copy_rate"]["max"] == 0.1 and kept["bits_per_char"]["max"] == 3.4  # the shorthand, the default
    assert mixed["primary_metric"] == "bits_per_char"
    image = gate_settings(load_params(REPO / "params.yaml"), "vae")
    assert image["primary_metric"] == "fid_ratio" and "fid_ratio" in {c["metric"] for c in image["checks"]}
    assert gate_settings(load_params(REPO / "params.yaml"), "pixelcnn")["primary_metric"] == "bits_per_dim"
