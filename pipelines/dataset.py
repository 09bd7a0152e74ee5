"""The prepared-dataset format of DESIGN.md: `data/prepared/<name>/{train,test}.npz, meta.json`.

Writes are deterministic (fixed zip timestamps) and atomic (a temp folder renamed into place),
so the same input always gives the same bytes and a failure never leaves half a dataset.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipelines.errors import DataError, GenforgeError

SPLITS = ("train", "test")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip metadata so the bytes depend on the arrays alone."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def data_sha256(file_hashes: dict[str, str]) -> str:
    """One id for a dataset version: the hash of its files' hashes, in a fixed order."""
    return hashlib.sha256("".join(f"{k}={file_hashes[k]}\n" for k in sorted(file_hashes)).encode()).hexdigest()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final`, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class PreparedDataset:
    root: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def sha256(self) -> str:
        return self.meta["data_sha256"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        path = self.root / f"{split}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz["images"], npz["labels"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(path, f"cannot read prepared split ({exc.__class__.__name__}: {exc})") from exc


def open_prepared(root: Path) -> PreparedDataset:
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise GenforgeError(f"{root}: no prepared dataset here (missing meta.json); run `genforge stage prepare` first")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(meta_path, f"not valid JSON ({exc})") from exc
    return PreparedDataset(root, meta)
