"""The smallest ONNX Runtime call worth splitting over the batch (serving/ort_parallel.py's SPLIT_MIN_S, MIN_SLICE).

For each graph of the given families (default config, seed 0, untrained seeded weights, exported by
``serving.export.export_model``) and each batch size, in one process, samples per wall second of:

- ``whole``: one session with one intra-op thread, the whole batch on the calling thread;
- ``split``: the same session in ``BatchParallelSession(workers=T, min_slice=1, split_min_s=0,
  chunks_per_worker=1)``: always split, one slice per thread;
- ``auto``: ``BatchParallelSession(workers=T)`` as serving builds it (splits calls that take >= SPLIT_MIN_S into
  CHUNKS_PER_WORKER chunks per thread of >= MIN_SLICE rows);
- ``chunks4``: (``--chunks4``) the same with 4 chunks per thread, taken by whichever thread is free;
- ``ops``: the generator's session with T intra-op threads (``--parallel ops``, no spinning).

Printed beside the whole call's milliseconds, so the crossover (split/whole >= 1) reads as a call length.
Interleaved rounds, medians; inputs as ``benchmarks/graph_speed.py`` draws them.

``--generate N``: instead, end to end: ``serving.generator.generate`` of N samples (batch 256, the model's
sampler defaults, shards written to a temp folder) per family at 1 thread, T threads ``parallel="ops"`` and T
threads ``parallel="batch"``, interleaved rounds, median samples/s; the shards' sha256 must agree.

    python benchmarks/batch_split.py [--families dcgan,vae,pixelcnn] [--threads 2] [--batch-sizes 1,2,4,...]
                                     [--rounds 5] [--seconds 0.3] [--chunks4] [--generate N]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.generate import _ensure_tunables  # noqa: E402  (re-executes with the Makefile's GLIBC_TUNABLES)


def main() -> None:
    _ensure_tunables()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="dcgan,vae,pixelcnn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3, help="per method per round")
    ap.add_argument("--chunks4", action="store_true", help="add 4 chunks per thread, taken by whichever is free")
    ap.add_argument("--generate", type=int, default=0, help="end to end: generate() N samples per run")
    args = ap.parse_args()
    if args.generate:
        return end_to_end(args)

    from benchmarks._common import print_table
    from benchmarks.graph_speed import _exported, _inputs, _rate, _session
    from serving.ort_parallel import MIN_SLICE, SPLIT_MIN_S, BatchParallelSession

    t = args.threads
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {t} threads; serving's MIN_SLICE "
          f"{MIN_SLICE}, SPLIT_MIN_S {SPLIT_MIN_S * 1e3:.1f} ms", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry, model, folder in _exported(args.families, Path(tmp)):
            for g in model.onnx_graphs():
                path = folder / f"{g.name}.onnx"
                one, ops = _session(path, 1), _session(path, t)
                split = BatchParallelSession(one, t, min_slice=1, split_min_s=0.0, chunks_per_worker=1)
                auto = BatchParallelSession(one, t)
                chunks4 = BatchParallelSession(one, t, chunks_per_worker=4)
                names = list(g.output_names)
                for batch in (int(b) for b in args.batch_sizes.split(",")):
                    feeds = _inputs(g, batch, int(model.config.num_classes))[0]
                    fns = {"whole": lambda: one.run(names, feeds), "split": lambda: split.run(names, feeds),
                           "auto": lambda: auto.run(names, feeds), "ops": lambda: ops.run(names, feeds),
                           **({"chunks4": lambda: chunks4.run(names, feeds)} if args.chunks4 else {})}
                    rates: dict[str, list[float]] = {k: [] for k in fns}
                    for fn in fns.values():
                        fn(), fn()
                    for _ in range(args.rounds):
                        for k, fn in fns.items():
                            rates[k].append(_rate(fn, batch, args.seconds)[0])
                    r = {k: statistics.median(v) for k, v in rates.items()}
                    row = {"graph": f"{entry}/{g.name}", "batch": batch, "whole ms": f"{1e3 * batch / r['whole']:.3f}",
                           **{f"{k}/whole": f"{r[k] / r['whole']:.2f}" for k in fns if k != "whole"}}
                    rows.append(row)
                    print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(f"\nsamples per wall second against one thread on the whole batch, median of {args.rounds} interleaved "
          f"rounds, {t} threads:")
    print_table(rows, list(rows[0]))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def end_to_end(args) -> None:
    import shutil

    from benchmarks._common import print_table
    from benchmarks.graph_speed import _exported
    from serving.generator import generate

    t = args.threads
    runs = {"1 thread": dict(threads=1), f"{t} ops": dict(threads=t, parallel="ops"),
            f"{t} batch": dict(threads=t, parallel="batch")}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; generate() of {args.generate} samples",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry, model, folder in _exported(args.families, Path(tmp)):
            rates: dict[str, list[float]] = {k: [] for k in runs}
            digests = set()
            for _ in range(args.rounds):
                for name, kw in runs.items():
                    out = Path(tmp) / "out"
                    res = generate(folder, args.generate, 0, out, batch_size=256, **kw)
                    rates[name].append(args.generate / res["run"]["seconds"])
                    digests.add(tuple(s["sha256"] for s in res["shards"]))
                    shutil.rmtree(out)
            r = {k: statistics.median(v) for k, v in rates.items()}
            rows.append({"family": entry, **{f"{k} samples/s": f"{v:,.1f}" for k, v in r.items()},
                         "batch/ops": f"{r[f'{t} batch'] / r[f'{t} ops']:.2f}",
                         "batch/1 thread": f"{r[f'{t} batch'] / r['1 thread']:.2f}", "same bytes": len(digests) == 1})
            print("  " + "  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    print(f"\ngenerate() samples per wall second (writes included), median of {args.rounds} interleaved rounds:")
    print_table(rows, list(rows[0]))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
