"""Errors a user can fix. The CLI prints them as one coloured line (no traceback unless --debug)."""
from __future__ import annotations

from pathlib import Path


class GenforgeError(Exception):
    """A user-facing error: bad input, missing prerequisite, failed check."""


class DataError(GenforgeError):
    """Input data that cannot be read or is malformed; names the offending file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ValidationFailed(GenforgeError):
    """The latest validation of a dataset failed (or is missing)."""
