"""Small on-disk datasets in the formats `prepare` reads: IDX files and image folders."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(directory: Path, n_train: int = 300, n_test: int = 100, size: int = 8, seed: int = 0,
                  gz: bool = False) -> Path:
    """MNIST-format files with random digits; labels cycle through 0..9 so every class is present."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            path = directory / (f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
            data = idx_bytes(arr)
            path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return directory


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8), mode="L").save(d / f"{i:03d}.png")
    return root
