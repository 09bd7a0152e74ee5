"""The standard one-class protocol on mnist5k: one digit is normal (train on its train images only), the
other nine are anomalous; AUROC of the VAE's anomaly score on the test split, mean over the ten digits.
Printed beside the published anchor for full MNIST (Deep SVDD, mean AUROC 0.948), which trains on ~6,000
images per digit where mnist5k has ~400.
Usage: python benchmarks/anomaly_one_class.py [--epochs N] [--score elbo|recon]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEEP_SVDD_MNIST = 0.948


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--score", default="elbo")
    args = ap.parse_args()

    import numpy as np
    import torch

    from benchmarks._common import print_table
    from evaluation.anomaly import anomaly_metrics
    from genmodels.vae import VAE
    from pipelines.sources import load_mnist5k

    raw = load_mnist5k()
    x_train = torch.from_numpy(raw.train_images).float() / 255.0
    x_test = torch.from_numpy(raw.test_images).float() / 255.0
    rows, aurocs = [], []
    started = time.perf_counter()
    for digit in range(10):
        torch.manual_seed(digit)
        normal = x_train[torch.from_numpy(raw.train_labels == digit)]
        model = VAE.from_config({"image_shape": [1, 28, 28], "score": args.score, "seed": digit})
        batch = int(model.config.batch_size)
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            order = torch.randperm(len(normal))
            for i in range(math.ceil(len(normal) / batch)):
                idx = order[i * batch:(i + 1) * batch]
                model.fit_step(normal[idx], torch.zeros(len(idx), dtype=torch.long))
        model.eval()
        with torch.no_grad():
            scores = torch.cat([model.score(x_test[i:i + 250]) for i in range(0, len(x_test), 250)]).numpy()
        is_normal = raw.test_labels == digit
        m = anomaly_metrics(scores[is_normal], scores[~is_normal])
        aurocs.append(m["auroc"])
        rows.append({"normal digit": digit, "train images": len(normal), "AUROC": f"{m['auroc']:.3f}",
                     "AUPR": f"{m['aupr']:.3f}", "train s": f"{time.perf_counter() - t0:.1f}"})
    print_table(rows, list(rows[0]))
    print(f"mean AUROC {np.mean(aurocs):.3f} (VAE, score={args.score}, {args.epochs} epochs, mnist5k) "
          f"vs Deep SVDD {DEEP_SVDD_MNIST} on full MNIST; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
