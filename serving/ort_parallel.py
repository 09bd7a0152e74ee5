"""Data parallelism over the batch: one ONNX Runtime session run on slices of the batch from several threads.

numpy + onnxruntime only (never torch). ``BatchParallelSession(session, workers)`` wraps a session built with
ONE intra-op thread and answers ``run(output_names, feed)`` like it: when the feed's batch (axis 0 of every
input whose graph dimension 0 is symbolic, all the same length N) is at least ``2 x min_slice``, the batch is
cut into ``k = min(workers, N // min_slice)`` contiguous slices (``numpy.array_split`` bounds), slice 0 runs on
the calling thread and the others on a persistent pool of ``workers - 1`` threads, each a plain
``session.run`` (ONNX Runtime's Run is thread-safe, releases the GIL and, with one intra-op thread, computes
on the calling thread), and the outputs are concatenated on axis 0. Weights are shared (one session); no
per-op synchronisation between threads, so nothing waits for a woken thread and nothing spins.

Only graphs whose every output has a symbolic axis 0 and whose rows are independent of each other (no op mixes
samples: the image generators, denoisers, flows, the PixelCNN's steps) give the same result; such a row's
numbers do not depend on the slice it is computed in (ONNX Runtime's CPU kernels partition a batch by rows),
so the output is byte-identical to one call on the whole batch (tests/test_serving.py). A graph that cannot
be split (a fixed batch, an output without the batch) runs whole, on one thread. Every other attribute
(``get_inputs``, ``get_outputs``, ``get_providers``, ``io_binding`` ...) is the wrapped session's.
"""
from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import numpy as np

# smallest slice worth a thread of its own: below it the slices' fixed costs (a Run's set-up, the pool's
# hand-off, the concatenation) outweigh the second core (measured: README-PROPOSAL.md)
MIN_SLICE = 8


class BatchParallelSession:
    """An ``onnxruntime.InferenceSession`` (one intra-op thread) run on ``workers`` slices of the batch at once.

    ``run(output_names, feed, run_options=None)`` -> list of numpy arrays, as ``InferenceSession.run``; raises
    what the session raises. ``splittable``: whether the graph's inputs and outputs carry the batch on a
    symbolic axis 0 (otherwise every call runs whole)."""

    def __init__(self, session, workers: int, min_slice: int = MIN_SLICE):
        if workers < 1 or min_slice < 1:
            raise ValueError(f"workers and min_slice must be >= 1, got {workers}, {min_slice}")
        self.session, self.workers, self.min_slice = session, int(workers), int(min_slice)
        self._batch_inputs = frozenset(i.name for i in session.get_inputs() if _symbolic_axis0(i.shape))
        self.splittable = bool(self._batch_inputs) and all(_symbolic_axis0(o.shape) for o in session.get_outputs())
        self._pool = None
        if self.workers > 1 and self.splittable:
            self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="ort-batch")
            weakref.finalize(self, self._pool.shutdown, wait=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, Any], run_options=None) -> list[np.ndarray]:
        bounds = self._bounds(feed)
        if bounds is None:
            return self.session.run(output_names, feed, run_options)
        feeds = [{k: (v[a:b] if k in self._batch_inputs else v) for k, v in feed.items()}
                 for a, b in zip(bounds[:-1], bounds[1:])]
        futures = [self._pool.submit(self.session.run, output_names, f, run_options) for f in feeds[1:]]
        try:
            parts = [self.session.run(output_names, feeds[0], run_options)]
        finally:
            parts += [f.result() for f in futures]  # wait for every slice, even when the first one raised
        return [np.concatenate(outs, axis=0) for outs in zip(*parts)]

    def _bounds(self, feed: Mapping[str, Any]) -> list[int] | None:
        """Slice bounds [0, ..., N] over the batch, or None to run whole."""
        if self._pool is None:
            return None
        sizes = set()
        for name in self._batch_inputs:
            value = feed.get(name)
            shape = getattr(value, "shape", None)
            if not shape:  # missing (the session reports it), a scalar, or not an array: run whole
                return None
            sizes.add(shape[0])
        if len(sizes) != 1:
            return None
        n = sizes.pop()
        k = min(self.workers, n // self.min_slice)
        if k < 2:
            return None
        q, r = divmod(n, k)  # numpy.array_split's sizes: the first r slices one longer
        return [i * q + min(i, r) for i in range(k + 1)]


def _symbolic_axis0(shape) -> bool:
    """A graph dimension list whose axis 0 is named or unknown (the batch), not a fixed size."""
    return bool(shape) and not isinstance(shape[0], int)
