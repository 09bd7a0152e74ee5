"""Sample quality against training wall time: one family trained (the trainer's seeding and batches, without
MLflow), evaluated at chosen epochs by the gate's metrics (FID ratio on the domain classifier's features,
coverage, recall, class coverage, bits/dim of a likelihood family; N = evaluation.num_samples) on mnist5k.
For a family with a weight average (dcgan, wgan_gp: ``ema_decay``) each point is evaluated twice, with the
average and with the trained weights. Sample grids of each point go to ``.genforge/gate_ladder/curves/<label>/``.

``--checkpoints MODEL_DIR`` reuses a model the trainer already wrote (e.g. the gate ladder's
``.genforge/gate_ladder/mnist5k/<family>-s0/models/mnist5k/<family>``): the --eval-at epochs it has a
checkpoint of (``checkpoints/epoch-NNNN.pt``) are evaluated from those, with the model's own config.json,
and the epochs past its last checkpoint are trained on from it as the trainer resumes (weights, optimiser and
schedule state, the same per-epoch seeds), so a 20-epoch model gives a 40-epoch curve for the cost of 20 more.
The training seconds of a stored checkpoint are train.json's ``train_seconds`` shared among the epochs by the
gaps between the checkpoints' modification times (``checkpoint_seconds``), so they carry the load the machine
had during that training. A checkpoint of epoch k is a k-epoch model only when the schedule does not depend on
the total epochs (true of every family today: constant, warm-up or per-step exponential learning rates).

Usage: python benchmarks/quality_curve.py [--family dcgan] [--eval-at 5,10,25] [--set model.dcgan.lr_g=1e-4 ...]
       [--seed 0] [--label NAME] [--threads N] [--checkpoints MODEL_DIR] [--sampling temperature=0.7 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METRICS = ["fid", "prdc", "class_coverage", "class_kl", "mode_collapse", "conditional_accuracy", "sample_grid", "nll"]
SHOWN = ("fid_ratio", "coverage", "recall", "precision", "class_coverage", "conditional_accuracy", "bits_per_dim")


def checkpoint_seconds(model_dir: Path, epochs: list[int]) -> dict[int, float]:
    """Training seconds at the end of each of ``epochs``: train.json's ``train_seconds`` (the optimisation time
    of the whole run) shared among the epochs in proportion to the gaps between the modification times of
    ``model_dir/checkpoints/epoch-NNNN.pt`` (epoch 1, which has no earlier checkpoint, taken as long as epoch 2).
    Times that do not increase with the epoch (a copy that did not keep them) fall back to equal epochs.
    Raises FileNotFoundError naming the first missing checkpoint."""
    info = json.loads((model_dir / "train.json").read_text())
    total = float(info["train_seconds"])
    stamp = {int(c.stem.split("-")[1]): c.stat().st_mtime for c in (model_dir / "checkpoints").glob("epoch-*.pt")}
    for k in epochs:
        if k not in stamp:
            raise FileNotFoundError(f"{model_dir / 'checkpoints' / f'epoch-{k:04d}.pt'}: no checkpoint of epoch {k}")
    times = [stamp[k] for k in sorted(stamp)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    if not gaps or min(gaps) <= 0:
        gaps = [1.0] * len(times)
    else:
        gaps = [gaps[0], *gaps]
    ends = {k: sum(gaps[:i + 1]) for i, k in enumerate(sorted(stamp))}
    return {k: total * ends[k] / ends[max(stamp)] for k in epochs}


def evaluate_point(model, ds, ev, base: Path, out: Path, label: str, epoch: int, train_s: float) -> None:
    """Print the gate's metrics of ``model`` after ``epoch`` (with its weight average and, when it has one,
    the trained weights too); sample grids under ``out/epochNNN-<variant>``."""
    import torch

    from evaluation.suite import EvalContext
    from pipelines.evaluate import run_metrics

    variants = [("ema", None)]
    if getattr(model, "generator_ema", None) is not None:
        variants.append(("raw", model.generator_ema))
    for name, stash in variants:
        if name == "raw":
            model.generator_ema = None  # sample the trained weights
        model.eval()
        work = out / f"epoch{epoch:03d}-{name}"
        work.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            metrics = run_metrics(EvalContext(model, ds, ev, "cpu", work, base / "classifier"), METRICS)[0]
        if name == "raw":
            model.generator_ema = stash
        vals = "  ".join(f"{k} {float(metrics[k]['value']):.4g}" for k in SHOWN if k in metrics)
        print(f"{label} epoch {epoch} train {train_s:.0f} s [{name if len(variants) > 1 else 'model'}] "
              f"{vals}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="dcgan")
    ap.add_argument("--eval-at", default="5,10,25", help="epochs to evaluate after, e.g. 2,5,10")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help="a trained model folder: evaluate its epoch checkpoints instead of training; --eval-at "
                         "epochs past its last checkpoint are trained on from that checkpoint")
    ap.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE",
                    help="a sampling option for every point, e.g. temperature=0.7 (realnvp), steps=20 (ddpm)")
    args = ap.parse_args()

    import torch

    from benchmarks.gate_ladder import CACHE, _params, _prepared
    from pipelines.config import yaml_load
    from pipelines.evaluate import _settings
    from benchmarks.train import fit_epoch
    from pipelines.train import load_model, plan_training

    if args.threads:
        torch.set_num_threads(args.threads)
    if any("=" not in item for item in args.sampling):
        ap.error(f"--sampling takes KEY=VALUE, got {args.sampling}")
    sampling = {k: yaml_load(v) for k, v in (item.split("=", 1) for item in args.sampling)}
    eval_at = sorted(int(e) for e in args.eval_at.split(","))
    start_epoch, train_s = 0, 0.0
    if args.checkpoints is not None:
        spec = json.loads((args.checkpoints / "config.json").read_text())
        args.family = spec["family"]
        stored = sorted(int(c.stem.split("-")[1]) for c in (args.checkpoints / "checkpoints").glob("epoch-*.pt"))
        start_epoch = max((e for e in stored if e <= eval_at[-1]), default=0)
        try:
            seconds = checkpoint_seconds(args.checkpoints, [e for e in eval_at if e <= start_epoch] + [start_epoch])
        except FileNotFoundError as exc:
            ap.error(str(exc))
    params = _params([*args.sets, f"train.seed={args.seed}", f"model.{args.family}.epochs={eval_at[-1]}"])
    base = CACHE / params["data"]["name"]
    base.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{CACHE / 'mlflow.db'}")
    ds = _prepared(params, base)
    ev = _settings(params)
    ev["metrics"] = METRICS
    if args.checkpoints is not None:
        label = args.label or f"{args.family}-checkpoints-{args.checkpoints.parents[2].name}"
        out = CACHE / "curves" / label
        model = load_model(args.checkpoints, "cpu")
        model.set_sampling_defaults(**sampling)
        bs, seed = int(spec["training"]["batch_size"]), int(spec["config"]["seed"])
        print(f"{label}: {args.family} checkpoints of {args.checkpoints} to epoch {start_epoch}, then trained to "
              f"{eval_at[-1]}; threads {torch.get_num_threads()}", flush=True)
        for epoch in [e for e in eval_at if e <= start_epoch]:
            ckpt = torch.load(args.checkpoints / "checkpoints" / f"epoch-{epoch:04d}.pt", weights_only=True)
            model.load_state_dict(ckpt["training_state"]["model"])
            evaluate_point(model, ds, ev, base, out, label, epoch, seconds[epoch])
        if eval_at[-1] > start_epoch:  # resume as the trainer does: weights, optimiser and schedule state
            ckpt = torch.load(args.checkpoints / "checkpoints" / f"epoch-{start_epoch:04d}.pt", weights_only=True)
            model.load_training_state(ckpt["training_state"])
            train_s = seconds[start_epoch]
    else:
        _, model, settings, _ = plan_training(params, base, args.family)
        model.set_sampling_defaults(**sampling)
        label = args.label or "-".join([args.family, *(s.split(".")[-1] for s in args.sets)]) + f"-s{args.seed}"
        out = CACHE / "curves" / label
        bs, seed = int(settings["batch_size"]), int(settings["seed"])
        print(f"{label}: {args.family} batch {bs}, epochs {eval_at[-1]}, threads {torch.get_num_threads()}, "
              f"sets {args.sets}", flush=True)
    images, labels = ds.load("train")
    x_all = torch.from_numpy(images).float().div_(255.0)
    y_all = torch.from_numpy(labels)
    for epoch in range(start_epoch, eval_at[-1]):
        start = time.perf_counter()
        fit_epoch(model, x_all, y_all, epoch, bs, seed)
        train_s += time.perf_counter() - start
        if epoch + 1 in eval_at:
            evaluate_point(model, ds, ev, base, out, label, epoch + 1, train_s)


if __name__ == "__main__":
    main()
