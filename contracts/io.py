"""Shared file I/O, written once: sha256 of a file, atomic file and folder writes, deterministic npz.

Atomic means a reader sees the old content or the new, never half of one: data goes to a temp file in
the same folder, is flushed (and fsynced when asked), then ``os.replace``d over the target.
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
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def temp_name(path: Path) -> Path:
    """The temp file an atomic write of `path` goes through: ``.<name>.tmp-<pid>`` beside it, so a later run
    can tell (and remove) what a killed one left behind."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` (making its folder) through ``temp_name(path)`` and ``os.replace`` (mode 0644); with `fsync`, the
    data is on disk before the rename. On any error the temp file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def json_text(obj: Any) -> str:
    """The project's JSON style: indented, a trailing newline, non-JSON values through ``str``."""
    return json.dumps(obj, indent=2, default=str) + "\n"


def atomic_write_json(path: str | Path, obj: Any, *, fsync: bool = False) -> None:
    atomic_write_text(path, json_text(obj), fsync=fsync)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Like ``np.savez``, but with fixed zip metadata, so the bytes depend on the arrays alone
    (no pickles: ``allow_pickle=False``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            item = io.BytesIO()
            np.lib.format.write_array(item, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, item.getvalue())
    return buf.getvalue()


def write_npz_deterministic(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Deterministic npz (see ``npz_bytes``) written atomically."""
    atomic_write_bytes(path, npz_bytes(arrays))


def _owner_gone(path: Path, marker: str) -> bool:
    """Whether the process that made `path` (``.<name><marker><pid>[-...]``) has ended: its pid is not running,
    or the pid now belongs to a process started after `path` was last written (a reused pid). A name without
    a pid (temp folders of older versions) counts as ended."""
    import psutil

    head = path.name.split(marker, 1)[1].split("-", 1)[0]
    if not head.isdigit():
        return True
    pid = int(head)
    if pid == os.getpid():
        return False
    try:
        return psutil.Process(pid).create_time() > path.lstat().st_mtime + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return not psutil.pid_exists(pid)


def clean_stale_dirs(final: Path) -> list[Path]:
    """Tidy what killed `atomic_dir` runs left beside `final`: ``.<name>.tmp-<pid>-*`` folders whose process has
    ended are removed; a ``.<name>.old-<pid>`` (a kill between the two renames) is put back as `final` when
    `final` is missing, else removed. Folders of running processes are left alone. Returns what was removed."""
    removed = []
    if not final.parent.is_dir():
        return removed
    for marker in (".old-", ".tmp-"):
        for path in sorted(final.parent.glob(f".{final.name}{marker}*")):
            if not path.is_dir() or path.is_symlink() or not _owner_gone(path, marker):
                continue
            if marker == ".old-" and not final.exists():
                with contextlib.suppress(OSError):  # never delete the only copy: left for the next run
                    path.rename(final)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder ``.<name>.tmp-<pid>-*`` beside `final`; on success it replaces `final`, on error it is
    removed. What killed runs left (``clean_stale_dirs``) is tidied first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_dirs(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a prepared folder is an ordinary folder
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def tree_sha256(base: str | Path, names: list[str] | None = None) -> dict[str, str]:
    """``{relative POSIX path: sha256}`` of `names` under `base` (default: every file under it, sorted)."""
    base = Path(base)
    if names is None:
        names = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    return {name: sha256_file(base / name) for name in names}


def sha256_mismatches(base: str | Path, recorded: Mapping[str, str]) -> list[str]:
    """The names in `recorded` (``{relative path: sha256}``) whose file under `base` is missing, unreadable
    or holds other bytes: a corrupt or truncated copy is never taken for the one that was recorded."""
    bad = []
    for name, digest in sorted(recorded.items()):
        try:
            if sha256_file(Path(base) / name) != digest:
                bad.append(name)
        except OSError:
            bad.append(name)
    return bad
