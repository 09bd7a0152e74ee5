"""Bits per character on the names test split for bigram, lstm and gpt trained for the same wall time.

Each family (its default config; ``--set family.key=value`` to change one) trains on the names train split
(benchmarks/text_data.py: the `names` source as prepared) with ``fit_step`` on shuffled batches of its
``batch_size`` until ``--minutes`` of wall time are spent (the bigram counts one epoch: seconds). The learning
rate follows the wall clock rather than a step count, so every family ends its schedule when the budget
ends: linear warm-up over the first 50 steps, then a cosine from the family's ``lr`` to lr/30 at the end of
the budget (this replaces the families' own step-based schedules, which assume a number of epochs). Families
run one after another in this process with ``--threads`` threads.

Then, on the test split: bits/char given the class (each name's own label) and without it (the exact
marginal over the three classes, the training shares as prior); the end token counts as one character
(genmodels/textbase.py). And a few samples per class at temperature 1.

    python benchmarks/text_quality.py --minutes 3 [--families bigram,lstm,gpt] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train_for(model, x, y, seconds: float, seed: int = 0) -> dict:
    import torch

    batch = int(getattr(model.config, "batch_size", 128))
    opts = list(model.optimizers().values())
    base = [[g.get("initial_lr", g["lr"]) for g in o.param_groups] for o in opts]  # before any schedule
    g = torch.Generator().manual_seed(seed)
    start, steps, epochs, last = time.perf_counter(), 0, 0, {}
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            frac = (time.perf_counter() - start) / seconds
            if frac >= 1.0:
                return {"steps": steps, "epochs": epochs + i / len(x), "seconds": time.perf_counter() - start, **last}
            warm = min(1.0, (steps + 1) / 50)
            for o, lrs in zip(opts, base):
                for group, lr in zip(o.param_groups, lrs):
                    group["lr"] = warm * (lr / 30 + 0.5 * (1 + math.cos(math.pi * frac)) * (lr - lr / 30))
            idx = order[i:i + batch]
            last = model.fit_step(x[idx], y[idx])
            steps += 1
            if not opts and i + batch >= len(x):  # a counting model: one epoch is the estimate
                return {"steps": steps, "epochs": 1.0, "seconds": time.perf_counter() - start, **last}
        epochs += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--families", default="bigram,lstm,gpt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="family.key=value (YAML value)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    import yaml

    from benchmarks._common import print_table
    from benchmarks.text_data import names_arrays
    from contracts.modalities.tokens import tokenizer
    from genmodels import build_model

    torch.set_num_threads(args.threads)
    spec, xtr, ytr, xte, yte = names_arrays()
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in (xtr, ytr, xte, yte))
    overrides: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        fam, _, name = key.partition(".")
        overrides.setdefault(fam, {})[name] = yaml.safe_load(value)
    print(f"names: {len(xtr)} train, {len(xte)} test, T = {spec.shape[0]}, V = {spec.vocab_size}; {args.minutes:g} min "
          f"per family, {args.threads} threads, load average {os.getloadavg()[0]:.2f}", flush=True)
    tok = tokenizer(spec.vocab)
    rows, out = [], {}
    for family in args.families.split(","):
        torch.manual_seed(0)
        model = build_model(family, {"data": spec, "seed": 0, **overrides.get(family, {})})
        info = train_for(model, xtr, ytr, args.minutes * 60)
        model.eval()
        cond, marg = model.bits_per_char(xte, yte), model.bits_per_char(xte)
        train_bpc = model.bits_per_char(xtr[:10000], ytr[:10000])
        samples = model.sample(9, labels=torch.arange(9) % 3, generator=torch.Generator().manual_seed(0))
        texts = [f"{spec.class_names[k % 3]}: {tok.decode(s)}" for k, s in enumerate(samples.tolist())]
        params = sum(p.numel() for p in model.parameters())
        out[family] = {"config": model.config.to_dict() | {"data": None}, "params": params, **info,
                       "test_bits_per_char_given_class": cond, "test_bits_per_char": marg,
                       "train_bits_per_char_given_class": train_bpc, "samples": texts}
        rows.append({"family": family, "params": f"{params / 1e6:.2f}M", "steps": info["steps"],
                     "epochs": f"{info['epochs']:.2f}", "train s": f"{info['seconds']:.0f}",
                     "test bpc | class": f"{cond:.3f}", "test bpc": f"{marg:.3f}", "train bpc | class": f"{train_bpc:.3f}"})
        print(f"  {rows[-1]}\n    " + "\n    ".join(texts), flush=True)
    print(f"\nBits per character on the names test split ({len(xte)} names; <eos> counted as a character), "
          f"{args.minutes:g} min of training each, {args.threads} threads:")
    print_table(rows, list(rows[0]))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
