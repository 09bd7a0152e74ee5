"""Shared file I/O, written once: sha256 of a file, atomic file and folder writes, deterministic npz.

Atomic means a reader sees the old content or the new, never half of one: data goes to a temp file in
the same folder, is flushed (and fsynced when asked), then ``os.replace``d over the target.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from contracts.errors import BusyError, StorageError

# errors of the machine, not of genforge: disk full, quota, file too large, read-only, permissions
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


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


def storage_error(exc: BaseException, path: str | Path | None = None) -> StorageError | None:
    """A StorageError naming the path and the problem ("No space left on device") when `exc` (or an error it
    was raised from) is an OSError of the machine (``STORAGE_ERRNOS``), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            where = exc.filename or path
            return StorageError(where, exc.strerror or os.strerror(exc.errno))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` (making its folder) through ``temp_name(path)`` and ``os.replace`` (mode 0644); with `fsync`, the
    data is on disk before the rename. On any error the temp file is removed and `path` is untouched; a full
    disk, a quota or a read-only/forbidden folder is a StorageError naming `path`."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            raise StorageError(path, exc.strerror or os.strerror(exc.errno)) from exc
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
def removed_on_error(folder: Path, path: str | Path) -> Iterator[None]:
    """Run the block; when it fails, remove the temp `folder` and re-raise (a machine error as a StorageError
    naming `path`, see ``storage_error``)."""
    try:
        yield
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        error = storage_error(exc, path)
        if error is not None and error is not exc:
            raise error from exc
        raise


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder ``.<name>.tmp-<pid>-*`` beside `final`; on success it replaces `final`, on error it is
    removed. What killed runs left (``clean_stale_dirs``) is tidied first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_dirs(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    with removed_on_error(tmp, final):
        yield tmp
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


def remove_stale_temps(folder: Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Remove what a killed atomic write left in `folder`: ``.<name>.tmp-<pid>`` files (``temp_name``), and, through
    ``clean_stale_dirs``, the ``.<name>.tmp-*`` / ``.<name>.old-*`` folders of ``atomic_dir`` (a lost ``.old`` is put
    back), for the given `names` (None: any name). Call it while holding the lock that guards `folder`'s
    writers. Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir() or folder.is_symlink():
        return removed
    pattern = re.compile(r"^\.(.+)\.(tmp|old)-[A-Za-z0-9_-]+$")
    folders: set[str] = set()
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m is None or (names is not None and m.group(1) not in names) or p.is_symlink():
            continue
        if p.is_dir():
            folders.add(m.group(1))
        else:
            p.unlink(missing_ok=True)
            removed.append(p)
    for name in sorted(folders):
        removed += clean_stale_dirs(folder / name)
    return removed


def _holder(info: Path) -> str:
    try:
        h = json.loads(info.read_text())
        return f"pid {h['pid']} ({h['command']}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (no holder record)"


@contextlib.contextmanager
def exclusive(lock_path: str | Path, what: str, *, wait: float = 0) -> Iterator[None]:
    """Hold the inter-process lock `lock_path` (``filelock``, an OS lock released when the process dies, even by
    kill -9) while the block runs. When another process holds it after `wait` seconds: BusyError
    ``busy: <what> is in use by pid <pid> (<command>, since <time>)``. The holder is recorded in
    ``<lock_path>.holder`` (JSON) for that message. Not re-entrant: take each lock in one place."""
    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    info = lock_path.with_name(lock_path.name + ".holder")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=wait, mode=0o644)
        lock.acquire()
    except Timeout:
        raise BusyError(f"busy: {what} is in use by {_holder(info)}; lock {lock_path}") from None
    except OSError as exc:
        error = storage_error(exc, lock_path)
        if error is None:
            raise
        raise error from exc
    try:
        since = dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
        with contextlib.suppress(OSError):
            atomic_write_json(info, {"pid": os.getpid(), "command": " ".join(["genforge", *sys.argv[1:]]),
                                     "since": since})
        yield
    finally:
        with contextlib.suppress(OSError):
            info.unlink()
        lock.release()
