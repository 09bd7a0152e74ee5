"""Whose files are in a generation's output folder, and what `generate` may write there.

A folder is genforge's when it holds a genforge ``manifest.json``: then the names the generator writes
(``manifest.json``, ``preview.<ext>``, ``shards/shard-NNNNN.<ext>``, ``png/NNNNNNN.<ext>`` or ``txt/...``) are its own outputs
and anything else in it (a user's notes) is left alone. Any other folder that is not empty is the user's:
``generate`` refuses it, and with ``overwrite`` writes beside the user's files but still never replaces one
(a file at a name it would write is refused, by name, before anything is written).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from contracts.errors import ServingError

# the modalities' names: preview.png / preview.txt, shards/shard-NNNNN.npz / .jsonl, png/ or txt/NNNNNNN.<ext>
OWN_OUTPUT = re.compile(r"^(manifest\.json|preview\.[a-z]+|shards/shard-\d{5}\.[a-z]+|[a-z]+/\d{7}\.[A-Za-z0-9]+)$")
_TEMP = re.compile(r"^\.[^/]+\.tmp-\d+$")  # contracts.io.temp_name: what a killed atomic write leaves
SHOWN = 5


class OutputFolderError(ServingError):
    """The output folder holds files genforge did not write."""


def user_files(out_root: Path) -> list[str]:
    """Files (POSIX paths relative to `out_root`, links to files included) that are not temp files of a killed
    run; folders do not count (nor are links to folders followed: the generator refuses writing through them)."""
    if not out_root.is_dir():
        return []
    found = []
    for folder, _, names in os.walk(out_root):
        for name in names:
            if not _TEMP.match(name):
                found.append((Path(folder) / name).relative_to(out_root).as_posix())
    return sorted(found)


def check_foreign_folder(out_root: Path, targets: Iterable[str], overwrite: bool) -> None:
    """`out_root` holds no genforge manifest: refuse it when it holds any file, unless `overwrite`; even then
    refuse when a file the run would write (`targets`, relative names) already exists there."""
    files = user_files(out_root)
    if not files:
        return
    if not overwrite:
        shown = ", ".join(files[:SHOWN]) + (f" and {len(files) - SHOWN} more" if len(files) > SHOWN else "")
        raise OutputFolderError(f"{out_root} holds files genforge did not write ({shown}); choose a new or empty "
                                f"folder, or pass --overwrite to write beside them (a file of yours is never replaced)")
    present = set(files)
    clash = next((t for t in targets if t in present), None)
    if clash is not None:
        raise OutputFolderError(f"{out_root / clash}: exists and was not written by genforge; refusing to replace "
                                f"it, even with --overwrite (choose another output folder)")


def remove_own_outputs(out_root: Path) -> list[str]:
    """Delete the outputs of a previous genforge job in `out_root` (`OWN_OUTPUT` names only; the manifest
    last, so a kill midway still leaves a folder genforge recognises as its own)."""
    files = [f for f in user_files(out_root) if OWN_OUTPUT.match(f) and not (out_root / f).is_symlink()]
    files.sort(key=lambda f: f == "manifest.json")
    for f in files:
        (out_root / f).unlink(missing_ok=True)
    return files


def targets(num_shards: int, shard_name, png_count: int, suffix: str, preview: str = "preview.png",
            files_dir: str = "png") -> list[str]:
    """The relative names a job writes: manifest, preview, its shards and (``--png``) per-sample files
    (the modality's ``PREVIEW_NAME``, ``shard_name(k)``, ``FILES_DIR``/NNNNNNN``FILE_SUFFIX``)."""
    return ["manifest.json", preview, *(f"shards/{shard_name(k)}" for k in range(num_shards)),
            *(f"{files_dir}/{i:07d}{suffix}" for i in range(png_count))]
