"""Process-wide defaults set before prefect/mlflow/GX/DVC import: no telemetry, state under the project."""
from __future__ import annotations

import logging
import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    # the ephemeral API server needs 8-15 s on 2 busy cores; Prefect's 20 s default is too tight
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LOG_PRINTS": "true",
    # MLflow's tqdm "Downloading artifacts" bars (fetching a version's ONNX graphs) stay out of the job's output
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # genforge's own loggers go to the flow-run logs too (the trainer's line per epoch), and say nothing about
    # a missing flow run when a stage runs outside one
    "PREFECT_LOGGING_EXTRA_LOGGERS": "genforge",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}

# loggers whose INFO lines are progress people follow (Prefect's root logger stops at WARNING)
PROGRESS_LOGGERS = ("genforge.train",)


def apply_defaults(root: Path) -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Prefect keeps its database and results under the project, never the user's home
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    for name in PROGRESS_LOGGERS:
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)


# Prefect logs a failed task or flow run with its traceback. For a genforge user error (contracts.errors:
# a bad setting, bad data, a full disk) the error line says everything; the traceback stays for --debug.
PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class UserErrorsWithoutTraceback(logging.Filter):
    """Drops the traceback (``exc_info``) of a log record whose exception is a ``GenforgeError``; the record's
    message (Prefect's "Task run failed with exception: ConfigError(...)") is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        from contracts.errors import GenforgeError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, GenforgeError):
            record.exc_info, record.exc_text = None, None
        return True


def user_error_tracebacks(show: bool) -> None:
    """Show (``--debug``) or hide the tracebacks of user errors in Prefect's task and flow run logs."""
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, UserErrorsWithoutTraceback)]:
            logger.removeFilter(f)
        if not show:
            logger.addFilter(UserErrorsWithoutTraceback())
