"""The memorization metric (evaluation/suite/copy_rate.py): the nearest-neighbour distances against a direct
computation, and copy_rate on the 8x8 digits for replayed training images, held-out test images and noise."""
import numpy as np
import pytest

from contracts.errors import ConfigError
from evaluation.suite.copy_rate import copy_rate, nearest_distances
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _direct(query, reference):
    q, r = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (query, reference))
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)).min(1)


@pytest.mark.parametrize("blocks", [(None, None), (1, 1), (7, 13), (64, 1000), (1000, 3)])
def test_chunked_nearest_distances_equal_the_direct_computation(blocks):
    rng = np.random.default_rng(0)
    ref, query = rng.random((300, 1, 4, 5)), rng.random((90, 1, 4, 5)).astype(np.float32)
    got = nearest_distances(query, ref, *blocks)
    assert got.dtype == np.float64 and got.shape == (90,)
    assert np.allclose(got, _direct(query, ref), rtol=0, atol=1e-12)
    assert np.array_equal(got, nearest_distances(query, ref))  # the block sizes do not change a bit


def test_exact_copies_are_at_exactly_zero_and_the_reference_may_come_in_blocks():
    rng = np.random.default_rng(1)
    ref = rng.random((50, 30)) * 100  # large norms: |a|^2 + |b|^2 - 2ab alone would leave rounding noise
    assert np.array_equal(nearest_distances(ref[[3, 7, 7]], ref, 2, 9), np.zeros(3))

    class Blocks:
        n = len(ref)

        def __call__(self, start, stop):
            return ref[start:stop]

    query = rng.random((20, 30)) * 100
    assert np.array_equal(nearest_distances(query, Blocks(), 5, 8), nearest_distances(query, ref, 5, 8))
    with pytest.raises(ValueError, match="query rows have 30 values, reference rows 29"):
        nearest_distances(query, ref[:, :29])
    with pytest.raises(ValueError, match="empty"):
        nearest_distances(query, ref[:0])


def test_copy_rate_by_hand():
    test_nn = np.arange(1.0, 101.0)  # the 1st percentile (linear rule): 1 + 0.99 = 1.99
    out = copy_rate(np.array([0.0, 1.99, 2.0, 50.0]), test_nn, 1)
    assert out == {"copy_rate": 0.5, "copy_threshold": pytest.approx(1.99), "copy_median_distance": 1.995}
    assert copy_rate(test_nn, test_nn, 1)["copy_rate"] == 0.01 and copy_rate(test_nn, test_nn, 50)["copy_rate"] == 0.5


@pytest.fixture(scope="module")
def digits(prepared_digits):
    from pipelines.dataset import open_prepared
    from pipelines.evaluate import _settings
    from pipelines.prepare import prepared_dir

    root, params = prepared_digits
    return open_prepared(prepared_dir(root, params)), _settings(params), root


def _copy_metrics(digits, images, **copy_settings):
    from evaluation.ladder import evaluate_samples

    ds, ev, root = digits
    ev = {**ev, "metrics": ["copy_rate"], "copy_rate": {**ev["copy_rate"], **copy_settings}}
    metrics, skipped = evaluate_samples(images, ds, ev, root / "plots", root / "clf")
    assert skipped == {} and not (root / "clf").exists()  # no domain classifier: pixels only
    return metrics


def test_replay_copies_everything_test_images_one_percent_noise_nothing(digits):
    from evaluation.ladder import build_rungs
    from evaluation.suite.base import to_model_input

    ds, ev, _ = digits
    (train_x, _), (test_x, _) = ds.load("train"), ds.load("test")
    n = min(ev["num_samples"], len(test_x))
    rungs = build_rungs(ds.load("train"), ds.load("test"), n)
    replay = _copy_metrics(digits, rungs["replay"])
    assert replay["copy_rate"]["value"] == 1.0
    assert replay["copy_median_distance"]["value"] < 0.5 * replay["copy_threshold"]["value"]
    exact = _copy_metrics(digits, to_model_input(train_x[:n]))
    assert exact["copy_rate"]["value"] == 1.0 and exact["copy_median_distance"]["value"] == 0.0
    # the reference test images themselves: the share at or below their own 1st percentile
    own = _copy_metrics(digits, to_model_input(test_x[:n]))
    assert own["copy_rate"]["value"] == pytest.approx(0.01, abs=1 / n)
    assert _copy_metrics(digits, to_model_input(test_x[:n]), percentile=50)["copy_rate"]["value"] == 0.5
    assert _copy_metrics(digits, rungs["good"])["copy_rate"]["value"] <= 0.05  # other held-out images: ~1% too
    noise = _copy_metrics(digits, rungs["noise"])
    assert noise["copy_rate"]["value"] == 0.0
    assert noise["copy_median_distance"]["value"] > 3 * noise["copy_threshold"]["value"]
    assert noise["copy_threshold"]["value"] == replay["copy_threshold"]["value"] > 0  # the same test reference
    setting = replay["copy_rate"]["setting"]
    assert setting["percentile"] == 1.0 and setting["n_test"] == n and setting["n_train"] == len(train_x)
    assert setting["features"].startswith("pixels in [0, 1], L2") and setting["dataset"] == "digits"
    again = _copy_metrics(digits, rungs["replay"])
    assert {k: v["value"] for k, v in again.items()} == {k: v["value"] for k, v in replay.items()}


@pytest.mark.parametrize("value", [0, 100, -1, 150, "1", True, None])
def test_the_percentile_must_lie_in_0_100(digits, value):
    from evaluation.ladder import FixedSamples
    from evaluation.suite import EvalContext
    from pipelines.evaluate import plan_metrics

    ds, ev, root = digits
    ev = {**ev, "copy_rate": {"percentile": value}}
    ctx = EvalContext(FixedSamples(np.zeros((1, 1, 8, 8), np.float32), 10), ds, ev, "cpu", root, root / "clf")
    with pytest.raises(ConfigError) as err:
        plan_metrics(ctx, ["copy_rate"])
    assert str(err.value).startswith(f"evaluation.copy_rate.percentile: expected a number in (0, 100), got {value!r}")


@pytest.mark.parametrize("item, message", [
    ("evaluation.copy_rate.percentile=0", "evaluation.copy_rate.percentile: expected a number in (0, 100), got 0"),
    ("evaluation.copy_rate.percentile=100", "evaluation.copy_rate.percentile: expected a number in (0, 100), got 100"),
    ("evaluation.copy_rate.percentil=5", "evaluation.copy_rate.percentil: unknown setting; did you mean 'percentile'?"),
    ("registry.max_copy_rate=1.5", "registry.max_copy_rate: expected a number in [0, 1], got 1.5"),
])
def test_bad_copy_rate_settings_are_refused_when_params_load(item, message):
    from pipelines.settings import validate_settings

    with pytest.raises(ConfigError) as err:
        validate_settings(tiny_params(item))
    assert str(err.value).startswith(message)


def test_the_gate_rejects_a_copying_model_by_default():
    from pipelines.gate import gate_decision, resolve_gate

    checks = {c["metric"]: c for c in resolve_gate({})["checks"]}
    assert checks["copy_rate"] == {"metric": "copy_rate", "max": 0.1, "required": False}
    assert resolve_gate({"max_copy_rate": 0.3})["checks"][4] == {"metric": "copy_rate", "max": 0.3, "required": False}
    tags = {"validated": "true", "parity_max_abs_error": "0", "metric.fid_ratio": "2", "metric.coverage": "0.5",
            "metric.class_coverage": "1", "metric.mode_collapse": "0"}
    decision = gate_decision({**tags, "metric.copy_rate": "1.0"}, None, {})
    assert decision["decision"] == "rejected"
    assert "failed: copy_rate <= 0.1 (observed 1.0, limit 0.1)" in decision["reasons"]
    assert gate_decision({**tags, "metric.copy_rate": "0.01"}, None, {})["promoted"]
    # a version registered before copy_rate existed stays promotable: the check is skipped and says why
    old = gate_decision(tags, None, {})
    assert old["promoted"] and "skipped: copy_rate <= 0.1 (copy_rate missing (required: false))" in old["reasons"]
    strict = {"checks": [{"metric": "copy_rate", "max": 0.1, "required": True}]}  # a gate that insists on it
    assert not gate_decision(tags, None, strict)["promoted"]
