"""Stages `source` (fingerprint `data.source`) and `prepare` (read it, split if needed, write
`data/prepared/<name>/`)."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from contracts.io import atomic_write_text, json_text
from contracts.modalities import get_modality
from pipelines import catalog
from pipelines.dataset import SPLITS, atomic_dir, data_sha256, sha256_file, write_npz_deterministic
from pipelines.errors import DataError, GenforgeError
from pipelines.images import ImageOptions
from pipelines.sources import RawDataset, default_name, load_source, source_fingerprint

SAFE_NAME = catalog.SAFE_NAME


def dataset_name(params: dict[str, Any]) -> str:
    data = params.get("data") or {}
    name = data.get("name") or default_name(str(data.get("source", "mnist5k")))
    if not SAFE_NAME.match(name) or ".." in name:
        raise GenforgeError(f"data.name {name!r} must be a plain folder name (letters, digits, . _ -); "
                            f"it names data/prepared/<name>/ and may not leave that folder")
    return name


def prepared_dir(root: Path, params: dict[str, Any]) -> Path:
    """`data/prepared/<data.name>/` under root (an alias of `catalog.prepared_dir`)."""
    return catalog.prepared_dir(root, dataset_name(params))


def fingerprint_source(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """Stage `source`: write `data/sources/<name>.json`, the fingerprint of `data.source`
    (`sources.source_fingerprint`), rewritten only when it changed. `prepare` depends on this file, so DVC and
    the Prefect flow re-prepare exactly when the source's files (or the embedded set's package version) change.
    """
    source = str((params.get("data") or {}).get("source", "mnist5k"))
    out = catalog.source_fingerprint_path(root, dataset_name(params))
    fingerprint = source_fingerprint(source)
    text = json_text(fingerprint)
    changed = not out.exists() or out.read_text() != text
    if changed:
        atomic_write_text(out, text)
    return {"source": source, "path": str(out), "files": len(fingerprint.get("files", [])),
            "changed": changed}


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: per class in label order, the first share of a seeded permutation."""
    if not 0.0 < test_fraction < 1.0:
        raise GenforgeError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        mask[idx[: int(round(len(idx) * test_fraction))]] = True
    return mask


def _split_if_needed(raw: RawDataset, test_fraction: float, seed: int) -> RawDataset:
    if raw.test_images is not None:
        return raw
    mask = stratified_split(raw.train_labels, test_fraction, seed)
    return replace(raw, train_images=raw.train_images[~mask], train_labels=raw.train_labels[~mask],
                   test_images=raw.train_images[mask], test_labels=raw.train_labels[mask])


def _refuse_empty_split(raw: RawDataset, source: str, test_fraction: float, split_here: bool) -> None:
    """Prepare never writes an empty split: one line naming the source and the counts."""
    counts = {"train": len(raw.train_labels), "test": len(raw.test_labels)}
    for split, n in counts.items():
        if n == 0:
            hint = (f"; data.test_fraction={test_fraction} leaves 0 images of every class in it, "
                    f"{'raise' if split == 'test' else 'lower'} it" if split_here else "")
            raise DataError(source, f"the {split} split would be empty ({counts['train']} train, "
                                         f"{counts['test']} test images){hint}")


def prepare(params: dict[str, Any], root: Path) -> dict[str, Any]:
    data = params.get("data") or {}
    source = str(data.get("source", "mnist5k"))
    test_fraction = float(data.get("test_fraction", 0.2))
    out = prepared_dir(root, params)
    loaded = load_source(source, catalog.raw_dir(root), ImageOptions.from_params(data), data)
    raw = _split_if_needed(loaded, test_fraction, int(data.get("seed", 0)))
    _refuse_empty_split(raw, source, test_fraction, split_here=loaded.test_images is None)
    splits = {"train": (raw.train_images, raw.train_labels), "test": (raw.test_images, raw.test_labels)}
    num_classes = len(raw.class_names) or int(raw.train_labels.max()) + 1

    previous_meta = catalog.path("prepared_meta", root, out.name)
    previous = json.loads(previous_meta.read_text()) if previous_meta.exists() else {}
    with atomic_dir(out) as tmp:
        hashes, counts = {}, {}
        for split in SPLITS:
            images, labels = splits[split]
            file = catalog.file_name(f"prepared_{split}")
            write_npz_deterministic(tmp / file, {get_modality(raw.modality).SAMPLE_KEY: images, "labels": labels})
            hashes[file] = sha256_file(tmp / file)
            counts[split] = int(len(labels))
        digest = data_sha256(hashes)
        # `created` only changes with the data, so re-preparing identical data rewrites identical bytes
        created = previous.get("created") if previous.get("data_sha256") == digest else None
        meta = {
            "name": out.name,
            "source": source,
            "modality": raw.modality,
            "value_range": [0, 255] if raw.vocab is None else [0, len(raw.vocab) - 1],
            "shape": [int(s) for s in raw.train_images.shape[1:]],
            "dtype": str(raw.train_images.dtype),
            "num_classes": num_classes,
            "class_names": raw.class_names,
            **({"vocab": list(raw.vocab)} if raw.vocab is not None else {}),
            **({"image_files": raw.image_files} if raw.image_files else {}),
            **raw.meta,
            "counts": counts,
            "files": hashes,
            "data_sha256": digest,
            "created": created or dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        }
        atomic_write_text(tmp / catalog.file_name("prepared_meta"), json.dumps(meta, indent=2) + "\n")
    return {"dataset": out.name, "path": str(out), "counts": counts, "data_sha256": digest,
            "shape": meta["shape"], "num_classes": num_classes}
