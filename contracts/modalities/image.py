"""The image modality: uint8 N x C x H x W stored, float32 in [0, 1] inside models.

- stored -> model: ``x / 255`` (float32, exact for every uint8 value)
- model -> stored: ``rint(clip(x, 0, 1) * 255)`` as uint8 (round half to even, numpy's ``rint``)
- validation: one summary row per image (label, mean/min/max intensity, content hash) and expectations
  on it (pixel range, non-null means); the shared ones (row count, labels, class shares, leakage) are the
  stage's own
- serving: shards (``shard_bytes``/``read_shard``) are npz files of ``images`` (uint8) + ``labels``; the preview
  is a PNG grid; ``--png`` writes one PNG per sample

numpy + PIL only (never torch).
"""
from __future__ import annotations

import hashlib
import io
import math
from typing import Any, Iterable

import numpy as np

SAMPLE_KEY = "images"        # the array name in train.npz / test.npz and in serving's shards
FILE_SUFFIX = ".png"         # one file per sample (`genforge generate --png`)
PREVIEW_NAME = "preview.png"
SHARD_SUFFIX = ".npz"        # serving's shards: npz of SAMPLE_KEY + "labels"
FILES_DIR = "png"            # where `--png` writes the per-sample files


def to_model(stored: np.ndarray) -> np.ndarray:
    """uint8 N x C x H x W -> float32 in [0, 1], same shape."""
    return stored.astype(np.float32) / np.float32(255.0)


def from_model(x: np.ndarray) -> np.ndarray:
    """float N x C x H x W in [0, 1] -> uint8 (values outside [0, 1] are clipped first)."""
    return np.rint(np.clip(x, 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def check_stored(samples: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """Why stored samples do not have the layout of the spec (None when they do): N x C x H x W of `shape`.
    (The dtype is checked against meta.json on its own.)"""
    if samples.ndim != 4 or tuple(samples.shape[1:]) != tuple(shape):
        return f"expected N x {' x '.join(map(str, shape))} images, got {list(samples.shape)}"
    return None


def summary_table(samples: np.ndarray, labels: np.ndarray, spec=None) -> dict[str, Any]:
    """Columns of the per-image summary validation runs its expectations on: label, mean/min/max intensity,
    content hash (blake2b-128 of the raw bytes, for leakage and duplicates). ``spec`` (the DataSpec) is unused."""
    flat = samples.reshape(len(samples), math.prod(samples.shape[1:])).astype(np.float64, copy=False)  # 0 rows too
    return {
        "label": labels.astype(np.int64),
        "mean": flat.mean(axis=1) if flat.size else np.zeros(0),
        "min": flat.min(axis=1) if flat.size else np.zeros(0),
        "max": flat.max(axis=1) if flat.size else np.zeros(0),
        "hash": [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).hexdigest() for im in samples],
    }


def validation_thresholds(thresholds: dict[str, Any]) -> dict[str, Any]:
    """The thresholds validation applies to image data: the top level of `validation` (other modalities'
    sections, such as `validation.tokens`, left out)."""
    return {k: v for k, v in thresholds.items() if not isinstance(v, dict)}


def expectations(thresholds: dict[str, Any], reference: dict[str, Any] | None = None
                 ) -> list[tuple[str, dict[str, Any]]]:
    """The image-specific expectations, as (Great Expectations class name, kwargs) on the summary table
    (``reference``, the train split's table when checking test, is unused)."""
    lo, hi = thresholds["pixel_min"], thresholds["pixel_max"]
    return [
        ("ExpectColumnValuesToNotBeNull", {"column": "mean"}),
        ("ExpectColumnValuesToBeBetween", {"column": "min", "min_value": lo, "max_value": hi}),
        ("ExpectColumnValuesToBeBetween", {"column": "max", "min_value": lo, "max_value": hi}),
    ]


def to_pil(img: np.ndarray):
    """uint8 C x H x W -> a PIL image (1 channel: L, 3: RGB, 4: RGBA; others: the first channel)."""
    from PIL import Image

    c = img.shape[0]
    if c in (3, 4):
        return Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
    return Image.fromarray(np.ascontiguousarray(img[0]))


def write_preview(samples: Iterable[np.ndarray], shape: tuple[int, ...], columns: int = 8, pad: int = 2, *,
                  spec=None, labels=None) -> bytes:
    """PNG bytes of a grid of uint8 C x H x W images, `columns` per row, `pad` px apart (`spec`, `labels`
    unused)."""
    from PIL import Image

    c, h, w = shape
    images = list(samples)
    cols = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    mode = "RGB" if c == 3 else "RGBA" if c == 4 else "L"
    grid = Image.new(mode, (cols * (w + pad) + pad, rows * (h + pad) + pad))
    for i, img in enumerate(images):
        grid.paste(to_pil(img), (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def write_files(sample: np.ndarray, *, spec=None) -> bytes:
    """One sample as the bytes of its own file (a PNG)."""
    buf = io.BytesIO()
    to_pil(sample).save(buf, format="PNG")
    return buf.getvalue()


def shard_bytes(samples: np.ndarray, labels: np.ndarray, spec=None, start: int = 0) -> bytes:
    """One serving shard: a deterministic npz (fixed timestamps, stored) of ``images`` uint8 N x C x H x W and
    ``labels`` int64 N (``spec``, ``start`` unused: the npz has no per-sample index)."""
    from contracts.io import npz_bytes

    return npz_bytes({SAMPLE_KEY: samples, "labels": labels})


def read_shard(data: bytes, spec=None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x C x H x W, int64 labels N) of a shard's bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        key = next(name for name in z.files if name != "labels")
        return z[key], z["labels"]
