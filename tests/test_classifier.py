"""evaluation.classifier and evaluation.inception: training, determinism, features, the cache,
collapse detection with a real classifier's features, and InceptionV3 shapes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from evaluation import classifier as clf
from evaluation import metrics


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's bundled 8x8 digits as uint8 N x 1 x 8 x 8, a fixed 1400 / 397 split."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    tr, te = order[:1400], order[1400:]
    return images[tr], labels[tr], images[te], labels[te]


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    x_tr, y_tr, x_te, y_te = digits
    cache = tmp_path_factory.mktemp("clf-cache")
    model, info = clf.load_or_train_classifier(
        cache, "ab" * 32, x_tr, y_tr, 10, test_images=x_te, test_labels=y_te, seed=0, epochs=5
    )
    return cache, model, info


def test_classifier_learns_digits_and_reports_accuracy(trained, digits):
    _, model, info = trained
    _, _, x_te, y_te = digits
    assert info["cached"] is False
    assert info["test_accuracy"] >= 0.93
    assert info["test_accuracy"] == clf.accuracy(model, x_te, y_te)
    assert info["n_train"] == 1400 and info["n_test"] == len(y_te)
    assert info["train_settings"]["epochs"] == 5 and info["train_settings"]["seed"] == 0


def test_cache_reloads_same_model_with_weights_only(trained, digits):
    cache, model, info = trained
    _, _, x_te, _ = digits
    folder = cache / ("ab" * 32)
    meta = json.loads((folder / clf.CONFIG_FILE).read_text())
    assert meta["data_sha256"] == "ab" * 32 and meta["test_accuracy"] == info["test_accuracy"]
    state = torch.load(folder / clf.WEIGHTS_FILE, weights_only=True)
    assert set(state) == set(model.state_dict())
    # a cache hit needs no training data and gives bit-identical features
    again, info2 = clf.load_or_train_classifier(cache, "ab" * 32, seed=0, epochs=5)
    assert info2["cached"] is True and info2["test_accuracy"] == info["test_accuracy"]
    np.testing.assert_array_equal(clf.features(again, x_te), clf.features(model, x_te))
    # another data version is not served from this entry
    with pytest.raises(FileNotFoundError):
        clf.load_or_train_classifier(cache, "cd" * 32, seed=0, epochs=5)
    with pytest.raises(ValueError):
        clf.load_or_train_classifier(cache, "../escape", seed=0, epochs=5)


def test_cache_retrains_when_settings_differ(digits, tmp_path):
    x_tr, y_tr, _, _ = digits
    small = dict(train_images=x_tr[:200], train_labels=y_tr[:200], num_classes=10, seed=0)
    _, first = clf.load_or_train_classifier(tmp_path, "ef" * 32, epochs=1, **small)
    _, hit = clf.load_or_train_classifier(tmp_path, "ef" * 32, epochs=1, **small)
    _, other = clf.load_or_train_classifier(tmp_path, "ef" * 32, epochs=2, **small)
    assert (first["cached"], hit["cached"], other["cached"]) == (False, True, False)
    # corrupted weights are detected by the recorded sha256 and retrained
    (tmp_path / ("ef" * 32) / clf.WEIGHTS_FILE).write_bytes(b"garbage")
    _, redo = clf.load_or_train_classifier(tmp_path, "ef" * 32, epochs=2, **small)
    assert redo["cached"] is False
    (tmp_path / ("ef" * 32) / clf.WEIGHTS_FILE).unlink()  # a JSON without its weights
    _, again = clf.load_or_train_classifier(tmp_path, "ef" * 32, epochs=2, **small)
    assert again["cached"] is False


def test_training_is_deterministic_and_leaves_global_rng_alone(digits):
    x_tr, y_tr, _, _ = digits
    rng_before = torch.get_rng_state()
    a, _ = clf.train_classifier(x_tr[:256], y_tr[:256], 10, seed=3, epochs=1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b, _ = clf.train_classifier(x_tr[:256], y_tr[:256], 10, seed=3, epochs=1)
    c, _ = clf.train_classifier(x_tr[:256], y_tr[:256], 10, seed=4, epochs=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (5, 3, 28, 28), (5, 3, 8, 8), (5, 1, 8, 8)])
def test_features_and_predictions_shapes(shape):
    model = clf.DomainClassifier(shape[1], 7, shape[2:], feature_dim=32)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    feats = clf.features(model, images, batch_size=2)
    assert feats.shape == (5, 32) and feats.dtype == np.float64
    pred = clf.predict(model, images)
    assert pred.shape == (5,) and pred.dtype == np.int64 and pred.max() < 7
    # uint8 and the same images as float [0, 1] meet the network identically
    np.testing.assert_allclose(clf.features(model, images.astype(np.float32) / 255.0), feats, atol=1e-6)
    with pytest.raises(ValueError):
        clf.features(model, np.zeros((2, shape[1], 16, 16), np.uint8))


def test_collapse_detection_with_classifier_features(trained, digits):
    _, model, _ = trained
    x_tr, y_tr, x_te, y_te = digits
    real = clf.features(model, x_tr)

    def evaluate(images):
        feats, logits = clf.extract(model, images)
        return metrics.generation_metrics(
            real, feats, real_labels=y_tr, fake_pred_labels=logits.argmax(1), num_classes=10,
            kid_subsets=10, kid_subset_size=300, coverage_threshold=0.9, kl_threshold=0.5, recall_threshold=0.2,
        )

    realistic = evaluate(x_te)  # held-out real digits
    assert realistic["mode_collapse"] is False, realistic["mode_collapse_reasons"]
    assert realistic["recall"] > 0.5 and realistic["class_coverage"] == 1.0

    repeated = evaluate(np.repeat(x_te[:1], 400, axis=0))
    assert repeated["mode_collapse"] is True
    assert repeated["recall"] < 0.01 and repeated["coverage"] < 0.02
    assert repeated["class_coverage"] == pytest.approx(0.1)
    assert repeated["fid"] > 10 * realistic["fid"]

    single = evaluate(np.concatenate([x_tr[y_tr == 4], x_te[y_te == 4]]))
    assert single["mode_collapse"] is True
    assert single["recall"] < 0.15 and single["coverage"] < 0.15
    assert single["class_coverage"] <= 0.2 and single["class_kl"] > 1.5


# ----------------------------------------------------------------------------------- inception


def test_inception_features_from_local_state_dict(tmp_path):
    from torchvision.models import inception_v3

    from evaluation.inception import INCEPTION_FEATURE_DIM, InceptionFeatures

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("AuxLogits.")}  # aux is optional
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    extractor = InceptionFeatures(path, batch_size=2, num_threads=1)
    gray = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    feats = extractor(gray)
    assert feats.shape == (3, INCEPTION_FEATURE_DIM) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and (feats >= 0).all()  # pool3 follows a ReLU
    # 3-channel float input; grayscale tiling: a 1-channel image equals its 3-channel copy
    rgb = np.repeat(gray[:1], 3, axis=1).astype(np.float32) / 255.0
    np.testing.assert_allclose(extractor(rgb), feats[:1], rtol=1e-4, atol=1e-5)


def test_inception_missing_or_wrong_weights(tmp_path):
    from evaluation.inception import InceptionFeatures

    missing = tmp_path / "nope" / "inception.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        InceptionFeatures(missing)
    wrong = tmp_path / "wrong.pth"
    torch.save(clf.DomainClassifier().state_dict(), wrong)
    with pytest.raises(ValueError, match="not an Inception3 state dict"):
        InceptionFeatures(wrong)
