"""A stage's files written as one unit: after a kill -9 at any point a reader sees the old set or the new one,
never a mix (used by `train` for model.pt + config.json + train.json).

The writer fills a staging folder ``.<manifest>.commit/`` beside the files (`begin`), then `finish` writes the
manifest (train.json) into it last, holding the sha256 of every other file: that write is the commit point.
The files are then moved into place one by one, the manifest last, and the staging folder removed. `recover`
(run by the next writer and by every reader) completes a committed unit whose moves were interrupted and drops
an uncommitted one, whose files never left the staging folder. `verify` checks the files in place against the
manifest's sha256, so whatever else goes wrong (a hand copy, an old genforge, a torn disk) a mix is refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from contracts.io import atomic_write_json, remove_stale_temps, removed_on_error, sha256_file
from pipelines.errors import GenforgeError


def staging_dir(folder: Path, manifest: str) -> Path:
    return folder / f".{manifest}.commit"


def recover(folder: Path, manifest: str) -> str | None:
    """Finish or drop what an interrupted commit left in `folder`: "completed" when the staging folder held the
    manifest (its files are moved into place), "dropped" when it did not, None when there was nothing."""
    staging = staging_dir(folder, manifest)
    if not staging.is_dir():
        return None
    done = (staging / manifest).is_file()
    if done:
        files = sorted((p for p in staging.iterdir() if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.name == manifest)  # the manifest last
        for p in files:
            with contextlib.suppress(FileNotFoundError):  # another reader moved it already
                os.replace(p, folder / p.name)
    shutil.rmtree(staging, ignore_errors=True)
    return "completed" if done else "dropped"


def begin(folder: Path, manifest: str) -> Path:
    """A fresh, empty staging folder for one unit (an interrupted earlier commit is recovered first, and the
    temp files killed atomic writes left in `folder` are removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    recover(folder, manifest)
    remove_stale_temps(folder)
    staging = staging_dir(folder, manifest)
    staging.mkdir()
    return staging


def finish(folder: Path, manifest: str, record: dict[str, Any]) -> dict[str, Any]:
    """Commit the files written into the staging folder with `record` (+ "files": {name: sha256}) as the
    manifest; returns the manifest written."""
    staging = staging_dir(folder, manifest)
    with removed_on_error(staging, staging):
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.name != manifest}
        record = {**record, "files": files}
        atomic_write_json(staging / manifest, record, fsync=True)  # the commit point
    recover(folder, manifest)
    return record


def verify(folder: Path, manifest: str, hint: str) -> dict[str, Any]:
    """The manifest in `folder` (after `recover`), its files checked against their sha256; {} when there is
    none. A file that does not match is a GenforgeError naming it, ending with `hint` (what to rerun).
    A manifest written before units existed (no "files") is returned unchecked."""
    recover(folder, manifest)
    path = folder / manifest
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GenforgeError(f"{path}: unreadable ({exc}); {hint}") from exc
    for name, digest in (record.get("files") or {}).items():
        file = folder / name
        actual = sha256_file(file) if file.is_file() else None
        if actual != digest:
            found = f"sha256 {actual[:12]}" if actual else "missing"
            raise GenforgeError(f"{file}: does not belong with {manifest} ({found}, {manifest} says "
                                f"{str(digest)[:12]}): files of different runs are mixed; {hint}")
    return record
