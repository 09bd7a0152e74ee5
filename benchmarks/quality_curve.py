"""Sample quality against training wall time: one family trained (the trainer's seeding and batches, without
MLflow), evaluated at chosen epochs by the gate's metrics (FID ratio on the domain classifier's features,
coverage, recall, class coverage; N = evaluation.num_samples) on mnist5k. For a family with a weight average
(dcgan, wgan_gp: ``ema_decay``) each point is evaluated twice, with the average and with the trained weights.
Sample grids of each point go to ``.genforge/quality_curve/<label>/``.

Usage: python benchmarks/quality_curve.py [--family dcgan] [--eval-at 5,10,25] [--set model.dcgan.lr_g=1e-4 ...]
       [--seed 0] [--label NAME] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METRICS = ["fid", "prdc", "class_coverage", "class_kl", "mode_collapse", "conditional_accuracy", "sample_grid"]
SHOWN = ("fid_ratio", "coverage", "recall", "precision", "class_coverage", "conditional_accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="dcgan")
    ap.add_argument("--eval-at", default="5,10,25", help="epochs to evaluate after, e.g. 2,5,10")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default=None)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import torch

    from benchmarks.gate_ladder import CACHE, _params, _prepared
    from evaluation.suite import EvalContext
    from pipelines.evaluate import _settings, run_metrics
    from pipelines.train import _epoch_seed, plan_training

    if args.threads:
        torch.set_num_threads(args.threads)
    eval_at = sorted(int(e) for e in args.eval_at.split(","))
    params = _params([*args.sets, f"train.seed={args.seed}", f"model.{args.family}.epochs={eval_at[-1]}"])
    base = CACHE / params["data"]["name"]
    base.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{CACHE / 'mlflow.db'}")
    ds = _prepared(params, base)
    ev = _settings(params)
    ev["metrics"] = METRICS
    _, model, settings, _ = plan_training(params, base, args.family)
    label = args.label or "-".join([args.family, *(s.split(".")[-1] for s in args.sets)]) + f"-s{args.seed}"
    out = CACHE / "curves" / label
    images, labels = ds.load("train")
    x_all = torch.from_numpy(images).float().div_(255.0)
    y_all = torch.from_numpy(labels)
    n, bs, seed = len(x_all), int(settings["batch_size"]), int(settings["seed"])
    print(f"{label}: {args.family} batch {bs}, epochs {eval_at[-1]}, threads {torch.get_num_threads()}, "
          f"sets {args.sets}", flush=True)
    train_s = 0.0
    for epoch in range(eval_at[-1]):
        start = time.perf_counter()
        torch.manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch)))
        model.train()
        for step in range(math.ceil(n / bs)):
            idx = order[step * bs:(step + 1) * bs]
            model.fit_step(x_all[idx], y_all[idx])
        train_s += time.perf_counter() - start
        if epoch + 1 not in eval_at:
            continue
        variants = [("ema", None)]
        if getattr(model, "generator_ema", None) is not None:
            variants.append(("raw", model.generator_ema))
        for name, stash in variants:
            if name == "raw":
                model.generator_ema = None  # sample the trained weights
            model.eval()
            work = out / f"epoch{epoch + 1:03d}-{name}"
            work.mkdir(parents=True, exist_ok=True)
            with torch.random.fork_rng(devices=[]):
                metrics = run_metrics(EvalContext(model, ds, ev, "cpu", work, base / "classifier"), METRICS)[0]
            if name == "raw":
                model.generator_ema = stash
            vals = "  ".join(f"{k} {float(metrics[k]['value']):.4g}" for k in SHOWN if k in metrics)
            print(f"{label} epoch {epoch + 1} train {train_s:.0f} s [{name if len(variants) > 1 else 'model'}] "
                  f"{vals}", flush=True)


if __name__ == "__main__":
    main()
