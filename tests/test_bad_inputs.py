"""Every malformed input: a one-line error naming the file, a non-zero exit, nothing half-written."""

import numpy as np
from PIL import Image

from tests.data_factories import idx_bytes, write_idx_set, write_image_folder


def _assert_clean_failure(proc, project, name, *fragments):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])
    prepared = project / "data" / "prepared"
    assert not (prepared / name).exists()
    assert not any(p.name.startswith(f".{name}.tmp") for p in prepared.glob(".*")) if prepared.exists() else True


def _prepare(cli, project, source, name="bad"):
    return cli(["stage", "prepare", "--set", f"data.source={source}", "--set", f"data.name={name}"], project)


def test_truncated_idx_file(cli, project):
    src = write_idx_set(project / "idx")
    path = src / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    _assert_clean_failure(_prepare(cli, project, f"idx:{src}"), project, "bad", str(path), "truncated IDX file")


def test_truncated_gzip_idx_file(cli, project):
    src = write_idx_set(project / "idx", gz=True)
    path = src / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    _assert_clean_failure(_prepare(cli, project, f"idx:{src}"), project, "bad", str(path))


def test_wrong_magic_number(cli, project):
    src = write_idx_set(project / "idx")
    path = src / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[2:4] = b"\x08\x03"  # an images magic where labels belong
    path.write_bytes(bytes(data))
    _assert_clean_failure(_prepare(cli, project, f"idx:{src}"), project, "bad", str(path), "wrong magic number")


def test_image_label_count_mismatch(cli, project):
    src = write_idx_set(project / "idx")
    (src / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(99, np.uint8)))
    _assert_clean_failure(_prepare(cli, project, f"idx:{src}"), project, "bad",
                          "t10k-images-idx3-ubyte", "count mismatch: 100 images but 99 labels")


def test_folder_with_a_non_image_file(cli, project):
    src = write_image_folder(project / "imgs")
    stray = src / "class_1" / "notes.txt"
    stray.write_text("not an image")
    _assert_clean_failure(_prepare(cli, project, f"folder:{src}"), project, "bad", str(stray), "not an image file")


def test_folder_with_a_corrupt_png(cli, project):
    src = write_image_folder(project / "imgs")
    broken = src / "class_0" / "zzz.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _assert_clean_failure(_prepare(cli, project, f"folder:{src}"), project, "bad", str(broken), "not a readable image")


def test_folder_with_an_empty_class(cli, project):
    src = write_image_folder(project / "imgs")
    (src / "class_9").mkdir()
    _assert_clean_failure(_prepare(cli, project, f"folder:{src}"), project, "bad", str(src / "class_9"),
                          "empty class folder")


def test_float_images_with_nan(cli, project):
    src = project / "floats"
    for c in range(2):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(src / f"c{c}" / f"{i}.tif")
    bad = np.full((8, 8), 0.5, np.float32)
    bad[3, 3] = np.nan
    Image.fromarray(bad, mode="F").save(src / "c1" / "9.tif")
    _assert_clean_failure(_prepare(cli, project, f"folder:{src}"), project, "bad", str(src / "c1" / "9.tif"), "NaN")


def test_float_images_out_of_range(cli, project):
    src = project / "floats"
    (src / "c0").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 1.5, np.float32), mode="F").save(src / "c0" / "0.tif")
    _assert_clean_failure(_prepare(cli, project, f"folder:{src}"), project, "bad", str(src / "c0" / "0.tif"),
                          "out of range")


def test_sixteen_bit_images_out_of_range(cli, project):
    src = project / "deep"
    (src / "c0").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(src / "c0" / "0.tif")
    _assert_clean_failure(_prepare(cli, project, f"folder:{src}"), project, "bad", str(src / "c0" / "0.tif"),
                          "out of range for a 16-bit image")


def test_sixteen_bit_images_in_range_are_scaled(cli, project):
    src = project / "deep"
    for c in range(2):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 65535 * c, np.uint16)).save(src / f"c{c}" / f"{i}.png")
    proc = _prepare(cli, project, f"folder:{src}", name="deep")
    assert proc.returncode == 0, proc.stderr
    with np.load(project / "data" / "prepared" / "deep" / "train.npz") as npz:
        assert sorted(np.unique(npz["images"]).tolist()) == [0, 255]


def test_failed_prepare_keeps_the_previous_good_dataset(cli, project):
    good = write_idx_set(project / "idx")
    assert _prepare(cli, project, f"idx:{good}", name="keep").returncode == 0
    meta_before = (project / "data" / "prepared" / "keep" / "meta.json").read_text()
    (good / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    proc = _prepare(cli, project, f"idx:{good}", name="keep")
    assert proc.returncode != 0
    assert (project / "data" / "prepared" / "keep" / "meta.json").read_text() == meta_before


def test_unknown_source_and_bad_set_are_one_line_errors(cli, project):
    proc = _prepare(cli, project, "ftp:somewhere")
    assert proc.returncode != 0 and "error: data.source 'ftp:somewhere' is not understood" in proc.stderr
    proc = cli(["stage", "prepare", "--set", "data.source"], project)
    assert proc.returncode == 2 and "expected key=value" in proc.stderr and "Traceback" not in proc.stderr  # usage
    proc = cli(["--debug", "stage", "prepare", "--set", "data.source=ftp:x"], project)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_missing_idx_directory(cli, project):
    proc = _prepare(cli, project, f"idx:{project / 'nowhere'}")
    _assert_clean_failure(proc, project, "bad", str(project / "nowhere"), "not a directory")
