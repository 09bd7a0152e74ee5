"""The one error hierarchy. Every error a user can fix is a ``GenforgeError``; the CLI prints it as one
``error: ...`` line (no traceback unless ``--debug``) and exits with its ``exit_code``."""
from __future__ import annotations

from pathlib import Path


class GenforgeError(Exception):
    """A user-facing error: bad input, missing prerequisite, failed check. Exit code 1."""

    exit_code = 1


class UsageError(GenforgeError):
    """The command line itself is wrong (unknown command, missing or malformed option). Exit code 2."""

    exit_code = 2


class ConfigError(GenforgeError, ValueError):
    """A setting in params.yaml or `--set` is unknown, of the wrong type or out of range; names the dotted key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class DataError(GenforgeError):
    """Input data that cannot be read or is malformed; names the offending file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ValidationFailed(GenforgeError):
    """The latest validation of a dataset failed (or is missing)."""


class ServingError(GenforgeError):
    """Base of everything serving raises at a user: resolving a model, reading its graphs, generating."""


class BusyError(GenforgeError):
    """Another genforge process holds the lock on the same thing (a data set, a family, the project's run):
    ``busy: <what> is in use by pid <pid> (<command>, since <time>)``; nothing was done, retry later."""


class StorageError(GenforgeError):
    """Writing or reading a file failed for a reason outside genforge (disk full, quota, read-only file
    system, permissions); names the path and the system's words for the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
