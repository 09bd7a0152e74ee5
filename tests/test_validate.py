import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import ValidationFailed
from pipelines.prepare import prepare
from pipelines.validate import require_validated, validate
from tests.data_factories import write_image_folder

SMALL = {"min_train_samples": 10, "min_test_samples": 3, "min_class_share": 0.05, "max_leaked_images": 0,
         "pixel_min": 0, "pixel_max": 255}


def _split_folder(root, leak=False, drop_test_class=None):
    write_image_folder(root / "train", classes=3, per_class=10, seed=1)
    write_image_folder(root / "test", classes=3, per_class=4, seed=2)
    if leak:
        shutil.copy(root / "train" / "class_0" / "000.png", root / "test" / "class_0" / "leak.png")
    if drop_test_class is not None:
        for f in (root / "test" / f"class_{drop_test_class}").iterdir():
            f.unlink()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "test" / f"class_{drop_test_class}" / "x.png")
    return root


def test_mnist5k_passes_and_report_lists_every_check(cli, project):
    assert cli(["stage", "prepare"], project).returncode == 0
    proc = cli(["stage", "validate"], project)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((project / "reports" / "mnist5k" / "validation.json").read_text())
    assert report["success"] and report["leaked_images"] == 0
    names = {c["name"] for c in report["checks"]}
    assert {"dtype_matches_meta", "shape_matches_meta", "expect_column_values_to_be_between",
            "expect_column_sum_to_be_between", "expect_table_row_count_to_be_between",
            "expect_column_distinct_values_to_contain_set"} <= names
    assert set(report["great_expectations"]) == {"train", "test", "both"}
    assert require_validated(project, project / "data" / "prepared" / "mnist5k").sha256 == report["data_sha256"]


def test_leakage_between_train_and_test_fails_with_a_listed_expectation(cli, project):
    src = _split_folder(project / "src", leak=True)
    sets = ["--set", f"data.source=folder:{src}", "--set", "data.name=leaky"]
    sets += [arg for k, v in SMALL.items() for arg in ("--set", f"validation.{k}={v}")]
    assert cli(["stage", "prepare", *sets], project).returncode == 0
    proc = cli(["stage", "validate", *sets], project)
    assert proc.returncode != 0
    assert "validation failed" in proc.stderr and "expect_column_sum_to_be_between(leaked)" in proc.stderr
    report = json.loads((project / "reports" / "leaky" / "validation.json").read_text())
    assert report["success"] is False and report["leaked_images"] == 1
    with pytest.raises(ValidationFailed, match="latest validation failed"):
        require_validated(project, project / "data" / "prepared" / "leaky")


def test_thresholds_come_from_params(project):
    src = _split_folder(project / "src")
    params = {"data": {"source": f"folder:{src}", "name": "small"}, "validation": dict(SMALL)}
    prepare(params, project)
    validate(params, project, project / "data" / "prepared" / "small")
    params["validation"]["min_train_samples"] = 1000
    with pytest.raises(ValidationFailed, match=r"train expect_table_row_count_to_be_between observed \{\"observed_value\": 30\}"):
        validate(params, project, project / "data" / "prepared" / "small")


def test_class_share_below_minimum_fails(project):
    src = _split_folder(project / "src", drop_test_class=2)
    params = {"data": {"source": f"folder:{src}", "name": "skewed"}, "validation": {**SMALL, "min_class_share": 0.2}}
    prepare(params, project)
    with pytest.raises(ValidationFailed, match="both expect_column_values_to_be_between\\(share\\)"):
        validate(params, project, project / "data" / "prepared" / "skewed")


def test_tampered_file_and_stale_report_are_refused(project):
    src = _split_folder(project / "src")
    params = {"data": {"source": f"folder:{src}", "name": "t"}, "validation": dict(SMALL)}
    prepare(params, project)
    out = project / "data" / "prepared" / "t"
    with pytest.raises(ValidationFailed, match="no validation report"):
        require_validated(project, out)
    validate(params, project, out)
    # a float array that still claims uint8 in meta.json: dtype, NaN and hash checks all catch it
    with np.load(out / "test.npz") as npz:
        images, labels = npz["images"].astype(np.float32), npz["labels"]
    images[0, 0, 0, 0] = np.nan
    np.savez(out / "test.npz", images=images, labels=labels)
    with pytest.raises(ValidationFailed) as info:
        validate(params, project, out)
    for name in ("file_sha256_matches_meta", "dtype_matches_meta", "no_nan_pixels", "expect_column_values_to_not_be_null"):
        assert name in str(info.value)
    meta = json.loads((out / "meta.json").read_text())
    meta["data_sha256"] = "0" * 64
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValidationFailed, match="the report is for data"):
        require_validated(project, out)
