"""Errors a user can fix: the one hierarchy lives in ``contracts.errors``; re-exported here for callers
that import it from the pipelines layer."""
from contracts.errors import ConfigError, DataError, GenforgeError, ServingError, UsageError, ValidationFailed

__all__ = ["ConfigError", "DataError", "GenforgeError", "ServingError", "UsageError", "ValidationFailed"]
