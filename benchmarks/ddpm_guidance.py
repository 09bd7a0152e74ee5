"""Classifier-free guidance: FID ratio and conditional accuracy of the conditional ddpm against w.

On the default ddpm with ``model.ddpm.conditional: true`` (params.yaml's defaults on mnist5k, trained once
by the project's train stage and cached under .genforge/bench/ddpm-conditional, benchmarks/_ddpm_cache.py),
exported to ONNX: for each guidance scale w in --scales, N samples (evaluation.num_samples capped at the
test split: 1,000), every class in turn as the evaluate stage and `genforge generate` without --label ask
for them, drawn through serving.generator.shard_samples (one ORT call of 2N per step: conditional and
unconditional halves, eps = eps_u + w (eps_c - eps_u); w = 0 unconditional, w = 1 conditional, Ho &
Salimans' w plus one), scored like the evaluate stage: FID ratio, and conditional accuracy (the domain
classifier's share of samples of the asked class). Sampler and steps: the model's defaults unless given.

The pick (the trade-off): the most accurate w among those whose FID ratio is within --fid-within (5%) of
the best w's; it is the conditional model's default guidance_scale (genmodels/ddpm.py: DDPM.DEFAULT_GUIDANCE).
Its conditional accuracy is reported against the target --min-accuracy (0.95). Measured (dpmpp_2m, 10 steps,
N = 1,000): w 0/1/2/3/5/7/10 -> FID ratio 244/175/115/102/105/123/167, conditional accuracy
0.11/0.64/0.83/0.89/0.92/0.94/0.94: accuracy saturates near 0.94 on the 20-epoch model, below the target.

    python -m benchmarks.ddpm_guidance [--scales 0,1,2,3,5] [--sampler S] [--steps K] [--threads 2] [--label 7]
                                       [--set model.ddpm.epochs=40 ...]   # a variant, trained and cached once
                                       [--interval 200,800]   # also: guidance only for t in [200, 800]

``--interval LO,HI`` (a measurement, not a sampler option): each w again with guidance applied only at
steps whose timestep t is in [LO, HI] and the plain conditional prediction (w = 1) elsewhere (the
guidance interval of Kynkäänniemi et al. 2024); the pick is made among the plain rows only.
"""
from __future__ import annotations

import argparse
import contextlib
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
    ap.add_argument("--scales", default="0,1,2,3,5")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--min-accuracy", type=float, default=0.95, help="the target, reported against")
    ap.add_argument("--fid-within", type=float, default=0.05, help="FID-ratio slack over the best w")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--label", type=int, default=7, help="then 100 samples of this class (-1: skip)")
    ap.add_argument("--label-scale", type=float, default=3.0)
    ap.add_argument("--interval", default=None, help="LO,HI: also each w guided only for t in [LO, HI]")
    ap.add_argument("--interval-only", action="store_true", help="with --interval: skip the plain rows")
    ap.add_argument("--set", action="append", default=[], help="a params override (repeatable): score a variant "
                    "of the default conditional ddpm (trained once, cached in its own folder)")
    args = ap.parse_args()
    sets = tuple(args.set)
    interval = tuple(int(v) for v in args.interval.split(",")) if args.interval else None
    scales = [float(w) for w in args.scales.split(",")]

    from benchmarks._common import print_table

    folder = cache.trained(True, sets=sets)
    info = json.loads((cache.project(True, sets) / "bench.json").read_text())
    print(f"conditional ddpm{' ' + ' '.join(sets) if sets else ''}: {folder} (trained once in "
          f"{info['train_seconds']:.0f} s, {info['torch_threads']} torch thread(s), {info.get('epochs')} epochs); "
          f"load {os.getloadavg()[0]:.1f}")
    scorer = cache.Scorer(True, sets)
    print(f"N = {scorer.n}, real-vs-real FID floor {scorer.floor:.4f}")
    rows, extra = [], []
    with tempfile.TemporaryDirectory() as tmp:
        _, exported = cache.onnx_model(True, Path(tmp), sets)
        base, sess = cache.sessions(exported, args.threads)
        base = base.with_sampling(sampler=args.sampler, steps=args.steps)
        print(f"sampler {base.sampler}, {base.sample_steps} steps")
        plain = [] if args.interval_only and interval else [(w, None) for w in scales]
        for w, within in plain + ([(w, interval) for w in scales if w > 1] if interval else []):
            spec = base.with_sampling(guidance_scale=w)
            with _guidance_interval(within):
                images, labels, seconds = cache.generate(spec, sess, scorer.n, num_classes=int(scorer.ds.num_classes))
            row = {"guidance_scale": w, **scorer.score(images, labels), "samples_per_s": scorer.n / seconds}
            if within:
                row["interval"] = list(within)
            (extra if within else rows).append(row)
            print(f"  w={w:g}{f' for t in {list(within)}' if within else ''}: fid ratio {row['fid_ratio']:.3f}, "
                  f"conditional accuracy {row['conditional_accuracy']:.3f}, {row['samples_per_s']:.1f} samples/s",
                  flush=True)
        if args.label >= 0:  # the check: `generate -n 100 --label 7 --guidance-scale 3`
            spec = base.with_sampling(guidance_scale=args.label_scale)
            images, labels, _ = cache.generate(spec, sess, 100, label=args.label, num_classes=int(scorer.ds.num_classes))
            share = scorer.accuracy(images, labels)
            print(f"label {args.label}, w={args.label_scale:g}, n=100: the classifier's share of class {args.label}: "
                  f"{share:.2f}")
    if not rows:
        return _print_interval(extra, interval)
    best = min(r["fid_ratio"] for r in rows)
    near = [r for r in rows if r["fid_ratio"] <= best * (1 + args.fid_within)]
    pick = max(near, key=lambda r: (r["conditional_accuracy"], -r["fid_ratio"]))
    cols = ["w", "FID ratio", "conditional accuracy", "samples/s", ""]
    print_table([dict(zip(cols, [f"{r['guidance_scale']:g}", f"{r['fid_ratio']:.3f}",
                                 f"{r['conditional_accuracy']:.3f}", f"{r['samples_per_s']:.1f}",
                                 "<- pick" if r is pick else ""])) for r in rows], cols)
    _print_interval(extra, interval)
    reached = "reaches" if pick["conditional_accuracy"] >= args.min_accuracy else "misses"
    print(f"pick: w = {pick['guidance_scale']:g}, the most accurate within {args.fid_within:.0%} of the best FID ratio "
          f"({best:.3f}); its conditional accuracy {pick['conditional_accuracy']:.3f} {reached} the target "
          f"{args.min_accuracy}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "interval_rows": extra, "pick": pick, "train": info,
                                               "sampler": base.sampler, "steps": base.sample_steps}, indent=1))


def _print_interval(extra, interval) -> None:
    from benchmarks._common import print_table

    if extra:
        cols = ["w", "FID ratio", "conditional accuracy", "samples/s"]
        print(f"guidance only for t in {list(interval)} (w = 1 elsewhere):")
        print_table([dict(zip(cols, [f"{r['guidance_scale']:g}", f"{r['fid_ratio']:.3f}",
                                     f"{r['conditional_accuracy']:.3f}", f"{r['samples_per_s']:.1f}"]))
                     for r in extra], cols)


@contextlib.contextmanager
def _guidance_interval(within):
    """Inside: serving's guided eps guides only at timesteps in ``within`` = (lo, hi), w = 1 elsewhere."""
    if within is None:
        yield
        return
    from serving import sampler_ddim

    plain = sampler_ddim.guided_eps_fn
    lo, hi = within

    def interval_fn(run, n, labels, scale, null_label):
        inside, outside = plain(run, n, labels, scale, null_label), plain(run, n, labels, 1.0, null_label)
        return lambda x, t: inside(x, t) if lo <= t <= hi else outside(x, t)

    sampler_ddim.guided_eps_fn = interval_fn
    try:
        yield
    finally:
        sampler_ddim.guided_eps_fn = plain


if __name__ == "__main__":
    main()
