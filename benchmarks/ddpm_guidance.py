"""Classifier-free guidance: FID ratio and conditional accuracy of the conditional ddpm against w.

On the default ddpm with ``model.ddpm.conditional: true`` and --epochs (40, the README's command; params.yaml's
defaults otherwise, on mnist5k), trained once by the project's train stage and cached under
.genforge/bench/ddpm-conditional[-<hash>] (benchmarks/_ddpm_cache.py; --epochs 20 is params.yaml's default),
exported to ONNX: for each guidance scale w in --scales and each guidance_min_t in --min-t, N samples
(evaluation.num_samples capped at the test split: 1,000), every class in turn as the evaluate stage and
`genforge generate` without --label ask for them, drawn through serving.generator.shard_samples (one ORT
call of 2N per guided step: conditional and unconditional halves, eps = eps_u + w (eps_c - eps_u); w = 0
unconditional, w = 1 conditional, Ho & Salimans' w plus one; steps at t < guidance_min_t take eps_c alone,
0 = every step guided), scored like the evaluate stage: FID ratio, and conditional accuracy (the domain
classifier's share of samples of the asked class). Sampler and steps: the model's defaults unless given.

The pick (the trade-off): the (w, guidance_min_t) with the lowest FID ratio among those whose conditional
accuracy reaches the target --min-accuracy (0.95) by two standard errors (binomial, N samples: 0.956 at
N = 1,000 is 0.95 within its error, 0.97 is not); when none does, the most accurate among those whose FID
ratio is within --fid-within (5%) of the best one's. It is the conditional model's default
(genmodels/ddpm.py: DDPM.DEFAULT_GUIDANCE, DEFAULT_GUIDANCE_MIN_T). Measured: see the README's guidance curve.

    python -m benchmarks.ddpm_guidance [--epochs 40] [--scales 0,1,2,3,5,7,9] [--min-t 0,200] [--sampler S] [--steps K]
                                       [--threads 2] [--label 7] [--label-scale 3]
                                       [--set model.ddpm.epochs=40 ...]   # a variant, trained and cached once
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import _ddpm_cache as cache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40, help="training epochs of the conditional ddpm")
    ap.add_argument("--scales", default="0,1,2,3,5,7,9")
    ap.add_argument("--min-t", default="0,200", help="guidance_min_t values (0: every step guided)")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--min-accuracy", type=float, default=0.95, help="the target, reported against")
    ap.add_argument("--fid-within", type=float, default=0.05, help="FID-ratio slack over the best setting")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--label", type=int, default=7, help="then 100 samples of this class (-1: skip)")
    ap.add_argument("--label-scale", type=float, default=3.0)
    ap.add_argument("--set", action="append", default=[], help="a params override (repeatable): score a variant "
                    "of the default conditional ddpm (trained once, cached in its own folder)")
    args = ap.parse_args()
    from genmodels.ddpm import DDPMConfig

    default_epochs = next(f.default for f in dataclasses.fields(DDPMConfig) if f.name == "epochs")
    sets = tuple(([f"model.ddpm.epochs={args.epochs}"] if args.epochs != default_epochs else []) + args.set)
    scales = [float(w) for w in args.scales.split(",")]
    min_ts = [int(v) for v in args.min_t.split(",")]

    from benchmarks._common import print_table

    folder = cache.trained(True, sets=sets)
    info = json.loads((cache.project(True, sets) / "bench.json").read_text())
    print(f"conditional ddpm{' ' + ' '.join(sets) if sets else ''}: {folder} (trained once in "
          f"{info['train_seconds']:.0f} s, {info['torch_threads']} torch thread(s), {info.get('epochs')} epochs); "
          f"load {os.getloadavg()[0]:.1f}")
    scorer = cache.Scorer(True, sets)
    print(f"N = {scorer.n}, real-vs-real FID floor {scorer.floor:.4f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _, exported = cache.onnx_model(True, Path(tmp), sets)
        base, sess = cache.sessions(exported, args.threads)
        base = base.with_sampling(sampler=args.sampler, steps=args.steps)
        print(f"sampler {base.sampler}, {base.sample_steps} steps")
        # w = 0 and 1 do not guide: one row each, whatever min_t
        grid = [(w, m) for m in min_ts for w in scales if not (w in (0.0, 1.0) and m != min_ts[0])]
        for w, m in grid:
            spec = base.with_sampling(guidance_scale=w, guidance_min_t=m)
            images, labels, seconds = cache.generate(spec, sess, scorer.n, num_classes=int(scorer.ds.num_classes))
            row = {"guidance_scale": w, "guidance_min_t": m, **scorer.score(images, labels),
                   "samples_per_s": scorer.n / seconds}
            rows.append(row)
            print(f"  w={w:g} min_t={m}: fid ratio {row['fid_ratio']:.3f}, conditional accuracy "
                  f"{row['conditional_accuracy']:.3f}, {row['samples_per_s']:.1f} samples/s (load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
        label_rows = []
        if args.label >= 0:  # the check: `generate -n 100 --label 7 --guidance-scale 3`
            for m in min_ts:
                spec = base.with_sampling(guidance_scale=args.label_scale, guidance_min_t=m)
                images, labels, _ = cache.generate(spec, sess, 100, label=args.label,
                                                   num_classes=int(scorer.ds.num_classes))
                share = scorer.accuracy(images, labels)
                label_rows.append({"label": args.label, "guidance_scale": args.label_scale, "guidance_min_t": m,
                                   "share": share})
                print(f"label {args.label}, w={args.label_scale:g}, min_t={m}, n=100: the classifier's share of "
                      f"class {args.label}: {share:.2f}")
    best = min(r["fid_ratio"] for r in rows)
    near = [r for r in rows if r["fid_ratio"] <= best * (1 + args.fid_within)]
    good = [r for r in rows if r["conditional_accuracy"] - 2 * math.sqrt(
        r["conditional_accuracy"] * (1 - r["conditional_accuracy"]) / scorer.n) >= args.min_accuracy]
    pick = min(good, key=lambda r: r["fid_ratio"]) if good else \
        max(near, key=lambda r: (r["conditional_accuracy"], -r["fid_ratio"]))
    cols = ["w", "guidance_min_t", "FID ratio", "conditional accuracy", "samples/s", ""]
    print_table([dict(zip(cols, [f"{r['guidance_scale']:g}", str(r["guidance_min_t"]), f"{r['fid_ratio']:.3f}",
                                 f"{r['conditional_accuracy']:.3f}", f"{r['samples_per_s']:.1f}",
                                 "<- pick" if r is pick else ""])) for r in rows], cols)
    reached = "reaches" if pick["conditional_accuracy"] >= args.min_accuracy else "misses"
    how = (f"the lowest FID ratio with conditional accuracy >= {args.min_accuracy} by two standard errors" if good else
           f"none reaches {args.min_accuracy}: the most accurate within {args.fid_within:.0%} of the best FID ratio "
           f"({best:.3f})")
    print(f"pick: w = {pick['guidance_scale']:g}, guidance_min_t = {pick['guidance_min_t']}, {how}; its conditional "
          f"accuracy {pick['conditional_accuracy']:.3f} {reached} the target {args.min_accuracy}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "label_rows": label_rows, "pick": pick, "train": info,
                                               "sampler": base.sampler, "steps": base.sample_steps}, indent=1))


if __name__ == "__main__":
    main()
