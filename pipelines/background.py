"""Side work off the training loop's critical path.

A training step on a small model takes a few milliseconds; an MLflow write to SQLite, a PNG encode or a
checkpoint save takes tens. The trainer hands them to one background thread, in order, so the next
steps run while they are written. A failed write is raised in the trainer at its next hand-off or when
it waits at the end, never lost.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch


def snapshot(value: Any) -> Any:
    """A CPU copy of a (nested) state dict that later optimisation steps cannot change under the writer."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


class BackgroundWriter:
    """Runs submitted calls one at a time, in submission order, on a single thread."""

    def __init__(self, name: str = "genforge-writer"):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._raise_failures()
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def _raise_failures(self) -> None:
        still = []
        for future in self._pending:
            if future.done():
                future.result()  # re-raises the writer's exception here, in the trainer
            else:
                still.append(future)
        self._pending = still

    def wait(self) -> None:
        """Block until everything submitted is written; raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            # on an error in the trainer, queued checkpoints still land before it propagates
            self._pool.shutdown(wait=True)
