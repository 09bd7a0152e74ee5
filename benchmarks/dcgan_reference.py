"""The dcgan peer row: the pytorch/examples DCGAN recipe (github.com/pytorch/examples, dcgan/main.py), written
here and scaled from 64x64 to 28x28, trained on the same mnist5k train split and scored by the same evaluation
as genforge's dcgan (the gate's metrics, N = 1,000, FID on the domain classifier's features over the
real-vs-real floor).

The recipe, kept: nz = 100, ngf = ndf = 64, batch 64, Adam(lr 2e-4, betas (0.5, 0.999)) for both nets, BCE
on a sigmoid output with labels real 1 / fake 0, one D step (real batch + fake batch) then one G step with the
non-saturating loss (labels 1), N(0, 0.02) conv weights and N(1, 0.02) batch-norm scales, batch norm in G
and in every D layer but the first, ReLU in G and LeakyReLU(0.2) in D, tanh output, images scaled to [-1, 1].
Scaled to 28x28: G is ConvT(nz, 4ngf, 7) -> 7x7, ConvT(4ngf, 2ngf, 4, 2, 1) -> 14x14,
ConvT(2ngf, 1, 4, 2, 1) -> 28x28 (one stage fewer than 64x64 needs); D mirrors it
(Conv(1, ndf, 4, 2, 1) -> 14, Conv(ndf, 2ndf, 4, 2, 1) -> 7, Conv(2ndf, 1, 7) -> 1 logit).

Training stops at --epochs or when the training time passes --budget-s (checked after each epoch); the
samples are the generator's at that point (the recipe has no weight average).

Usage: python benchmarks/dcgan_reference.py [--epochs 25] [--budget-s 0] [--seed 0] [--threads 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def networks(nz: int = 100, ngf: int = 64, ndf: int = 64):
    from torch import nn

    g = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 7, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, 1, 4, 2, 1, bias=False), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, 1, 7, 1, 0, bias=False), nn.Sigmoid())

    def init(m):  # pytorch/examples weights_init
        name = m.__class__.__name__
        if name.find("Conv") != -1:
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif name.find("BatchNorm") != -1:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    g.apply(init)
    d.apply(init)
    return g, d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--budget-s", type=float, default=0.0, help="stop after the epoch that passes this (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    from torch import nn

    from benchmarks.gate_ladder import CACHE, peer_setup
    from evaluation.ladder import evaluate_samples

    if args.threads:
        torch.set_num_threads(args.threads)
    ds, ev, base = peer_setup()
    images, _ = ds.load("train")
    x = torch.from_numpy(images).float().div_(255.0).mul_(2).sub_(1)  # [-1, 1], as the recipe's Normalize
    torch.manual_seed(args.seed)
    g, d = networks()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce, nz, bs = nn.BCELoss(), 100, 64
    train_s, epoch = 0.0, 0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), bs):  # the recipe's DataLoader keeps the last, smaller batch
            real = x[order[i:i + bs]]
            n = len(real)
            d.zero_grad()
            err_real = bce(d(real).view(-1), torch.ones(n))
            err_real.backward()
            fake = g(torch.randn(n, nz, 1, 1))
            err_fake = bce(d(fake.detach()).view(-1), torch.zeros(n))
            err_fake.backward()
            opt_d.step()
            g.zero_grad()
            bce(d(fake).view(-1), torch.ones(n)).backward()
            opt_g.step()
        train_s += time.perf_counter() - start
        if args.budget_s and train_s >= args.budget_s:
            break
    g.eval()
    with torch.no_grad():
        n = int(ev["num_samples"])
        z = torch.randn(n, nz, 1, 1, generator=torch.Generator().manual_seed(int(ev["seed"])))
        samples = ((g(z) + 1) * 0.5).clamp(0, 1).numpy().astype(np.float32)
    metrics, _ = evaluate_samples(samples, ds, ev, CACHE / "dcgan_reference" / f"s{args.seed}", base / "classifier")
    shown = ("fid", "fid_real_floor", "fid_ratio", "coverage", "recall", "precision", "class_coverage", "copy_rate")
    print(f"pytorch/examples DCGAN recipe at 28x28, seed {args.seed}, {epoch} epochs, {train_s:.0f} s training, "
          f"threads {torch.get_num_threads()}")
    print("  ".join(f"{k} {float(metrics[k]['value']):.4g}" for k in shown))


if __name__ == "__main__":
    main()
