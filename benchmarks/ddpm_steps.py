"""DDPM samplers: FID ratio and ONNX Runtime samples/s against steps, for DDIM and DPM-Solver++(2M).

On the trained default ddpm (params.yaml's defaults on mnist5k, trained once by the project's own train
stage and cached under .genforge/bench/ddpm, benchmarks/_ddpm_cache.py; its training time is printed),
exported to ONNX: for each sampler and steps in --steps, N samples (evaluation.num_samples capped at the
test split: 1,000) drawn the way `genforge generate` draws them (serving.generator.shard_samples, the
generator's session options, batch 256, seed 0), scored like the evaluate stage (domain-classifier FID
over its real-vs-real floor, benchmarks._ddpm_cache.Scorer), and timed (samples/s of that generation).
Settings run in an interleaved order (sampler by sampler inside each step count) so load drifts hit both.

The pick: the cheapest setting (fewest steps, then lowest FID ratio) whose FID ratio is within --within
(5%) of DDIM-50's; that is the model's sampling default (genmodels/ddpm.py: DDPM.sampling_options).
Measured 2026-11-30 (shared 2-core machine, load ~10): FID ratio ddim 5/10/15/20/50 = 345/175/138/142/183,
dpmpp_2m = 242/155/148/161/176; pick dpmpp_2m with 10 steps (limit 1.05 x 183 = 192). Timed side by side
(batch 64, median of 3 interleaved rounds): 77.4 samples/s against DDIM-50's 12.4 (6.3x).

    python -m benchmarks.ddpm_steps [--steps 5,10,15,20,50] [--samplers ddim,dpmpp_2m] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import _ddpm_cache as cache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="5,10,15,20,50")
    ap.add_argument("--samplers", default="ddim,dpmpp_2m")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--within", type=float, default=0.05, help="allowed FID-ratio excess over DDIM-50")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    samplers = args.samplers.split(",")

    from benchmarks._common import print_table

    folder = cache.trained(False)
    info = json.loads((cache.project(False) / "bench.json").read_text())
    print(f"default ddpm: {folder} (trained once in {info['train_seconds']:.0f} s, {info['torch_threads']} torch "
          f"thread(s), {info.get('epochs')} epochs); load {os.getloadavg()[0]:.1f}")
    scorer = cache.Scorer(False)
    print(f"N = {scorer.n}, real-vs-real FID floor {scorer.floor:.4f}, classifier test accuracy "
          f"{scorer.classifier_accuracy:.4f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _, exported = cache.onnx_model(False, Path(tmp))
        base, sess = cache.sessions(exported, args.threads)
        for s in steps:
            for name in samplers:
                spec = base.with_sampling(sampler=name, steps=s, eta=0.0)
                images, _, seconds = cache.generate(spec, sess, scorer.n)
                row = {"sampler": name, "steps": s, **scorer.score(images), "samples_per_s": scorer.n / seconds,
                       "seconds": seconds, "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"  {name} {s}: fid ratio {row['fid_ratio']:.3f}, {row['samples_per_s']:.1f} samples/s "
                      f"(load {row['load']:.1f})", flush=True)
    ref = next((r for r in rows if r["sampler"] == "ddim" and r["steps"] == 50), None)
    limit = ref["fid_ratio"] * (1 + args.within) if ref else None
    ok = [r for r in rows if limit is not None and r["fid_ratio"] <= limit]
    pick = min(ok, key=lambda r: (r["steps"], r["fid_ratio"])) if ok else None
    cols = ["sampler", "steps", "FID ratio", "FID", "samples/s", "vs DDIM-50", f"within {args.within:.0%}"]
    table = [dict(zip(cols, [r["sampler"], r["steps"], f"{r['fid_ratio']:.3f}", f"{r['fid']:.4f}",
                             f"{r['samples_per_s']:.1f}",
                             f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-",
                             "<- pick" if r is pick else ("ok" if r in ok else "")])) for r in rows]
    print_table(table, cols)
    if pick:
        print(f"pick: {pick['sampler']} {pick['steps']} steps, FID ratio {pick['fid_ratio']:.3f} "
              f"(DDIM-50 {ref['fid_ratio']:.3f}, limit {limit:.3f}), {pick['samples_per_s']:.1f} samples/s = "
              f"{pick['samples_per_s'] / ref['samples_per_s']:.2f}x DDIM-50's {ref['samples_per_s']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "pick": pick, "train": info}, indent=1))


if __name__ == "__main__":
    main()
