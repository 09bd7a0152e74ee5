"""Training throughput (images/s) of each family on mnist5k, and the trainer's overhead against a bare
PyTorch loop over the same model, batches and epochs (target: <= 10%).

The trainer's figure is the whole `pipelines.train.train` call: MLflow logging every `log_every` steps,
a sample grid and a checkpoint per epoch, the progress bar off. The MLflow store is created before timing
(a one-off set-up, not a per-training cost). Both run back to back in this process, same threads.
Each pair runs `--repeats` times, alternating, and the medians are compared (a 2-core machine's timings
wander by 10-20% from run to run). Usage: python benchmarks/train.py [--epochs N] [--families vae,dcgan]
[--repeats R]
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fit_epoch(model, x_all, y_all, epoch: int, batch_size: int, seed: int) -> None:
    """One epoch of ``fit_step`` in the trainer's order (pipelines.train: the epoch's seed, its permutation)."""
    import torch

    from pipelines.train import _epoch_seed

    n = len(x_all)
    torch.manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch)))
    model.train()
    for step in range(math.ceil(n / batch_size)):
        idx = order[step * batch_size:(step + 1) * batch_size]
        model.fit_step(x_all[idx], y_all[idx])
    model.end_epoch(x_all, y_all, epoch)


def bare_loop(model, x_all, y_all, epochs: int, batch_size: int, seed: int) -> float:
    """Seconds for ``epochs`` epochs of ``fit_epoch``: the trainer's work without the trainer."""
    start = time.perf_counter()
    for epoch in range(epochs):
        fit_epoch(model, x_all, y_all, epoch, batch_size, seed)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--families", default="vae,dcgan")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from benchmarks._common import print_table
    from pipelines.config import load_params
    from pipelines.env import apply_defaults
    from pipelines.prepare import prepare
    from pipelines.train import plan_training, train
    from pipelines.validate import validate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        apply_defaults(root)
        params = load_params(ROOT / "params.yaml")
        prepare(params, root)
        validate(params, root, root / "data" / "prepared" / "mnist5k")
        from pipelines import tracking
        tracking.client().search_experiments()  # create the store before timing
        for family in args.families.split(","):
            fam_params = load_params(ROOT / "params.yaml", [f"model.{family}.epochs={args.epochs}"])
            ds, model, settings, _ = plan_training(fam_params, root, family)
            images, labels = ds.load("train")
            x = torch.from_numpy(images).float().div_(255.0)
            y = torch.from_numpy(labels)
            bares, fulls = [], []
            for _ in range(args.repeats):
                model = plan_training(fam_params, root, family)[1]
                bares.append(bare_loop(model, x, y, args.epochs, int(settings["batch_size"]), int(settings["seed"])))
                shutil.rmtree(root / "models" / ds.name / family, ignore_errors=True)  # no resume: train it all
                start = time.perf_counter()
                train(fam_params, root, family, progress=False)
                fulls.append(time.perf_counter() - start)
            bare, full = statistics.median(bares), statistics.median(fulls)
            print(family, "bare", [round(b, 2) for b in bares], "trainer", [round(f, 2) for f in fulls])
            n = len(x) * args.epochs
            rows.append({"family": family, "epochs": args.epochs, "batch": settings["batch_size"], "repeats": args.repeats,
                         "bare s": f"{bare:.1f}", "trainer s": f"{full:.1f}",
                         "bare img/s": f"{n / bare:.0f}", "trainer img/s": f"{n / full:.0f}",
                         "overhead": f"{100 * (full - bare) / bare:+.1f}%"})
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', 'unset')}")
    print_table(rows, list(rows[0]))
    print("target: trainer overhead <= 10%")


if __name__ == "__main__":
    main()
