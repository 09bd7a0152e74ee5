"""Int8 ddpm denoiser: does a static QDQ int8 copy of the trained default denoiser keep the FID ratio (< 2%)
and how much faster is the sampling loop with it?

On the trained default ddpm (benchmarks/_ddpm_cache.py: params.yaml's defaults on mnist5k, trained once and
cached), exported to ONNX (fp32, the served graph), an int8 copy is built with
``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax
calibration; ``benchmarks.graph_speed._int8_model``) calibrated on TRAINING data: ``--calib-batches`` batches of
64 train images scaled to [-1, 1] and noised to x_t at the timesteps the default sampler visits
(q(x_t | x_0) with seeded noise). Then N samples (evaluation.num_samples capped at the test split: 1,000)
are drawn with each graph by the generator's own loop (``serving.generator.shard_samples``, batch 256, seed 0,
the model's default sampler and steps, the generator's session options) from the SAME noise, scored like the
evaluate stage (``benchmarks._ddpm_cache.Scorer``: domain-classifier FID over the real-vs-real floor), and timed
(wall and process CPU seconds of the whole generation: graph and numpy loop).

Accepted as a serving option only when |FID ratio int8 / fp32 - 1| < --max-change (2%).

    python -m benchmarks.ddpm_int8 [--threads 1] [--calib-batches 8] [--exclude conv_in,conv_out] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import _ddpm_cache as cache  # noqa: E402


def calibration_feeds(scorer, spec, batches: int, batch: int = 64, seed: int = 0) -> list[dict]:
    """``batches`` feeds {x: N x C x H x W float32, t: int64 N} of noised training images at the sampler's steps."""
    import numpy as np

    from contracts.diffusion import ddim_timesteps
    from contracts.modalities.image import to_model

    rng = np.random.default_rng(seed)
    x0_all = to_model(np.asarray(scorer.ds.load("train")[0])) * 2 - 1  # stored uint8 -> [0, 1] -> [-1, 1]
    acp = np.asarray(spec.alphas_cumprod, dtype=np.float64)
    steps = np.asarray(ddim_timesteps(len(acp), spec.sample_steps), dtype=np.int64)
    feeds = []
    for _ in range(batches):
        x0 = x0_all[rng.integers(0, len(x0_all), batch)].reshape(batch, *spec.noise.shape)
        t = steps[rng.integers(0, len(steps), batch)]
        a = acp[t].astype(np.float32)[:, None, None, None]
        xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape, dtype=np.float32)
        feeds.append({spec.noise.name: xt.astype(np.float32), spec.timestep_input: t})
    return feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--exclude", default="", help="comma list of substrings: nodes whose name contains one stay fp32")
    ap.add_argument("--max-change", type=float, default=0.02)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import onnx

    from benchmarks.graph_speed import _int8_model
    from serving.generator import _load_session

    folder = cache.trained(False)
    scorer = cache.Scorer(False)
    print(f"default ddpm {folder}; N = {scorer.n}, FID floor {scorer.floor:.4f}; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        _, exported = cache.onnx_model(False, Path(tmp))
        spec, fp32 = cache.sessions(exported, args.threads)
        graph = exported / "denoiser.onnx"
        exclude = [n.name for n in onnx.load(str(graph)).graph.node
                   if any(s and s in n.name for s in args.exclude.split(","))]
        start = time.perf_counter()
        int8_path = _int8_model(graph, calibration_feeds(scorer, spec, args.calib_batches),
                                Path(tmp) / "denoiser.int8.onnx", exclude=exclude)
        quant_s = time.perf_counter() - start
        int8 = {"denoiser": _load_session(int8_path, ["CPUExecutionProvider"], args.threads)}
        rows = {}
        for name, sess in (("fp32", fp32), ("int8", int8), ("fp32 again", fp32)):
            cpu0 = time.process_time()
            images, _, seconds = cache.generate(spec, sess, scorer.n)
            rows[name] = {**scorer.score(images), "samples_per_s": scorer.n / seconds,
                          "samples_per_cpu_s": scorer.n / (time.process_time() - cpu0), "images": images}
            print(f"  {name}: FID ratio {rows[name]['fid_ratio']:.4f}, {rows[name]['samples_per_s']:.1f} samples/s "
                  f"wall, {rows[name]['samples_per_cpu_s']:.1f} per CPU second (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    ref, q = rows["fp32"], rows["int8"]
    change = q["fid_ratio"] / ref["fid_ratio"] - 1
    diff = np.abs(q["images"] - ref["images"])
    out = {"sampler": spec.sampler, "steps": spec.sample_steps, "threads": args.threads, "n": scorer.n,
           "excluded_nodes": exclude, "calib_batches": args.calib_batches, "quantize_seconds": round(quant_s, 1),
           "fid_ratio_fp32": ref["fid_ratio"], "fid_ratio_int8": q["fid_ratio"], "fid_ratio_change": change,
           "image_max_abs_diff": float(diff.max()), "image_mean_abs_diff": float(diff.mean()),
           "speedup_wall": q["samples_per_s"] / ((ref["samples_per_s"] + rows["fp32 again"]["samples_per_s"]) / 2),
           "speedup_cpu": q["samples_per_cpu_s"] / ((ref["samples_per_cpu_s"] + rows["fp32 again"]["samples_per_cpu_s"]) / 2),
           "accepted": abs(change) < args.max_change, "load": os.getloadavg()[0]}
    print(json.dumps(out, indent=1))
    print(f"int8 {'ACCEPTED' if out['accepted'] else 'REJECTED'}: FID ratio {ref['fid_ratio']:.4f} -> {q['fid_ratio']:.4f} "
          f"({change:+.1%}, limit {args.max_change:.0%}); loop {out['speedup_cpu']:.2f}x per CPU second, "
          f"{out['speedup_wall']:.2f}x wall")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
