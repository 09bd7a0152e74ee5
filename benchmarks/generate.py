"""Serving speed: the ONNX Runtime generator path against PyTorch eager, and generate()'s peak RSS.

For each family (default configs, untrained seeded weights: speed does not depend on training),
on the same model, batch size and thread count, in one process:

- ORT: the generator's own sessions (``serving.generator._load_session``: ORT_ENABLE_ALL, the
  thread count, no spinning) driven by ``serving.samplers.run_sampler`` (numpy noise -> graph ->
  clip to [0, 1]). Compute only: disk writes are EXCLUDED here (they are in the RSS run below).
- PyTorch eager: ``model.sample(batch, generator=g)`` (torch.randn -> the same decoder/generator
  -> [0, 1], under no_grad), ``torch.set_num_threads(threads)``.

The two are timed in interleaved rounds (ORT block, then PyTorch block, each ~1 s), and the median
of the rounds is reported, so load from other processes hits both sides alike.

Then a fresh subprocess runs the full ``generate(...)`` (shards, checksums, fsync, manifest,
preview) for 100,000 samples into a temp folder and reports its peak RSS (target <= 1 GiB: memory
is bounded by the batch, not by N) and its end-to-end samples/s, disk writes INCLUDED.

Everything runs under the Makefile's GLIBC_TUNABLES (the script re-executes itself with it when
the variable is unset; glibc reads it at start-up), which is printed.

    python benchmarks/generate.py [--families 'vae,cvae,dcgan[conditional=true]'] [--batch-size 256] [--threads 1,2]
                                  [--rounds 5] [--rss-n 100000] [--tune]
    python benchmarks/generate.py --cli 'generate mnist5k-ddpm@champion -n 10000 --out outputs/x'   # in a project

``--cli ARGS`` measures the command line itself instead: `genforge ARGS` in a fresh subprocess in the
current directory (the project: its registry, its generator cache), its peak RSS (VmHWM, read at exit),
wall seconds (start-up, registry resolution and writes included) and CPU seconds (user + system, the
measure that holds on a shared machine), and prints the command's own summary.

``--tune`` adds the session options and batch sizes tried before settling (spinning on/off,
sequential/parallel execution, batch 64/256/1024).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAKEFILE_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
RSS_TARGET_MIB = 1024

RSS_CASE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from serving.generator import generate
out = generate({model!r}, {n}, 0, {out!r}, batch_size={bs}, threads={threads})
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork + exec
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"peak_rss_mib": hwm / 1024, "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": seconds,
                  "samples": sum(s["count"] for s in out["shards"]), "shards": len(out["shards"]),
                  "provider": out["provider"], "torch_loaded": "torch" in sys.modules}}))
"""


CLI_CASE = r"""
import atexit, json, os, runpy, sys, time
t0 = time.perf_counter()
def _report():
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    with open({report!r}, "w") as f:
        json.dump({{"peak_rss_mib": hwm / 1024, "seconds": time.perf_counter() - t0,
                   "cpu_seconds": os.times().user + os.times().system,
                   "torch_loaded": "torch" in sys.modules}}, f)
atexit.register(_report)
sys.path.insert(0, {root!r})
sys.argv = ["genforge", *{args!r}]
runpy.run_module("pipelines.cli", run_name="__main__")
"""


def _cli_run(args: str) -> None:
    """`genforge ARGS` in a fresh subprocess here; prints its output tail, peak RSS and wall seconds."""
    import shlex

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        code = CLI_CASE.format(report=str(report), root=str(ROOT), args=shlex.split(args))
        print(f"genforge {args}  (load average {os.getloadavg()[0]:.2f})", flush=True)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        print("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:]))
        if proc.returncode != 0 or not report.exists():
            raise SystemExit(f"error: genforge {args} exited {proc.returncode}")
        r = json.loads(report.read_text())
    print(f"peak RSS (VmHWM) {r['peak_rss_mib']:.0f} MiB (target <= {RSS_TARGET_MIB}), wall {r['seconds']:.1f} s "
          f"end to end, CPU {r['cpu_seconds']:.1f} s (user + system: what a stopped or starved process does not "
          f"count), torch imported: {r['torch_loaded']}")


def _ensure_tunables() -> None:
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = MAKEFILE_TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])


def _rate(fn, batch: int, seconds: float = 1.0) -> float:
    """Samples/s of ``fn`` (one batch per call) over about ``seconds``."""
    reps, elapsed = 0, 0.0
    start = time.perf_counter()
    while elapsed < seconds or reps < 3:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
    return reps * batch / elapsed


def _compare(model, spec, sessions, batch: int, threads: int, rounds: int) -> tuple[float, float]:
    import numpy as np
    import torch

    from serving.samplers import run_sampler

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    # conditional models: every class in turn on both sides (model.sample's default without labels)
    labels = np.arange(batch, dtype=np.int64) % model.config.num_classes if spec.get("conditional") else None
    ort_fn = lambda: run_sampler(spec, sessions, batch, rng, labels)  # noqa: E731
    torch_fn = lambda: model.sample(batch, generator=g)  # noqa: E731
    for _ in range(2):  # warm-up: allocator, ORT arena, oneDNN primitives
        ort_fn(), torch_fn()
    ort_r, torch_r = [], []
    for _ in range(rounds):
        ort_r.append(_rate(ort_fn, batch))
        torch_r.append(_rate(torch_fn, batch))
    return statistics.median(ort_r), statistics.median(torch_r)


def _sessions(model_dir: Path, threads: int, **config):
    import onnxruntime as ort

    from serving.generator import _load_session, load_model_dir

    spec, files, _ = load_model_dir(model_dir)
    sessions = {name: _load_session(path, ["CPUExecutionProvider"], threads) for name, path in files.items()}
    if config:  # a tuning variant: the generator's options, then these
        sessions = {}
        for name, path in files.items():
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            opts.execution_mode = config.get("mode", ort.ExecutionMode.ORT_SEQUENTIAL)
            opts.add_session_config_entry("session.intra_op.allow_spinning", config.get("spin", "0"))
            sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return spec, sessions


def _rss_run(model_dir: Path, n: int, batch: int, threads: int, work: Path) -> dict:
    code = RSS_CASE.format(root=str(ROOT), model=str(model_dir), n=n, out=str(work / "out"), bs=batch, threads=threads)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    _ensure_tunables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="vae,dcgan")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma list")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rss-n", type=int, default=100_000)
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--cli", default=None, metavar="ARGS", help="instead: peak RSS and wall time of `genforge ARGS`")
    args = ap.parse_args()
    if args.cli:
        return _cli_run(args.cli)
    threads_list = sorted({int(t) for t in args.threads.split(",")})

    import onnxruntime as ort
    import torch

    from benchmarks._common import print_table
    from genmodels import get_family
    from serving.export import export_model

    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}  (both sides, and the RSS subprocess)")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    rows, rss_rows, tune_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in args.families.split(","):
            # "dcgan[conditional=true]": a family with config values (YAML scalars), e.g. its conditional mode
            family, _, extra = entry.partition("[")
            values = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in extra.rstrip("]").split(";") if kv)}
            try:
                cls = get_family(family)
            except (ImportError, KeyError) as e:
                print(f"{family}: not available ({e})")
                continue
            model = cls.from_config({"seed": 0, **values}).eval()
            family = entry
            model_dir = Path(tmp) / "".join(c if c.isalnum() else "_" for c in entry)
            report = export_model(model, model_dir)
            params = sum(p.numel() for p in model.parameters())
            shape = "x".join(map(str, model.config.image_shape))
            for threads in threads_list:
                spec, sessions = _sessions(model_dir, threads)
                ort_s, torch_s = _compare(model, spec, sessions, args.batch_size, threads, args.rounds)
                rows.append({"family": family, "image": shape, "params": f"{params / 1e6:.2f}M",
                             "batch": args.batch_size, "threads": threads,
                             "ORT samples/s": f"{ort_s:,.0f}", "PyTorch samples/s": f"{torch_s:,.0f}",
                             "ORT/PyTorch": f"{ort_s / torch_s:.2f}",
                             "parity max err": f"{report['max_abs_error']:.1e}"})
                print(f"  {rows[-1]}", flush=True)
                if args.tune:
                    variants = [("generator options (no spin)", {}, args.batch_size),
                                ("spinning on", {"spin": "1"}, args.batch_size),
                                ("parallel execution", {"mode": ort.ExecutionMode.ORT_PARALLEL}, args.batch_size),
                                ("batch 64", {}, 64), ("batch 1024", {}, 1024)]
                    for name, config, batch in variants:
                        spec_v, sess_v = _sessions(model_dir, threads, **config)
                        o, t = _compare(model, spec_v, sess_v, batch, threads, max(2, args.rounds // 2))
                        tune_rows.append({"family": family, "threads": threads, "variant": name, "batch": batch,
                                          "ORT samples/s": f"{o:,.0f}", "PyTorch samples/s": f"{t:,.0f}",
                                          "ORT/PyTorch": f"{o / t:.2f}"})
                        print(f"  {tune_rows[-1]}", flush=True)
            threads = threads_list[-1]
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                r = _rss_run(model_dir, args.rss_n, args.batch_size, threads, Path(work))
            rss_rows.append({"family": family, "n": f"{r['samples']:,}", "batch": args.batch_size, "threads": threads,
                             "shards": r["shards"], "wall s": f"{r['seconds']:.1f}",
                             "samples/s (with writes)": f"{r['samples'] / r['seconds']:,.0f}",
                             "peak RSS MiB": f"{r['peak_rss_mib']:.0f}", "target MiB": RSS_TARGET_MIB,
                             "torch imported": r["torch_loaded"]})
            print(f"  {rss_rows[-1]}", flush=True)

    print("\nORT generator path (compute only, no disk writes) vs PyTorch eager model.sample, median of "
          f"{args.rounds} interleaved rounds (target ORT/PyTorch >= 1.0):")
    print_table(rows, list(rows[0]))
    if tune_rows:
        print("\nTuning (ORT session options and batch size; PyTorch at the same batch and threads):")
        print_table(tune_rows, list(tune_rows[0]))
    print(f"\ngenerate() in a fresh subprocess, {args.rss_n:,} samples, disk writes included "
          f"(peak RSS target <= {RSS_TARGET_MIB} MiB):")
    print_table(rss_rows, list(rss_rows[0]))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (a shared machine: "
          "compare the two sides of one row, not rows of different runs)")


if __name__ == "__main__":
    main()
