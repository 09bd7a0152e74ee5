"""Metrics at the edges (issue #12 kind 3): PRDC with duplicates and ties (the convention in
evaluation/prdc.py), constant features, FID on rank-deficient and identical sets, sample counts at or below
nearest_k, empty anomaly sets and held-out classes: the right value, or one ConfigError naming the setting
before any classifier or sample is made."""
import contextlib
import io
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg

from contracts.errors import ConfigError
from evaluation import metrics
from evaluation.suite.base import NEAREST_K, EvalContext
from pipelines.evaluate import plan_metrics

ONES = {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
ZEROS = {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def _convention(real, fake, k):
    """The tie convention written out point by point with exact distances and fractions (independent of
    evaluation/prdc.py): a ball holds k reference points, tied boundary points share the places left."""
    def d(a, b):
        return float(np.sqrt(((np.asarray(a, float) - np.asarray(b, float)) ** 2).sum()))

    def ball(x, i):
        dist = sorted(d(x[i], y) for y in x)  # the point itself first, at 0
        r = dist[k]
        inside = sum(v < r for v in dist)
        on = sum(v == r for v in dist)
        return r, Fraction(k - inside, on) if inside < k else Fraction(0)

    rb = [ball(real, i) for i in range(len(real))]
    fb = [ball(fake, j) for j in range(len(fake))]

    def weight(dist, r, share):
        return Fraction(1) if dist < r else share if dist == r else Fraction(0)

    places = [sum(weight(d(x, y), *rb[i]) for i, x in enumerate(real)) for y in fake]
    recall = [any(weight(d(x, y), *fb[j]) > 0 for j, y in enumerate(fake)) for x in real]
    coverage = [weight(min(d(x, y) for y in fake), *rb[i]) > 0 for i, x in enumerate(real)]
    return {"precision": float(np.mean([p > 0 for p in places])), "recall": float(np.mean(recall)),
            "density": float(sum(places) / (k * len(fake))), "coverage": float(np.mean(coverage))}


# ------------------------------------------------------------------------------------ PRDC duplicates


def test_exact_copy_with_duplicates_scores_one():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 16))
    real = np.repeat(base, 6, axis=0)  # >= k+1 copies: every k-NN radius is 0
    assert metrics.prdc(real, real.copy(), 5) == ONES
    mixed = np.concatenate([rng.standard_normal((200, 16)), np.repeat(rng.standard_normal((10, 16)), 10, axis=0)])
    assert metrics.prdc(mixed, mixed[::-1].copy(), 5) == pytest.approx(ONES, abs=1e-12)
    # copies of 3 points, fewer than k+1 each (radius > 0): still a perfect score
    few = np.repeat(rng.standard_normal((6, 4)), 3, axis=0)
    assert metrics.prdc(few, few.copy(), 5) == pytest.approx(ONES, abs=1e-12)


def test_exact_copy_with_duplicates_is_not_mode_collapse():
    rng = np.random.default_rng(1)
    real = np.repeat(rng.standard_normal((20, 16)), 6, axis=0)
    labels = np.repeat(np.arange(20) % 4, 6)
    g = metrics.generation_metrics(real, real.copy(), real_labels=labels, fake_pred_labels=labels, num_classes=4,
                                   kid_subsets=2, kid_subset_size=50)
    assert (g["precision"], g["recall"], g["density"], g["coverage"]) == (1.0, 1.0, 1.0, 1.0)
    assert g["mode_collapse"] is False and g["mode_collapse_reasons"] == []


def test_all_identical_points_and_constant_features():
    one = np.ones((10, 8))
    assert metrics.prdc(one, one.copy(), 5) == ONES
    assert metrics.prdc(one, one + 1.0, 5) == ZEROS  # a different constant: nowhere near
    # a constant feature column changes no distance, so no value
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) + 0.2
    const = lambda x: np.hstack([x, np.full((len(x), 3), 7.0)])  # noqa: E731
    assert metrics.prdc(const(real), const(fake), 5) == pytest.approx(metrics.prdc(real, fake, 5), abs=1e-12)
    assert metrics.fid(one, one.copy()) == 0.0
    assert metrics.fid(one, one + 1.0) == pytest.approx(8.0)  # |mu1 - mu2|^2, both covariances 0
    assert np.isfinite(metrics.kid(one, one.copy(), n_subsets=2, subset_size=5)[0])


def test_duplicate_radius_zero_by_hand():
    """k=2: real = 4 copies of 0 (radius 0, each copy takes 2/4 of a place); fake = 0 and three 5s."""
    real = np.zeros((4, 1))
    fake = np.array([[0.0], [5.0], [5.0], [5.0]])
    # precision 1/4 (only the 0 lies in a real ball); density: the 0 takes 4 x 1/2 places / k = 1, mean 1/4;
    # recall 1 (the fake 0's ball reaches the 5s: radius 5); coverage 1 (nearest fake at 0 = the radius)
    expected = {"precision": 0.25, "recall": 1.0, "density": 0.25, "coverage": 1.0}
    assert metrics.prdc(real, fake, 2) == expected == _convention(real, fake, 2)
    prdc_pkg = pytest.importorskip("prdc")
    with contextlib.redirect_stdout(io.StringIO()):
        pkg = prdc_pkg.compute_prdc(real_features=real, fake_features=fake, nearest_k=2)
    assert float(pkg["precision"]) == 0.0 and float(pkg["coverage"]) == 0.0  # the strict '<' the package has


def test_equidistant_ties_share_places_by_hand():
    """The points 0..4 on a line, k=2: the middle points' 2nd neighbour is tied (two at distance 1), so
    each gets half a place; every ball holds exactly k points and an exact copy has density 1 (the strict
    '<' of the prdc package gives 0.7 here; a plain '<=' would give 1.5)."""
    real = np.arange(5.0)[:, None]
    assert metrics.prdc(real, real.copy(), 2) == ONES == _convention(real, real.copy(), 2)
    shifted = real + 0.5
    assert metrics.prdc(real, shifted, 2) == pytest.approx(_convention(real, shifted, 2), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_random_small_integer_sets_follow_the_convention(seed):
    """Integer features make duplicates and equidistant ties common; every chunking gives the values the
    convention gives point by point."""
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 3, (40, 2)).astype(float)
    fake = rng.integers(0, 4, (30, 2)).astype(float)
    expected = _convention(real, fake, 3)
    for chunk_bytes in (1, 2000, 1 << 28):
        assert metrics.prdc(real, fake, 3, chunk_bytes=chunk_bytes) == pytest.approx(expected, abs=1e-12)


def test_duplicates_across_dtypes_and_signed_zero():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((12, 8)).astype(np.float32)
    real = np.repeat(base, 6, axis=0)
    assert metrics.prdc(real, real.astype(np.float64), 5) == ONES
    z = np.zeros((6, 3))
    assert metrics.prdc(z, -z, 5) == ONES  # -0.0 is 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_ties_the_prdc_package_values_stand(dtype):
    prdc_pkg = pytest.importorskip("prdc")
    rng = np.random.default_rng(6)
    real = rng.standard_normal((300, 24)).astype(dtype)
    fake = (rng.standard_normal((250, 24)) * 1.2).astype(dtype)
    with contextlib.redirect_stdout(io.StringIO()):
        expected = prdc_pkg.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    assert metrics.prdc(real, fake, 5) == {k: float(v) for k, v in expected.items()}


@pytest.mark.parametrize("n_real, n_fake", [(5, 10), (10, 5), (0, 10)])
def test_prdc_needs_more_than_k_points(n_real, n_fake):
    with pytest.raises(ValueError, match="need at least nearest_k \\+ 1 = 6"):
        metrics.prdc(np.zeros((n_real, 2)), np.ones((n_fake, 2)), 5)


def test_prdc_rejects_nan():
    x = np.zeros((8, 2))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.prdc(x, np.zeros((8, 2)), 5)


# ---------------------------------------------------------------------------------- FID at the edges


def _exact_fid(x, y):
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_fid_rank_deficient_equals_the_exact_value_in_the_subspace():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((64, 64)))[0][:, :5]  # 30 points in a 5-dim subspace of R^64
    a, b = rng.standard_normal((30, 5)), 1.5 * rng.standard_normal((30, 5)) + 0.3
    assert metrics.fid(a @ basis.T, b @ basis.T) == pytest.approx(_exact_fid(a, b), rel=1e-6)
    c = np.repeat(rng.standard_normal((3, 5)), 10, axis=0)  # collapsed: 3 points, rank 2
    got = metrics.fid(a @ basis.T, c @ basis.T)
    assert np.isfinite(got) and got == pytest.approx(_exact_fid(a, c + 1e-12 * rng.standard_normal(c.shape)),
                                                     rel=1e-5)


@pytest.mark.parametrize("n, d, scale, dtype", [(2, 2048, 1.0, np.float64), (10, 2048, 1.0, np.float64),
                                                 (50, 512, 1e3, np.float32)])
def test_fid_of_a_set_with_itself_is_zero_never_negative(n, d, scale, dtype):
    x = (scale * np.abs(np.random.default_rng(1).standard_normal((n, d)))).astype(dtype)
    v = metrics.fid(x, x.copy())
    trace = max(1.0, float(np.trace(metrics.feature_stats(x)[1])))
    assert isinstance(v, float) and 0.0 <= v <= 1e-9 * trace
    near = metrics.fid(x, x + 1e-3 * scale)  # a shifted copy: the squared shift of the mean, up to rounding
    assert near > 0 and abs(near - d * (1e-3 * scale) ** 2) <= 1e-7 * trace


# ------------------------------------------------------------- evaluate: checks before any expensive work


class _Data:
    def __init__(self, train_y, test_y, class_names=None, shape=(1, 8, 8)):
        self.name, self.sha256, self.shape = "tiny", "0" * 64, shape
        self.num_classes = int(max(train_y.max(), test_y.max())) + 1
        self.meta = {"class_names": class_names or [str(c) for c in range(self.num_classes)]}
        self.splits = {"train": train_y, "test": test_y}

    def load(self, split):
        y = self.splits[split]
        return np.zeros((len(y), *self.shape), np.uint8), y


class _Model:
    """Fails the test if anything expensive (sampling, scoring) runs."""
    capabilities = frozenset({"score", "nll"})
    config = SimpleNamespace(data=SimpleNamespace(modality="image"), num_classes=3)

    def sample(self, *a, **k):
        raise AssertionError("sampled before the checks")

    score = nll = sample


class _Context(EvalContext):
    @property
    def classifier(self):
        pytest.fail("trained the classifier before the checks")


def _ctx(tmp_path, train_y, test_y, holdout=(), shape=(1, 8, 8), **settings):
    from pipelines.evaluate import _settings

    ev = _settings({"evaluation": settings})
    data = _Data(np.asarray(train_y), np.asarray(test_y), shape=shape)
    return _Context(_Model(), data, ev, "cpu", tmp_path / "plots",
                    tmp_path / "clf", list(holdout))


def _plan_error(ctx, names):
    with pytest.raises(ConfigError) as exc:
        plan_metrics(ctx, names)
    return str(exc.value)


@pytest.mark.parametrize("num_samples, n_test", [(5, 100), (100, 5), (6, 4)])
def test_too_few_samples_for_nearest_k(tmp_path, num_samples, n_test):
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.arange(n_test) % 3, num_samples=num_samples)
    n = min(num_samples, n_test)
    for name in ("fid", "kid", "prdc", "class_coverage", "mode_collapse"):
        assert _plan_error(ctx, [name]) == (
            f"evaluation.num_samples: {num_samples} capped at the test split's {n_test} images leaves {n} samples; "
            f"PRDC (nearest_k = {NEAREST_K}) needs at least {NEAREST_K + 1}")
    assert [n for n, _ in plan_metrics(ctx, ["nll"])[0]] == ["nll"]  # metrics that need no k-NN still run


def test_enough_samples_pass_the_checks(tmp_path):
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.arange(6) % 3, num_samples=6)
    runnable, skipped = plan_metrics(ctx, ["fid", "prdc", "anomaly"])
    assert [n for n, _ in runnable] == ["fid", "prdc", "anomaly"] and skipped == {}


@pytest.mark.parametrize("shape", [(1, 7, 9), (3, 8, 4), (4, 8, 8), (2, 16, 16)])
def test_images_the_domain_classifier_cannot_take(tmp_path, shape):
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.arange(40) % 3, shape=shape)
    for name in ("fid", "prdc", "classifier_accuracy"):
        assert _plan_error(ctx, [name]) == (
            f"evaluation.metrics: {name} needs the domain classifier, which takes images of 1 or 3 channels and at "
            f"least 8x8 pixels; tiny's images are {'x'.join(map(str, shape))}: leave {name} out of evaluation.metrics")
    assert [n for n, _ in plan_metrics(ctx, ["nll", "anomaly"])[0]] == ["nll", "anomaly"]


def test_tiny_train_split_is_refused(tmp_path):
    ctx = _ctx(tmp_path, np.arange(5) % 3, np.arange(50) % 3, num_samples=50)
    assert _plan_error(ctx, ["prdc"]).startswith("evaluation.metrics: the train split of tiny has 5 images")


def test_holdout_class_without_test_images(tmp_path):
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.arange(40) % 2, holdout=[2])  # no class 2 in the test split
    assert _plan_error(ctx, ["anomaly"]) == ("train.holdout_classes: class 2 ('2') has 0 images in the test split "
                                             "of tiny (40 images): the held-out-class anomaly set would be empty")


def test_anomaly_sets_that_would_be_empty(tmp_path):
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.arange(40) % 3, anomaly={"kinds": []})
    assert _plan_error(ctx, ["anomaly"]).startswith("evaluation.anomaly.kinds: is empty and train.holdout_classes "
                                                    "is empty: no anomaly set to score")
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.array([0, 1, 1, 2, 2, 2, 1]), holdout=[1, 2])
    assert _plan_error(ctx, ["anomaly"]) == ("train.holdout_classes: the test split of tiny has 1 image(s) outside "
                                             "the held-out classes; anomaly needs at least 2 (half set the "
                                             "threshold, half measure it)")
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.arange(40) % 3, anomaly={"kinds": ["blur"]})
    assert _plan_error(ctx, ["anomaly"]).startswith("evaluation.anomaly.kinds: unknown corruption 'blur'")
    # held-out classes alone are an anomaly set
    ctx = _ctx(tmp_path, np.arange(60) % 3, np.arange(40) % 3, holdout=[2], anomaly={"kinds": []})
    assert [n for n, _ in plan_metrics(ctx, ["anomaly"])[0]] == ["anomaly"]


def test_settings_refuse_unknown_corruptions_and_foreign_holdout_classes():
    from pipelines.settings import validate_settings

    with pytest.raises(ConfigError, match=r"evaluation.anomaly.kinds\[1\]: unknown corruption 'noize'"
                                          r"; did you mean 'noise'\? \(known: inversion, noise, occlusion\)$"):
        validate_settings({"evaluation": {"anomaly": {"kinds": ["inversion", "noize"]}}})
    meta = {"num_classes": 3, "counts": {"train": 100, "test": 30}}
    for holdout, problem in (([3], "[3] outside the data's classes 0..2"), ([-1], "expected an integer >= 0")):
        with pytest.raises(ConfigError, match="train.holdout_classes") as exc:
            validate_settings({"train": {"holdout_classes": holdout}}, meta=meta)
        assert problem in str(exc.value)
