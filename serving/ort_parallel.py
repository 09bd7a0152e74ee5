"""Data parallelism over the batch: one ONNX Runtime session run on slices of the batch from several threads.

numpy + onnxruntime only (never torch). ``BatchParallelSession(session, workers)`` wraps a session built with
ONE intra-op thread and answers ``run(output_names, feed)`` like it: the batch (axis 0 of every input whose
graph dimension 0 is symbolic, all the same length N) is cut into ``k = min(workers x chunks_per_worker,
N // min_slice)`` contiguous chunks (``numpy.array_split``'s sizes; one chunk per thread by default); the
calling thread and a persistent pool of ``workers - 1`` threads each take the next chunk until none is left,
each a plain ``session.run`` (ONNX Runtime's Run is thread-safe, releases the GIL and, with one intra-op
thread, computes on the calling thread), and the outputs are concatenated on axis 0 in chunk order. Weights are
shared (one session); there is no per-op synchronisation between threads, so nothing waits for a woken thread
and nothing spins (README "ONNX Runtime against PyTorch, graph by graph": at 2 threads the GAN generators run
1.40-1.46x torch.compile where ONNX Runtime's intra-op threads give 0.75-0.78x).

A call too cheap to gain from a second thread runs whole on the calling thread: the wrapper keeps the seconds
per row of its calls (a moving average, timed on the calling thread) and splits only when the whole batch
would take at least ``split_min_s`` (a PixelCNN pixel step, ~0.2 ms for 256 rows, costs more in hand-offs than
it saves). Which way a call runs never changes its numbers: every row is computed alone by the same kernels
whatever chunk it is in (ONNX Runtime's CPU kernels partition work by rows, never summing across them), so
the output is byte-identical to one call on the whole batch (tests/test_ort_parallel.py).

Only graphs whose every output has a symbolic axis 0 and whose rows are independent of each other (no op mixes
samples: the image generators and decoders, denoisers, flows, the PixelCNN's steps) may be wrapped;
``load_sessions`` wraps those of the sampler kinds in ``BATCH_KINDS``. Every other attribute (``get_inputs``,
``get_outputs``, ``get_providers``, ``io_binding`` ...) is the wrapped session's.
"""
from __future__ import annotations

import itertools
import time
import weakref
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MIN_SLICE = 8         # rows: the smallest chunk
CHUNKS_PER_WORKER = 1  # chunks per thread (more: a thread the OS holds back leaves its chunks to the others;
#                        4 measured no faster, quiet or loaded: README-PROPOSAL.md)
SPLIT_MIN_S = 5e-4    # seconds: a whole batch cheaper than this runs on the calling thread alone (measured:
#                       README-PROPOSAL.md, "smallest call worth splitting")
# sampler kinds whose graphs' rows are independent (serving.samplers): the token sampler's decode step updates
# its cache in place through an io_binding (a whole-batch buffer) and keeps ONNX Runtime's intra-op threads
BATCH_KINDS = frozenset({"direct", "ddim", "flow", "autoregressive"})
PARALLEL_MODES = ("batch", "ops")


class BatchParallelSession:
    """An ``onnxruntime.InferenceSession`` (one intra-op thread) run on chunks of the batch by ``workers`` threads
    at once. ``run(output_names, feed, run_options=None)`` -> list of numpy arrays, as ``InferenceSession.run``;
    raises what the session raises (once every thread is out of the session). ``min_slice`` (rows),
    ``split_min_s`` (seconds) and ``chunks_per_worker`` default to ``MIN_SLICE``, ``SPLIT_MIN_S`` and
    ``CHUNKS_PER_WORKER`` (see the module doc); ValueError for workers or min_slice < 1. ``splittable``: whether
    the graph's inputs and outputs carry the batch on a symbolic axis 0 (otherwise every call runs whole)."""

    def __init__(self, session, workers: int, min_slice: int | None = None, split_min_s: float | None = None,
                 chunks_per_worker: int | None = None):
        min_slice = MIN_SLICE if min_slice is None else min_slice
        self.chunks_per_worker = max(1, CHUNKS_PER_WORKER if chunks_per_worker is None else int(chunks_per_worker))
        split_min_s = SPLIT_MIN_S if split_min_s is None else split_min_s
        if workers < 1 or min_slice < 1 or split_min_s < 0:
            raise ValueError(f"workers and min_slice must be >= 1 and split_min_s >= 0, got {workers}, {min_slice}, "
                             f"{split_min_s}")
        self.session, self.workers, self.min_slice, self.split_min_s = session, int(workers), int(min_slice), split_min_s
        self._batch_inputs = frozenset(i.name for i in session.get_inputs() if _symbolic_axis0(i.shape))
        self.splittable = bool(self._batch_inputs) and all(_symbolic_axis0(o.shape) for o in session.get_outputs())
        self.row_s: float | None = None  # moving average of seconds per row on one thread (None: not timed yet)
        self._pool = None
        if self.workers > 1 and self.splittable:
            self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="ort-batch")
            weakref.finalize(self, self._pool.shutdown, wait=False)

    def __getattr__(self, name: str) -> Any:
        if name == "session":  # not set yet (copy, unpickling): no recursion through this method
            raise AttributeError(name)
        return getattr(self.session, name)

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, Any], run_options=None) -> list[np.ndarray]:
        bounds = self.bounds(feed)
        if bounds is None:
            return self.session.run(output_names, feed, run_options)
        if len(bounds) == 2:  # whole, timed (to see when splitting would pay)
            return self._timed(bounds[1], self.session.run, output_names, feed, run_options)
        k = len(bounds) - 1
        parts: list[Any] = [None] * k
        chunks, failed = itertools.count(), []  # next(count) is atomic under the GIL: each chunk runs once

        def take(timed: bool) -> None:
            while not failed and (i := next(chunks)) < k:
                a, b = bounds[i], bounds[i + 1]
                f = {name: (v[a:b] if name in self._batch_inputs else v) for name, v in feed.items()}
                try:
                    parts[i] = (self._timed(b - a, self.session.run, output_names, f, run_options) if timed
                                else self.session.run(output_names, f, run_options))
                except BaseException:
                    failed.append(i)
                    raise

        futures = [self._pool.submit(take, False) for _ in range(self.workers - 1)]
        try:
            take(True)
        finally:
            wait(futures)  # every thread is out of the session before an error is raised
        for f in futures:
            f.result()
        return [np.concatenate(outs, axis=0) for outs in zip(*parts)]

    def bounds(self, feed: Mapping[str, Any]) -> list[int] | None:
        """Row bounds [0, ..., N] of the chunks ``run`` would compute ``feed`` in ([0, N]: whole, timed), or
        None (not splittable here: a single thread, a missing or scalar batch input, unequal lengths)."""
        if self._pool is None:
            return None
        sizes = set()
        for name in self._batch_inputs:
            shape = getattr(feed.get(name), "shape", None)
            if not shape:  # missing (the session reports it), a scalar, or not an array: run whole
                return None
            sizes.add(shape[0])
        if len(sizes) != 1:
            return None
        n = sizes.pop()
        k = min(self.workers * self.chunks_per_worker, n // self.min_slice)
        if k < 2 or (self.row_s is not None and self.row_s * n < self.split_min_s):
            return [0, n]
        q, r = divmod(n, k)  # numpy.array_split's sizes: the first r chunks one row longer
        return [i * q + min(i, r) for i in range(k + 1)]

    def _timed(self, rows: int, fn: Callable, *args):
        start = time.perf_counter()
        out = fn(*args)
        row_s = (time.perf_counter() - start) / max(rows, 1)
        self.row_s = row_s if self.row_s is None else 0.7 * self.row_s + 0.3 * row_s
        return out


def load_sessions(graph_files: Mapping[str, Any], load: Callable[[Any, int | None], Any], threads: int | None,
                  parallel: str, kind: str, providers: Sequence[str]) -> dict[str, Any]:
    """{graph name: session} for a model's graphs. ``load(path, intra_op_threads)`` builds one ORT session.

    ``parallel="batch"`` (CPU, sampler kinds in ``BATCH_KINDS``, ``threads`` != 1): one-intra-op-thread sessions
    wrapped in ``BatchParallelSession`` with ``threads`` workers (None or 0: the CPUs this process may run on);
    otherwise ``load(path, threads)``, ONNX Runtime's intra-op threads ("ops"). Raises ValueError for an
    unknown ``parallel``."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
    workers = int(threads) if threads else _cpus()
    if parallel == "ops" or kind not in BATCH_KINDS or workers == 1 or providers[0] != "CPUExecutionProvider":
        return {name: load(path, threads) for name, path in graph_files.items()}
    return {name: BatchParallelSession(load(path, 1), workers) for name, path in graph_files.items()}


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _symbolic_axis0(shape) -> bool:
    """A graph dimension list whose axis 0 is named or unknown (the batch), not a fixed size."""
    return bool(shape) and not isinstance(shape[0], int)
