"""The prepared-dataset format of DESIGN.md: `data/prepared/<name>/{train,test}.npz, meta.json`.

Writes are deterministic (fixed zip timestamps) and atomic (a temp folder renamed into place),
so the same input always gives the same bytes and a failure never leaves half a dataset.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contracts.data import DataSpec
from contracts.io import atomic_dir, sha256_file, write_npz_deterministic  # noqa: F401 (re-exported)
from contracts.modalities import get_modality
from pipelines import catalog
from pipelines.errors import DataError, GenforgeError

SPLITS = ("train", "test")


def data_sha256(file_hashes: dict[str, str]) -> str:
    """One id for a dataset version: the hash of its files' hashes, in a fixed order."""
    return hashlib.sha256("".join(f"{k}={file_hashes[k]}\n" for k in sorted(file_hashes)).encode()).hexdigest()


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
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def spec(self) -> DataSpec:
        """The typed meta.json: modality, sample shape, classes (data sets from before modalities: images)."""
        return DataSpec.from_meta(self.meta)

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        path = self.root / catalog.file_name(f"prepared_{split}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz[get_modality(self.spec.modality).SAMPLE_KEY], npz["labels"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(path, f"cannot read prepared split ({exc.__class__.__name__}: {exc})") from exc


def open_prepared(root: Path) -> PreparedDataset:
    meta_path = root / catalog.file_name("prepared_meta")
    if not meta_path.exists():
        raise GenforgeError(f"{root}: no prepared dataset here (missing meta.json); run `genforge stage prepare` first")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(meta_path, f"not valid JSON ({exc})") from exc
    return PreparedDataset(root, meta)
