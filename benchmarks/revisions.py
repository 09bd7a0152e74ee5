"""Two checkouts of genforge side by side: the evaluate stage's wall time on the same trained model and data,
and the batch generator's samples/s (disk writes included) on the same exported ONNX folder.

Each revision evaluates the same project (a copy per revision, so neither reads the other's outputs) in a fresh
subprocess with its own code on PYTHONPATH; the runs alternate (A, B, A, B, ...) so load from other processes
hits both alike, and the medians are compared as a ratio. The domain classifier is trained once per copy
before timing (it is cached by data version in both revisions), so the figure is the evaluation itself:
sampling, features, every metric and plot, metrics.json, the MLflow logging.

    python benchmarks/revisions.py OLD_CHECKOUT NEW_CHECKOUT --project DIR [--families vae,dcgan] [--repeats 3]
                                   [--generate N] [--skip-evaluate]

With --generate N, each revision's `serving.generator.generate` writes N samples (batch 256, 1 thread) from
DIR/models/<dataset>/<family>/onnx into a fresh folder, alternating, median of the repeats.

DIR is a project where `genforge run` finished (prepared data, validation report, trained models, mlflow.db).
Both revisions must be able to read its files (the newer one reads artifacts of the older: tests/test_compat.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CODE = """
import sys, time
from pathlib import Path
from pipelines.config import load_params
from pipelines.evaluate import evaluate
root = Path(sys.argv[1])
started = time.perf_counter()
evaluate(load_params(root / "params.yaml"), root, sys.argv[2])
print("SECONDS", time.perf_counter() - started)
"""


GENERATE = """
import sys, tempfile, time
from pathlib import Path
from serving.generator import generate
with tempfile.TemporaryDirectory() as out:
    started = time.perf_counter()
    generate(Path(sys.argv[1]), int(sys.argv[2]), 0, Path(out) / "gen", batch_size=256, threads=1)
    print("SECONDS", time.perf_counter() - started)
"""


def run_generate(checkout: Path, onnx_dir: Path, n: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-c", GENERATE, str(onnx_dir), str(n)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout} generate failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.split("SECONDS")[-1])


def run(checkout: Path, project: Path, family: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "PREFECT_HOME": str(project / ".prefect"), "GENFORGE_ROOT": str(project)}
    proc = subprocess.run([sys.executable, "-c", CODE, str(project), family], cwd=project, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout} evaluate {family} failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.split("SECONDS")[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--families", default="vae,dcgan")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generate", type=int, default=0, help="also time generate() of N samples")
    ap.add_argument("--skip-evaluate", action="store_true")
    args = ap.parse_args()
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}  OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}  cpus={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        copies = {}
        for name, checkout in (("old", args.old), ("new", args.new)):
            dest = Path(tmp) / name
            shutil.copytree(args.project, dest, ignore=shutil.ignore_patterns("outputs", ".genforge", "checkpoints"))
            copies[name] = (checkout.resolve(), dest)
        for family in args.families.split(",") if args.generate else []:
            onnx_dir = next((args.project / "models").glob(f"*/{family}/onnx"))
            rates: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.repeats + 1):  # the first round warms the page cache and is dropped
                for name, (checkout, _dest) in copies.items():
                    rates[name].append(args.generate / run_generate(checkout, onnx_dir, args.generate))
            old, new = (statistics.median(rates[k][1:]) for k in ("old", "new"))
            print(f"generate {family:8s} old {old:8,.0f} samples/s  new {new:8,.0f} samples/s  new/old {new / old:5.2f}"
                  f"  ({args.generate:,} samples, batch 256, 1 thread, writes included; median of {args.repeats})")
        for family in [] if args.skip_evaluate else args.families.split(","):
            for checkout, dest in copies.values():  # warm-up: classifier cache, imports, page cache
                run(checkout, dest, family)
            times: dict[str, list[float]] = {"old": [], "new": []}
            started = time.perf_counter()
            for _ in range(args.repeats):
                for name, (checkout, dest) in copies.items():
                    times[name].append(run(checkout, dest, family))
            old, new = statistics.median(times["old"]), statistics.median(times["new"])
            print(f"evaluate {family:8s} old {old:7.2f} s  new {new:7.2f} s  new/old {new / old:5.2f}  "
                  f"(median of {args.repeats}, alternating; runs old {[round(t, 1) for t in times['old']]} "
                  f"new {[round(t, 1) for t in times['new']]}; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
