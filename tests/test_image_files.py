"""Image files as they come (pipelines/images.py): every PIL mode with its pixel values, transparency, EXIF
orientation, the channel and size policies, and the files prepare refuses before opening them."""
import json
import os
import socket

import numpy as np
import pytest
from PIL import Image

from contracts.errors import ConfigError, DataError
from pipelines import images
from pipelines.images import ImageOptions, decode
from pipelines.prepare import prepare
from pipelines.settings import validate_settings

WHITE = ImageOptions()


def _save(img, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _grey(path, options=WHITE):
    rgb = decode(path, options)
    assert rgb.shape[2] == 3 and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0]


# ---- one test per PIL mode ------------------------------------------------------------------
def test_mode_1_is_0_or_255(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], bool))
    assert img.mode == "1"
    assert _grey(_save(img, tmp_path / "a.png")).tolist() == [[0, 255], [255, 0]]


def test_mode_L_is_kept(tmp_path):
    px = np.array([[0, 7], [128, 255]], np.uint8)
    assert _grey(_save(Image.fromarray(px, "L"), tmp_path / "a.png")).tolist() == px.tolist()


def test_mode_LA_is_composited_onto_the_background(tmp_path):
    px = np.array([[[0, 0], [0, 255]], [[100, 128], [200, 255]]], np.uint8)  # (grey, alpha)
    path = _save(Image.fromarray(px, "LA"), tmp_path / "a.png")
    # 0 over white: transparent -> 255, opaque -> 0; 100 at alpha 128/255 -> 100*a + 255*(1-a) = 177.2
    assert _grey(path).tolist() == [[255, 0], [177, 200]]
    assert _grey(path, ImageOptions(background=(0, 0, 0))).tolist() == [[0, 0], [50, 200]]


def test_mode_P_without_transparency_reads_its_palette(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    img.putpalette([10, 20, 30, 200, 100, 0, 5, 5, 5] + [0] * 759)
    rgb = decode(_save(img, tmp_path / "a.png"), WHITE)
    assert rgb.tolist() == [[[10, 20, 30], [200, 100, 0]], [[5, 5, 5], [200, 100, 0]]]


def test_mode_P_with_transparency_is_composited(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    img.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # both entries black; index 0 transparent (tRNS)
    assert _grey(_save(img, tmp_path / "a.png", transparency=0)).tolist() == [[255, 0], [0, 255]]


def test_mode_RGB_is_kept(tmp_path):
    px = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    assert decode(_save(Image.fromarray(px, "RGB"), tmp_path / "a.png"), WHITE).tolist() == px.tolist()


def test_mode_RGBA_black_ink_on_transparent_survives(tmp_path):
    px = np.zeros((2, 2, 4), np.uint8)
    px[0, 1, 3] = 255                     # one opaque black pixel; the rest is black but transparent
    px[1, 0] = [255, 0, 0, 128]           # half-transparent red
    rgb = decode(_save(Image.fromarray(px, "RGBA"), tmp_path / "a.png"), WHITE)
    assert rgb.tolist() == [[[255, 255, 255], [0, 0, 0]], [[255, 127, 127], [255, 255, 255]]]


def test_content_only_in_alpha_in_the_background_colour_is_refused(tmp_path):
    px = np.zeros((4, 4, 4), np.uint8)
    px[..., :3] = 255                     # white ink ...
    px[1:3, 1:3, 3] = 255                 # ... drawn only in alpha
    path = _save(Image.fromarray(px, "RGBA"), tmp_path / "a.png")
    with pytest.raises(DataError, match=r"a\.png: has transparency.*data\.background"):
        decode(path, WHITE)
    assert decode(path, ImageOptions(background=(0, 0, 0)))[..., 0].tolist()[1] == [0, 255, 255, 0]


def test_mode_CMYK_converts_to_rgb(tmp_path):
    img = Image.new("CMYK", (2, 1), (0, 255, 255, 0))  # pure red in CMYK
    assert decode(_save(img, tmp_path / "a.jpg", quality=100), WHITE)[0, 0].tolist() == pytest.approx(
        [255, 0, 0], abs=3)
    assert decode(_save(img, tmp_path / "b.tif"), WHITE)[0, 0].tolist() == [255, 0, 0]


def test_mode_I16_is_scaled_by_1_over_257(tmp_path):
    img = Image.fromarray(np.array([[0, 257], [32896, 65535]], np.uint16))
    assert img.mode.startswith("I;16")
    assert _grey(_save(img, tmp_path / "a.png")).tolist() == [[0, 1], [128, 255]]


def test_mode_I_is_read_as_16_bit_and_range_checked(tmp_path):
    path = _save(Image.fromarray(np.array([[0, 514], [65535, 1285]], np.int32), "I"), tmp_path / "a.tif")
    assert _grey(path).tolist() == [[0, 2], [255, 5]]
    bad = _save(Image.fromarray(np.array([[0, 70000]], np.int32), "I"), tmp_path / "b.tif")
    with pytest.raises(DataError, match=r"b\.tif: pixel values out of range for a 16-bit image"):
        decode(bad, WHITE)


def test_mode_F_is_scaled_by_255_and_range_checked(tmp_path):
    path = _save(Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.1]], np.float32), "F"), tmp_path / "a.tif")
    assert _grey(path).tolist() == [[0, 128], [255, 26]]
    bad = _save(Image.fromarray(np.array([[0.0, 2.0]], np.float32), "F"), tmp_path / "b.tif")
    with pytest.raises(DataError, match=r"b\.tif: pixel values out of range for a float image"):
        decode(bad, WHITE)


def test_exif_orientation_is_applied(tmp_path):
    px = np.zeros((2, 3), np.uint8)
    px[0, 0] = 255                         # stored 3 wide, 2 high, bright top-left
    exif = Image.Exif()
    exif[0x0112] = 6                       # "rotate 90 CW to display"
    path = _save(Image.fromarray(px, "L"), tmp_path / "a.png", exif=exif)
    shown = _grey(path)
    assert shown.shape == (3, 2) and shown[0, 1] == 255 and shown.sum() == 255


# ---- a data set: channels, sizes, background in meta.json -----------------------------------
def _folder(root, arrays_by_class):
    for cls, arrays in arrays_by_class.items():
        for i, arr in enumerate(arrays):
            _save(Image.fromarray(arr), root / cls / f"{i:03d}.png")
    return root


def _meta(tmp_path, name):
    return json.loads((tmp_path / "data" / "prepared" / name / "meta.json").read_text())


def _load(tmp_path, name):
    with np.load(tmp_path / "data" / "prepared" / name / "train.npz") as z:
        return z["images"]


def _grey_and_colour(n=4):
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in range(n)]
    colour = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(n)]
    return grey, colour


@pytest.mark.parametrize("channels, expected", [("auto", 3), (3, 3), (1, 1)])
def test_mixed_grey_and_colour_get_one_channel_count(tmp_path, channels, expected):
    grey, colour = _grey_and_colour()
    src = _folder(tmp_path / "mixed", {"a": grey, "b": colour})
    prepare({"data": {"source": f"folder:{src}", "name": "m", "channels": channels, "test_fraction": 0.25}},
            tmp_path)
    meta = _meta(tmp_path, "m")
    assert meta["shape"] == [expected, 6, 6]
    assert meta["image_files"]["channels"] == expected and meta["image_files"]["channels_policy"] == channels
    x = _load(tmp_path, "m")
    if expected == 3:  # grey images are repeated on three channels
        greys = [im for im in x if (im[0] == im[1]).all() and (im[1] == im[2]).all()]
        assert len(greys) == 3
    else:              # colour converted with PIL's luma (ITU-R 601-2)
        lumas = {Image.fromarray(c).convert("L").tobytes() for c in colour}
        assert sum(im[0].tobytes() in lumas for im in x) >= 2


def test_all_grey_auto_is_one_channel_even_from_rgb_files(tmp_path):
    grey, _ = _grey_and_colour()
    src = _folder(tmp_path / "g", {"a": [np.repeat(g[:, :, None], 3, 2) for g in grey], "b": grey})
    prepare({"data": {"source": f"folder:{src}", "name": "g", "test_fraction": 0.25}}, tmp_path)
    assert _meta(tmp_path, "g")["shape"] == [1, 6, 6]


def test_different_sizes_are_refused_naming_two_files(tmp_path):
    src = _folder(tmp_path / "s", {"a": [np.zeros((8, 8), np.uint8)] * 3, "b": [np.zeros((8, 10), np.uint8)] * 3})
    with pytest.raises(DataError) as err:
        prepare({"data": {"source": f"folder:{src}", "name": "s"}}, tmp_path)
    line = str(err.value)
    assert "\n" not in line and "b/000.png: is 10x8 (W x H)" in line and "a/000.png is 8x8" in line
    assert "data.image_size" in line and not (tmp_path / "data" / "prepared" / "s").exists()


@pytest.mark.parametrize("policy", ["resize", "center_crop", "pad"])
def test_size_policies_bring_every_image_to_image_size(tmp_path, policy):
    wide = np.zeros((4, 8), np.uint8)
    wide[:, 2:6] = 200                                   # a block in the middle of a 8x4 image
    src = _folder(tmp_path / "s", {"a": [wide] * 3, "b": [np.full((8, 8), 100, np.uint8)] * 3})
    prepare({"data": {"source": f"folder:{src}", "name": "s", "image_size": 4, "resize": policy,
                      "background": 0, "test_fraction": 0.34}}, tmp_path)
    meta = _meta(tmp_path, "s")
    assert meta["shape"] == [1, 4, 4] and meta["image_files"]["size_policy"] == policy
    x = _load(tmp_path, "s")
    block = next(im[0] for im in x if im.max() > 150)
    if policy == "center_crop":    # scaled to cover 4x4 (4x8 -> crop the centre 4 columns): all block
        assert (block > 150).all()
    elif policy == "pad":          # scaled to fit (2 rows of 4), padded with the background 0 above/below
        assert (block[0] == 0).all() and (block[-1] == 0).all() and block[1:3, 1:3].min() > 150
    else:                          # stretched: block in the middle columns, every row
        assert (block[:, 1:3] > 150).all() and block[:, 0].max() < 100


def test_background_and_policies_are_recorded_and_checked(tmp_path):
    px = np.zeros((6, 6, 2), np.uint8)
    px[2:4, :, 1] = 255                                  # black bar in alpha
    src = _folder(tmp_path / "t", {"a": [px] * 3, "b": [px[::-1, ::-1].copy()] * 3})
    prepare({"data": {"source": f"folder:{src}", "name": "t", "background": "#808080", "test_fraction": 0.34}},
            tmp_path)
    meta = _meta(tmp_path, "t")
    assert meta["image_files"]["background"] == 128 and meta["image_files"]["exif_transpose"] is True
    assert set(np.unique(_load(tmp_path, "t")).tolist()) == {0, 128}
    for key, value, match in [("background", 300, "outside 0..255"), ("background", "mauvish", "not a colour"),
                              ("channels", 2, "not one of|expected"), ("resize", "paad", "did you mean .pad."),
                              ("image_size", [0, 4], "image_size"), ("follow_symlinks", "yes", "true or false")]:
        with pytest.raises(ConfigError, match=match):
            validate_settings({"data": {key: value}})


# ---- files refused before they are opened -----------------------------------------------------
def _one_class_folder(tmp_path):
    src = _folder(tmp_path / "src", {"a": [np.zeros((4, 4), np.uint8)] * 2, "b": [np.ones((4, 4), np.uint8)] * 2})
    return src


def _refused(tmp_path, src, match, **data):
    with pytest.raises(DataError, match=match) as err:
        prepare({"data": {"source": f"folder:{src}", "name": "refused", **data}}, tmp_path)
    assert "\n" not in str(err.value) and not (tmp_path / "data" / "prepared" / "refused").exists()


def test_fifo_named_png_is_refused_without_opening_it(tmp_path):
    src = _one_class_folder(tmp_path)
    os.mkfifo(src / "a" / "x.png")          # opening it would block forever
    _refused(tmp_path, src, r"a/x\.png: a FIFO \(named pipe\), not an image file")


def test_device_and_socket_are_refused(tmp_path):
    src = _one_class_folder(tmp_path)
    os.symlink("/dev/null", src / "a" / "null.png")
    _refused(tmp_path, src, r"null\.png: symlink to /dev/null, outside the source folder")
    _refused(tmp_path, src, r"null\.png: a character device", follow_symlinks=True)
    (src / "a" / "null.png").unlink()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "b" / "s.png"))
        _refused(tmp_path, src, r"s\.png: a socket")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    src = _one_class_folder(tmp_path)
    _save(Image.new("L", (64, 64)), src / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)      # 4096 pixels > 2x the limit: an error
    _refused(tmp_path, src, r"big\.png: refused as a possible decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)      # between 1x and 2x: PIL only warns; refused too
    _refused(tmp_path, src, r"big\.png: refused as a possible decompression bomb")


def test_unreadable_and_corrupt_files_are_refused(tmp_path, monkeypatch):
    src = _one_class_folder(tmp_path)
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _refused(tmp_path, src, r"broken\.png: not a readable image")
    (src / "a" / "broken.png").unlink()
    real_access = os.access
    monkeypatch.setattr(images.os, "access", lambda p, m: not str(p).endswith("001.png") and real_access(p, m))
    _refused(tmp_path, src, r"a/001\.png: cannot read \(permission denied\)")


def test_symlinks_inside_are_read_outside_only_when_allowed(tmp_path):
    src = _one_class_folder(tmp_path)
    outside = _save(Image.fromarray(np.full((4, 4), 9, np.uint8)), tmp_path / "elsewhere" / "o.png")
    os.symlink(src / "a" / "000.png", src / "b" / "inside.png")
    prepare({"data": {"source": f"folder:{src}", "name": "ok", "test_fraction": 0.4}}, tmp_path)
    os.symlink(outside, src / "a" / "link.png")
    _refused(tmp_path, src, r"a/link\.png: symlink to .*elsewhere/o\.png, outside the source folder .*"
                            r"data\.follow_symlinks")
    prepare({"data": {"source": f"folder:{src}", "name": "x", "follow_symlinks": True, "test_fraction": 0.4}},
            tmp_path)
    assert _meta(tmp_path, "x")["counts"] == {"train": 4, "test": 2}
    os.symlink(tmp_path / "nowhere.png", src / "a" / "dangling.png")
    _refused(tmp_path, src, r"dangling\.png: broken symlink", follow_symlinks=True)


def test_hidden_and_os_files_are_skipped(tmp_path):
    src = _one_class_folder(tmp_path)
    for junk in ("a/.DS_Store", "a/._000.png", "b/Thumbs.db", "b/desktop.ini", ".DS_Store", "__MACOSX/a/._000.png",
                 ".hidden/x.png"):
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_bytes(b"\x00\x05\x16\x07junk")
    prepare({"data": {"source": f"folder:{src}", "name": "h", "test_fraction": 0.5}}, tmp_path)
    meta = _meta(tmp_path, "h")
    assert meta["class_names"] == ["a", "b"] and sum(meta["counts"].values()) == 4


def test_settings_defaults_are_the_readers_defaults():
    from pipelines.settings import DataSettings

    data, options = DataSettings(), ImageOptions.from_params({})
    assert options == ImageOptions()
    assert (images.background_rgb(data.background), data.channels, images.size_hw(data.image_size), data.resize,
            data.follow_symlinks) == (options.background, options.channels, options.image_size, options.resize,
                                      options.follow_symlinks)


def test_source_fingerprint_survives_a_symlink_loop_and_a_fifo(tmp_path):
    from pipelines.sources import source_fingerprint

    src = _one_class_folder(tmp_path)
    os.symlink(src, src / "a" / "loop")
    os.mkfifo(src / "b" / "pipe.png")
    paths = [f["path"] for f in source_fingerprint(f"folder:{src}")["files"]]
    assert paths == ["a/000.png", "a/001.png", "b/000.png", "b/001.png"]
