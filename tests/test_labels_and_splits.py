"""Labels and class names (numeric folder order, `generate --label NAME`), splits that must not be empty,
IDX headers that lie, and temp folders a killed prepare left behind."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from contracts.errors import DataError
from contracts.io import atomic_dir, clean_stale_dirs
from pipelines.errors import ValidationFailed
from pipelines.prepare import prepare
from pipelines.sources import class_order, load_idx_dir
from pipelines.validate import validate
from tests.data_factories import idx_bytes, write_idx_set


# ---- class order -------------------------------------------------------------------------
@pytest.mark.parametrize("names, expected", [
    (["0", "1", "10", "11", "2", "9"], ["0", "1", "2", "9", "10", "11"]),
    (["1", "100", "2", "20"], ["1", "2", "20", "100"]),
    (["b", "a", "10", "2"], ["10", "2", "a", "b"]),      # not all integers: string order
    (["cat", "Dog", "ant"], ["Dog", "ant", "cat"]),
    (["1.5", "2", "10"], ["1.5", "10", "2"]),
    (["-1", "0", "1"], ["-1", "0", "1"]),                # "-1" is not a plain folder number: string order
])
def test_class_folders_are_in_numeric_order_only_when_every_name_is_an_integer(names, expected):
    assert class_order(names) == expected


def test_numeric_class_folders_get_numeric_labels_recorded_in_meta(tmp_path):
    for cls in range(12):
        d = tmp_path / "src" / str(cls)
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), cls * 20, np.uint8)).save(d / f"{i}.png")
    prepare({"data": {"source": f"folder:{tmp_path / 'src'}", "name": "twelve", "test_fraction": 0.34}}, tmp_path)
    out = tmp_path / "data" / "prepared" / "twelve"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == [str(c) for c in range(12)]
    with np.load(out / "train.npz") as z:
        for image, label in zip(z["images"], z["labels"]):
            assert image.max() == label * 20          # label k is folder "k"


# ---- generate --label NAME ---------------------------------------------------------------
@pytest.fixture(scope="module")
def named_model(tmp_path_factory):
    from serving.export import export_model
    from tests.test_serving import TinyConditional

    out = tmp_path_factory.mktemp("models") / "named"
    export_model(TinyConditional(), out)
    sampler = json.loads((out / "sampler.json").read_text())
    assert sampler["num_classes"] == 3
    sampler["class_names"] = ["1", "2", "cat"]           # folder names that are numbers, but not 0..2
    (out / "sampler.json").write_text(json.dumps(sampler))
    return out


@pytest.mark.parametrize("label, index", [("cat", 2), ("name:2", 1), ("name:1", 0), ("index:2", 2), ("0", 0),
                                          (2, 2), (" cat ", 2)])
def test_label_is_an_index_or_a_class_name(named_model, tmp_path, label, index):
    from serving.generator import generate

    out = generate(named_model, 3, 0, tmp_path / "g", batch_size=3, label=label)
    assert out["label"] == index and out["label_name"] == ["1", "2", "cat"][index]
    with np.load(tmp_path / "g" / "shards" / "shard-00000.npz") as z:
        assert z["labels"].tolist() == [index] * 3


@pytest.mark.parametrize("label, match", [
    ("2", r"label '2' is ambiguous: class '2' is index 1; say --label name:2 .* or --label index:2"),
    ("1", r"ambiguous"), ("dog", r"no class named 'dog'; classes: 1, 2, cat"),
    ("index:cat", "not an integer"), ("index:3", r"outside \[0, 3\)"), ("name:3", "no class named '3'"),
    (1.5, "integer or a class name"),
])
def test_bad_or_ambiguous_labels_are_refused_before_writing(named_model, tmp_path, label, match):
    from serving.generator import GenerationError, generate

    with pytest.raises(GenerationError, match=match):
        generate(named_model, 3, 0, tmp_path / "g", label=label)
    assert not (tmp_path / "g").exists()


def test_cli_label_option_takes_a_name(cli, project):
    proc = cli(["generate", "nothing-here/1", "-n", "2", "--label", "cat", "--out", "o"], project)
    assert proc.returncode == 1 and "not a valid integer" not in proc.stderr and proc.stderr.startswith("error:")


# ---- splits ------------------------------------------------------------------------------
def test_prepare_refuses_an_empty_test_split_in_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        prepare({"data": {"source": "digits", "name": "dtiny", "test_fraction": 0.001}}, tmp_path)
    line = str(err.value)
    assert line.startswith("digits: the test split would be empty (1797 train, 0 test images)")
    assert "data.test_fraction=0.001" in line and "raise it" in line and "\n" not in line
    assert not (tmp_path / "data" / "prepared" / "dtiny").exists()


def test_prepare_refuses_an_empty_train_split(tmp_path):
    with pytest.raises(DataError, match=r"the train split would be empty .*lower it"):
        prepare({"data": {"source": "digits", "name": "d", "test_fraction": 0.9999}}, tmp_path)


def test_idx_split_with_zero_images_names_the_file(tmp_path):
    src = write_idx_set(tmp_path / "idx", n_train=20, n_test=5)
    (src / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 8, 8), np.uint8)))
    (src / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: holds 0 images"):
        load_idx_dir(src)


def test_validate_fails_an_empty_split_in_one_line_and_writes_its_report(tmp_path):
    from contracts.io import sha256_file, write_npz_deterministic
    from pipelines.dataset import data_sha256

    prepare({"data": {"source": "digits", "name": "d"}}, tmp_path)
    out = tmp_path / "data" / "prepared" / "d"          # an empty test split, as an older prepare wrote it
    write_npz_deterministic(out / "test.npz", {"images": np.zeros((0, 1, 8, 8), np.uint8),
                                               "labels": np.zeros(0, np.int64)})
    meta = json.loads((out / "meta.json").read_text())
    meta["files"]["test.npz"] = sha256_file(out / "test.npz")
    meta["data_sha256"] = data_sha256(meta["files"])
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValidationFailed) as err:
        validate({"validation": {"min_test_samples": 0, "min_train_samples": 1}}, tmp_path, out)
    assert "test split_not_empty observed \"0 samples\"" in str(err.value) and "\n" not in str(err.value)
    report = json.loads((tmp_path / "reports" / "d" / "validation.json").read_text())
    assert not report["success"] and "test: split_not_empty" in report["failed"]


# ---- IDX headers -------------------------------------------------------------------------
def _idx_dir(tmp_path, name, **files):
    src = write_idx_set(tmp_path / name, n_train=20, n_test=10)
    for fname, data in files.items():
        (src / fname.replace("_", "-")).write_bytes(data)
    return src


@pytest.mark.parametrize("file, data, match", [
    # 4194304 * 2097152 * 2097152 = 2**64: a wrapping int64 product would make a 16-byte file "match"
    ("t10k_images_idx3_ubyte", struct.pack(">IIII", 2051, 4194304, 2097152, 2097152),
     r"t10k-images-idx3-ubyte: truncated IDX file: header says 4194304x2097152x2097152 = 18446744073709551632"),
    ("train_images_idx3_ubyte", b"\x1f\x8b\x08\x00" + bytes(40), r"wrong magic number .* gzip-compressed"),
    ("train_labels_idx1_ubyte", b"<!DOCTYPE html><html>nope</html>", r"train-labels-idx1-ubyte: wrong magic .*HTML"),
    ("t10k_images_idx3_ubyte", idx_bytes(np.zeros((10, 9, 9), np.uint8)), r"images are 9x9 but train's are 8x8"),
    ("t10k_images_idx3_ubyte", struct.pack(">IIII", 2051, 10, 0, 8), "zero-sized image dimension"),
    ("t10k_labels_idx1_ubyte", b"\x00\x00", r"too short for a header"),
])
def test_odd_idx_headers_give_one_line_naming_the_file(tmp_path, file, data, match):
    src = _idx_dir(tmp_path, "bad", **{file: data})
    with pytest.raises(DataError, match=match) as err:
        prepare({"data": {"source": f"idx:{src}", "name": "bad"}}, tmp_path)
    assert str(err.value).startswith(str(src)) and "\n" not in str(err.value)
    assert not (tmp_path / "data" / "prepared" / "bad").exists()


# ---- leftovers of a killed prepare -------------------------------------------------------
def test_stale_temp_folders_of_dead_processes_are_cleaned_by_the_next_run(tmp_path):
    final = tmp_path / "prepared" / "big"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [final.with_name(f".big.tmp-{dead_pid}-abc"), final.with_name(".big.tmp-k3j2h1"),
             final.with_name(f".big.old-{dead_pid}")]
    live = final.with_name(f".big.tmp-{os.getppid()}-xyz")   # a running process's: left alone
    for d in (*stale, live):
        d.mkdir(parents=True)
        (d / "train.npz").write_bytes(b"partial")
    with atomic_dir(final) as tmp:
        assert tmp.name.startswith(f".big.tmp-{os.getpid()}-")
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in final.parent.iterdir()) == sorted(["big", live.name])
    assert clean_stale_dirs(final) == []


def test_a_kill_between_the_renames_restores_the_previous_folder(tmp_path):
    final = tmp_path / "prepared" / "big"
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True).stdout)
    old = final.with_name(f".big.old-{dead_pid}")
    old.mkdir(parents=True)
    (old / "meta.json").write_text('{"v": 1}')
    assert clean_stale_dirs(final) == [] and (final / "meta.json").read_text() == '{"v": 1}'
