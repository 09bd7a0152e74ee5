"""Precision, recall, density and coverage (Naeem et al. 2020) on feature vectors, ties included.

The definitions are those of the reference ``prdc`` package (``compute_prdc``); on data without ties the
values are bit for bit the package's. They differ where the package is wrong: ties at a k-NN radius.

**Tie convention.** The k-NN ball of a reference point holds exactly k reference points: its centre and its
k-1 nearest neighbours. Without ties that is the package's open ball (``distance < radius``, the k-th
neighbour sits on the boundary, outside). When several points share the k-th place (the boundary holds more
than one point, which is what duplicates do: with k or more copies of a point its radius is 0 and every copy
is on the boundary), the ball is closed and the tied boundary points share the places left, each counting
``(k - points strictly inside) / points on the boundary``. So: precision, recall and coverage count a point
as inside when it is strictly inside or on a tied boundary; density sums those shares, which keeps the
density of an exact copy of the data at 1. Identical feature vectors are at distance exactly 0 (sklearn's
``|x|^2 - 2 x.y + |y|^2`` leaves a residue of up to ~1e-5 between copies, which would make copies look
distinct and the result depend on rounding); each distinct vector is processed once, weighted by how often
it occurs.

Why not the package's strict ``<``: with duplicates (blank or repeated images, real data sets have them) a
perfect generator scores 0 and is flagged as mode-collapsed (clovaai/generative-evaluation-prdc#7, still
open). Why not a plain ``<=`` everywhere: it puts the k-th neighbour inside every ball (k + 1 points), so an
exact copy of tie-free data would score density (k + 1) / k instead of 1, and every value would change.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from sklearn.metrics.pairwise import euclidean_distances

__all__ = ["prdc"]


def _prdc_input(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array N x d, got shape {arr.shape}")
    # like sklearn.metrics.pairwise_distances (what prdc calls): float32 stays float32 (sklearn
    # then computes in float64 chunks and rounds distances to float32), anything else is float64
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(arr)


def _row_chunk(n_cols: int, chunk_bytes: int) -> int:
    return max(1, int(chunk_bytes // (8 * max(n_cols, 1))))


def _row_ids(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One id per distinct row across both sets (first appearance order, real first): identical vectors
    (after -0.0 -> 0.0, in the common dtype) share an id. Returns (real ids, fake ids, number of ids)."""
    dtype = np.result_type(real.dtype, fake.dtype)
    seen: dict[bytes, int] = {}

    def ids(arr: np.ndarray) -> np.ndarray:
        out = np.empty(arr.shape[0], dtype=np.int64)
        for i, row in enumerate(arr):
            key = hashlib.blake2b((row.astype(dtype) + 0.0).tobytes(), digest_size=16).digest()
            out[i] = seen.setdefault(key, len(seen))
        return out

    real_ids, fake_ids = ids(real), ids(fake)
    return real_ids, fake_ids, len(seen)


class _Set:
    """One feature set as distances see it: ``rows`` (its distinct vectors, each once), ``mult`` (how often
    each occurs; None: all once), and how to get a block of rows' distances to every point of the set
    (``own``) and to the distinct vectors of another set (``cross``)."""

    def __init__(self, x: np.ndarray, ids: np.ndarray | None, table: np.ndarray | None):
        self.x, self.ids, self.table = x, ids, table
        if table is None:  # no duplicates anywhere: the points themselves
            self.uid, self.mult, self.rows = None, None, x
        else:
            self.uid, self.mult = np.unique(ids, return_counts=True)
            self.rows = table[self.uid]
        self.n, self.n_rows = x.shape[0], self.rows.shape[0]

    def distances(self, start: int, stop: int, other: "_Set | None") -> tuple[np.ndarray, np.ndarray | None]:
        """(distances of rows[start:stop] to every point of this set, each row's own copy at 0;
        distances to ``other``'s distinct rows, identical vectors at 0, or None)."""
        rows = np.arange(stop - start)
        if self.table is None:
            own = euclidean_distances(self.x[start:stop], self.x)
            own[rows, rows + start] = 0
            return own, None if other is None else euclidean_distances(self.x[start:stop], other.x)
        # one distance matrix to every distinct vector of both sets, so a vector and its copies in either
        # set are at exactly the same distance (ties compare equal)
        full = euclidean_distances(self.rows[start:stop], self.table)
        full[rows, self.uid[start:stop]] = 0
        return full[:, self.ids], None if other is None else full[:, other.uid]

    def block(self, n_cols: int, chunk_bytes: int) -> int:
        return _row_chunk(n_cols + (0 if self.table is None else self.table.shape[0]), chunk_bytes)


def _balls(own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k-NN radius of each row, share of a place each tied boundary point gets; 0 without ties).
    ``own`` holds each row's distances to every point of its set, its own copy at 0 (prdc's radius: the
    (k+1)-th smallest entry)."""
    radius = np.partition(own, k, axis=1)[:, k]
    inside = (own < radius[:, None]).sum(axis=1)
    on = (own == radius[:, None]).sum(axis=1)
    share = np.where(inside < k, (k - inside) / np.maximum(on, 1), 0.0)
    return radius, share


def _mean(values: np.ndarray, mult: np.ndarray | None) -> float:
    return float(values.mean()) if mult is None else float((values * mult).sum() / mult.sum())


def prdc(
    real_features: Any,
    fake_features: Any,
    nearest_k: int = 5,
    chunk_bytes: int = 256 * 2**20,
) -> dict[str, float]:
    """Precision, recall, density and coverage with k nearest neighbours (ties: see the module docstring).

    real = reference features, fake = generated features; the k-NN radius of a point is the distance to its
    k-th nearest neighbour within its own set; precision = share of fakes inside some real ball; recall =
    share of reals inside some fake ball; density = mean over fakes of (places they take in real balls) / k;
    coverage = share of reals whose nearest fake lies inside their ball. An exact copy of the data scores 1
    on all four, duplicates included.

    Distances are computed by row chunks (about ``chunk_bytes`` per block), so 10,000 x 10,000 needs a few
    hundred MB, not the three full matrices prdc holds. Float32 input stays float32, as in prdc (via
    sklearn); anything else is computed in float64. Raises ValueError for a set of nearest_k or fewer points.
    """
    real = _prdc_input(real_features, "real_features")
    fake = _prdc_input(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    k = int(nearest_k)
    if k < 1:
        raise ValueError("nearest_k must be >= 1")
    for name, arr in (("real", real), ("fake", fake)):
        if arr.shape[0] < k + 1:
            raise ValueError(f"{name} set has {arr.shape[0]} samples; need at least nearest_k + 1 = {k + 1}")
    real_ids, fake_ids, n_distinct = _row_ids(real, fake)
    table = None
    if n_distinct < real.shape[0] + fake.shape[0]:
        table = np.empty((n_distinct, real.shape[1]), dtype=np.result_type(real.dtype, fake.dtype))
        table[real_ids], table[fake_ids] = real, fake
    R, F = _Set(real, real_ids, table), _Set(fake, fake_ids, table)

    fake_radius, fake_share = np.empty(F.n_rows), np.empty(F.n_rows)
    step = F.block(F.n, chunk_bytes)
    for start in range(0, F.n_rows, step):
        stop = min(start + step, F.n_rows)
        fake_radius[start:stop], fake_share[start:stop] = _balls(F.distances(start, stop, None)[0], k)
    fake_tied = fake_share > 0

    places = np.zeros(F.n_rows, dtype=np.int64)       # real balls each distinct fake is strictly inside
    shared = np.zeros(F.n_rows, dtype=np.float64)     # places taken on tied boundaries
    in_ball = np.zeros(F.n_rows, dtype=bool)
    recall_hit = np.zeros(R.n_rows, dtype=bool)
    coverage_hit = np.zeros(R.n_rows, dtype=bool)
    step = R.block(R.n + F.n_rows, chunk_bytes)
    for start in range(0, R.n_rows, step):
        stop = min(start + step, R.n_rows)
        own, dist = R.distances(start, stop, F)
        radius, share = _balls(own, k)
        del own
        r = radius[:, None]
        inside = dist < r
        tie = (dist == r) & (share > 0)[:, None]
        mult = None if R.mult is None else R.mult[start:stop]
        places += inside.sum(axis=0) if mult is None else mult @ inside
        if tie.any():
            shared += (share if mult is None else share * mult) @ tie
        in_ball |= (inside | tie).any(axis=0)
        recall_hit[start:stop] = ((dist < fake_radius) | ((dist == fake_radius) & fake_tied)).any(axis=1)
        nearest = dist.min(axis=1)
        coverage_hit[start:stop] = (nearest < radius) | ((nearest == radius) & (share > 0))

    taken = places if not shared.any() else places + shared
    return {
        "precision": _mean(in_ball, F.mult),
        "recall": _mean(recall_hit, R.mult),
        "density": (1.0 / float(k)) * _mean(taken, F.mult),
        "coverage": _mean(coverage_hit, R.mult),
    }
