"""Text generation speed: ONNX Runtime with the KV cache against the same graphs without it and against PyTorch
eager with its own KV cache; and the trainer's throughput against a bare PyTorch loop.

Generation (family gpt by default, its default config on the names data's shape, seeded untrained weights:
speed does not depend on training, and an untrained model writes every sequence to the full length, the
most steps a batch can take). For each batch size and thread count, in one process, in interleaved rounds
(one batch of each method per round; the median of ``--rounds`` is reported), on the same uniforms and labels:

- ORT + KV cache: ``serving.sampler_tokens.sample_from_uniforms`` (prefill on <bos>, then one ``decode`` call
  per token with past keys/values), sessions as ``genforge generate`` opens them (``serving.generator``);
- ORT recompute: the same loop rerunning the ``prefill`` graph on the whole prefix at every step (no cache);
- PyTorch eager + KV cache: ``model.sample_from_uniforms`` (the same prefill/decode modules, eager, with
  ``torch.set_num_threads(threads)``).

All three draw with the same rule (``contracts.token_sampling``), so they write the same tokens; tokens/s
counts the generated positions (characters and <eos>). Targets: cache/recompute >= 3, ORT/PyTorch >= 1.5.

Training (``--train``, on by default): ``pipelines.train.train`` (MLflow logging every ``log_every`` steps,
a text preview and a checkpoint per epoch, no progress bar) against a bare loop of ``fit_step`` over the same
batches, on a ``text:`` file of ``--train-names`` census names (so an epoch takes seconds, not minutes),
``--epochs`` epochs, ``--repeats`` alternating pairs, medians. Target: overhead <= 5 %. Printed: the loop
overhead (the trainer's epoch loops, ``train_seconds`` of train.json, against the bare loop: the per-step cost
of logging, the background writer and the progress bookkeeping), the per-run cost in seconds (everything else:
building the model, the MLflow run, previews, checkpoints, the commit), and the whole call's overhead, which
shrinks as the run grows (the default gpt run is 4 epochs of 663 steps).

    python benchmarks/text_generate.py [--families gpt,lstm] [--batch-sizes 64,256] [--threads 1,2]
                                       [--rounds 5] [--no-train | --no-generate] [--train-names 16000] [--epochs 2] [--repeats 3]
                                       [--train-threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAKEFILE_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def _ensure_tunables() -> None:
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = MAKEFILE_TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])


def _generated(seq) -> int:
    """Generated positions of int64 N x T sequences: everything after <bos> that is not <pad>."""
    return int((seq[:, 1:] != 0).sum())


def compare_generation(model, folder: Path, batch: int, threads: int, rounds: int) -> dict:
    import numpy as np
    import torch

    from serving.generator import _load_session
    from serving.sampler_tokens import sample_from_uniforms

    torch.set_num_threads(threads)
    spec = model.sampler()
    sessions = {g: _load_session(folder / f"{g}.onnx", ["CPUExecutionProvider"], threads) for g in ("prefill", "decode")}
    rng = np.random.default_rng(0)
    u = rng.random((batch, model.length - 1), dtype=np.float32)
    labels = np.arange(batch, dtype=np.int64) % max(model.num_classes, 1)
    tl = torch.from_numpy(labels)
    methods = {
        "ort_kv": lambda: sample_from_uniforms(spec, sessions, u, labels),
        "ort_recompute": lambda: sample_from_uniforms(spec, sessions, u, labels, cached=False),
        "torch_kv": lambda: model.sample_from_uniforms(u, tl, spec).numpy(),
    }
    outs = {k: fn() for k, fn in methods.items()}  # warm-up, and the tokens each writes
    same = all(np.array_equal(outs["ort_kv"], o) for o in outs.values())
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(rounds):
        for k, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    tokens = _generated(outs["ort_kv"])
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    return {"tokens": tokens, "rate": rate, "same_tokens": same}


def compare_training(families: list[str], names: int, epochs: int, repeats: int, threads: int) -> list[dict]:
    import torch

    from benchmarks.train import bare_loop

    from benchmarks.text_data import names_arrays
    from contracts.modalities.tokens import tokenizer
    from pipelines import tracking
    from pipelines.config import load_params
    from pipelines.env import apply_defaults
    from pipelines.prepare import prepare, prepared_dir
    from pipelines.train import plan_training, train
    from pipelines.validate import validate

    torch.set_num_threads(threads)
    spec, x, y, _, _ = names_arrays()
    tok = tokenizer(spec.vocab)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:names].numpy()
    lines = [f"{spec.class_names[y[i]]}\t{tok.decode(x[i])}" for i in sorted(pick)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "names.tsv").write_text("\n".join(lines) + "\n")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        apply_defaults(root)
        base = [f"data.source=text:{root / 'names.tsv'}", "data.name=names-bench", "validation.min_train_samples=100",
                "validation.min_test_samples=10"]
        params = load_params(ROOT / "params-names.yaml", base)
        prepare(params, root)
        validate(params, root, prepared_dir(root, params))
        tracking.client().search_experiments()  # create the store before timing
        for family in families:
            fam_params = load_params(ROOT / "params-names.yaml", [*base, f"model.{family}.epochs={epochs}"])
            ds, model, settings, _ = plan_training(fam_params, root, family)
            tokens, labels = ds.load("train")
            xt, yt = torch.from_numpy(tokens.astype("int64")), torch.from_numpy(labels)
            bares, fulls, loops = [], [], []
            for _ in range(repeats):
                model = plan_training(fam_params, root, family)[1]
                bares.append(bare_loop(model, xt, yt, epochs, int(settings["batch_size"]), int(settings["seed"])))
                shutil.rmtree(root / "models" / ds.name / family, ignore_errors=True)  # no resume: train it all
                start = time.perf_counter()
                train(fam_params, root, family, progress=False)
                fulls.append(time.perf_counter() - start)
                info = json.loads((root / "models" / ds.name / family / "train.json").read_text())
                loops.append(float(info["train_seconds"]))
            bare, full, loop = statistics.median(bares), statistics.median(fulls), statistics.median(loops)
            n = int((xt[:, 1:] != 0).sum()) * epochs
            print(f"  {family}: bare {[round(b, 2) for b in bares]} s, trainer {[round(f, 2) for f in fulls]} s "
                  f"(its epoch loops {[round(t, 2) for t in loops]} s)", flush=True)
            rows.append({"family": family, "train names": len(xt), "epochs": epochs, "batch": settings["batch_size"],
                         "threads": threads, "bare tok/s": f"{n / bare:,.0f}", "trainer loop tok/s": f"{n / loop:,.0f}",
                         "loop overhead": f"{100 * (loop - bare) / bare:+.1f}%",
                         "per-run cost s": f"{full - loop:.2f}", "trainer tok/s": f"{n / full:,.0f}",
                         "overhead": f"{100 * (full - bare) / bare:+.1f}%"})
    return rows


def main() -> None:
    _ensure_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="gpt")
    ap.add_argument("--batch-sizes", default="64,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-generate", action="store_true", help="the training comparison only")
    ap.add_argument("--train-families", default="gpt")
    ap.add_argument("--train-names", type=int, default=16000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-threads", type=int, default=1)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from benchmarks._common import print_table
    from benchmarks.text_data import names_arrays
    from genmodels import build_model
    from serving.export import export_model

    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}; torch {torch.__version__}, onnxruntime "
          f"{ort.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    spec = names_arrays()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in [] if args.no_generate else args.families.split(","):
            model = build_model(family, {"data": spec, "seed": 0}).eval()
            folder = Path(tmp) / family
            report = export_model(model, folder)
            params = sum(p.numel() for p in model.parameters())
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                for threads in (int(t) for t in args.threads.split(",")):
                    r = compare_generation(model, folder, batch, threads, args.rounds)
                    rate = r["rate"]
                    rows.append({"family": family, "params": f"{params / 1e6:.2f}M", "T": model.length,
                                 "batch": batch, "threads": threads,
                                 "ORT+KV tok/s": f"{rate['ort_kv']:,.0f}",
                                 "ORT recompute tok/s": f"{rate['ort_recompute']:,.0f}",
                                 "PyTorch+KV tok/s": f"{rate['torch_kv']:,.0f}",
                                 "KV/recompute": f"{rate['ort_kv'] / rate['ort_recompute']:.2f}",
                                 "ORT/PyTorch": f"{rate['ort_kv'] / rate['torch_kv']:.2f}",
                                 "same tokens": r["same_tokens"], "parity": f"{report['max_abs_error']:.1e}"})
                    print(f"  {rows[-1]}", flush=True)
    if rows:
        print(f"\nGeneration, median of {args.rounds} interleaved rounds (targets: KV/recompute >= 3, "
              "ORT/PyTorch >= 1.5):")
        print_table(rows, list(rows[0]))
    if not args.no_train:
        train_rows = compare_training(args.train_families.split(","), args.train_names, args.epochs, args.repeats,
                                      args.train_threads)
        print(f"\nTraining: pipelines.train.train vs a bare fit_step loop, median of {args.repeats} alternating pairs "
              "(target: overhead <= 5%):")
        print_table(train_rows, list(train_rows[0]))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (a shared machine: compare "
          "the columns of one row)")


if __name__ == "__main__":
    main()
