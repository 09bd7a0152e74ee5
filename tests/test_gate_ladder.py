"""The known-bad ladder, fast: sample sets a broken or cheating model would draw, built from the 8x8 digits
without training a model (evaluation/ladder.py), evaluated by the metric suite as `stage evaluate` does and
decided by the gate with the shipped params.yaml thresholds. Every bad rung must be rejected and held-out
test images (a perfect model's samples) accepted. A rung today's thresholds let through is an xfail
(strict: it fails the suite once the gate catches it, so the mark is removed then) with the measured
numbers, never a loosened assertion."""
import pytest

from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHOWN = ("fid_ratio", "coverage", "recall", "class_coverage", "mode_collapse", "copy_rate")

# rung -> a check that must be among the failed ones (the check that exists for that kind of bad model)
CAUGHT_BY = {"noise": "class_coverage", "one_class": "class_coverage", "ten_prototypes": "mode_collapse",
             "replay": "copy_rate"}


@pytest.fixture(scope="module")
def ladder(prepared_digits):
    """rung -> (metrics, gate decision), all rungs evaluated once with the shipped registry settings."""
    from evaluation.ladder import build_rungs, evaluate_samples, gate_tags
    from pipelines.dataset import open_prepared
    from pipelines.evaluate import _settings
    from pipelines.gate import gate_decision, resolve_gate
    from pipelines.prepare import prepared_dir

    root, params = prepared_digits
    ds, ev = open_prepared(prepared_dir(root, params)), _settings(params)
    n = min(int(ev["num_samples"]), len(ds.load("test")[0]))
    out = {}
    for rung, images in build_rungs(ds.load("train"), ds.load("test"), n, seed=0).items():
        metrics, _ = evaluate_samples(images, ds, ev, root / "plots" / rung, root / "classifier")
        gate = resolve_gate(params["registry"], "vae")
        out[rung] = (metrics, gate_decision(gate_tags(metrics), None, gate))
    print("\nrung            " + "  ".join(f"{k:>14}" for k in SHOWN) + "  decision")
    for rung, (metrics, decision) in out.items():
        print(f"{rung:<16}" + "  ".join(f"{float(metrics[k]['value']):>14.4g}" for k in SHOWN)
              + f"  {decision['decision']}")
    return out


def test_the_shipped_params_are_the_gate_under_test():
    import yaml

    from tests.conftest import REPO

    registry = yaml.safe_load((REPO / "params.yaml").read_text())["registry"]
    assert tiny_params()["registry"] == registry  # TINY_SETS leave the gate as shipped


def test_test_images_pass_as_a_good_model(ladder):
    from pipelines.gate import rejection_text

    metrics, decision = ladder["good"]
    assert decision["decision"] == "promoted", rejection_text(decision)
    assert metrics["fid_ratio"]["value"] < 3 and metrics["copy_rate"]["value"] <= 0.05


@pytest.mark.parametrize("rung", [
    *CAUGHT_BY,
    pytest.param("blurred", marks=pytest.mark.xfail(strict=True, reason=(
        "measured on the 8x8 digits: blur sigma 1.5 px at 28 px is 0.43 px at 8 px and leaves fid_ratio ~3.6 "
        "(max 300), coverage ~0.40, recall 0.89, precision 0.98, class_coverage 1, copy_rate ~0.015: a better "
        "sample set than the families' default-trained 8x8 models (dcgan 10x, cvae 8.6x, vae 36x; only the "
        "conditional dcgan, 3.0x, is below it: benchmarks/gate_ladder.py --quick), so no limit on these metrics "
        "rejects it and accepts those models. On mnist5k the rung is rejected (fid_ratio ~598 > 300, coverage "
        "0.015, class_coverage 0.6, mode collapse)"))),
])
def test_every_bad_rung_is_rejected(ladder, rung):
    from pipelines.gate import rejection_text

    metrics, decision = ladder[rung]
    numbers = {k: round(float(metrics[k]["value"]), 4) for k in SHOWN}
    assert decision["decision"] == "rejected", f"{rung} promoted with {numbers}"
    failed = {c["metric"] for c in decision["checks"] if c["status"] == "failed"}
    if rung in CAUGHT_BY:
        assert CAUGHT_BY[rung] in failed, f"{rung}: {rejection_text(decision)}"


def test_memorization_is_what_rejects_the_replay(ladder):
    metrics, decision = ladder["replay"]
    failed = [c["metric"] for c in decision["checks"] if c["status"] == "failed"]
    assert failed == ["copy_rate"] and metrics["copy_rate"]["value"] == 1.0  # every other check passes it
    assert ladder["noise"][0]["copy_rate"]["value"] == 0.0
