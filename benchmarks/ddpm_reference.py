"""The ddpm peer row: Hugging Face diffusers' unconditional DDPM recipe (github.com/huggingface/diffusers,
examples/unconditional_image_generation/train_unconditional.py, read at commit 58eb52c0803e, 2026-08-23), run
with the installed diffusers' own parts (UNet2DModel, DDPMScheduler, EMAModel, get_scheduler, DDPMPipeline),
trained on the same mnist5k train split in the same CPU budget as genforge's ddpm and scored by the same
evaluation (the gate's metrics, N = 1,000, FID on the domain classifier's features over the real-vs-real floor).

The recipe, kept (the example's defaults and its README command, which adds --use_ema): DDPMScheduler(1000
steps, linear betas, epsilon prediction), uniform timesteps, noise_scheduler.add_noise, MSE on the noise, batch
16, AdamW(lr 1e-4, betas (0.95, 0.999), weight_decay 1e-6, eps 1e-8), gradient norm clipped to 1.0, the
"cosine" schedule with 500 warm-up steps over the planned epochs (``--epochs``), EMAModel (max decay 0.9999,
warm-up with inv_gamma 1.0 and power 3/4) whose weights sample, images normalised to [-1, 1], sampling with
DDPMPipeline at 1,000 steps. Changed: no random horizontal flip (a mirrored digit is not a digit: the flip
would change the distribution); one channel; the UNet scaled from the example's 64-128 px six-level net
(128-512 channels, 2 resnets per level, attention at 1/16 resolution) to 28x28: block_out_channels
(32, 64, 64) at 28/14/7 (no padding needed: 28 -> 14 -> 7 and back), 1 resnet per level (2 on the way up, as
UNet2DModel does), DownBlock2D/UpBlock2D levels and the mid block's single self-attention at 7x7, the
library's defaults elsewhere (32 groups, positional time embedding): 1.06M parameters against genforge's ddpm's
0.19M. Also sampled with DPMSolverMultistepScheduler.from_config(the DDPM scheduler's config) at 10 steps, the
library's DPM-Solver++(2M) and what genforge's ddpm serves by default, for a like-for-like sampling cost: with
the predicted x0 clipped to [-1, 1] as both the recipe's DDPMScheduler and genforge's sampler do (``dpm10``,
see SAMPLERS), and without (``dpm10_noclip``, the plain swap).

The budget: genforge's ddpm trains 36 epochs by default (2,268 steps of batch 64). ``--measure R`` times both
nets' training steps in this process, in R interleaved rounds at the same thread count, by
``time.process_time()`` (CPU seconds of the process, all threads: other load on the machine moves it far less
than wall seconds, though a loaded step still costs more: see DEFAULT_BUDGET_CPU_S), and prints genforge's 36-epoch CPU seconds (median per step x steps): that is
the default ``--budget-cpu-s`` (see DEFAULT_BUDGET_CPU_S for the measurement), and the peer's steps in it set
the default ``--epochs`` (the length of the recipe's cosine schedule, which needs a planned end). Training stops
after the step at which the loop's process CPU seconds reach the budget, or at ``--epochs``.

The trained EMA weights and train.json go to .genforge/gate_ladder/ddpm_reference/s<seed>/; a rerun with the
same settings reuses them, and sample chunks already drawn (chunk-NNN.npy per sampler), so a long 1,000-step
sampling can be resumed.

Usage: python benchmarks/ddpm_reference.py [--budget-cpu-s S] [--epochs E] [--seed 0] [--threads 2]
       [--samplers dpm10,ddpm1000] [--num-samples N] | --measure ROUNDS
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENFORGE_EPOCHS = 36  # genforge's ddpm default (genmodels/ddpm.py)
# `--measure 7` under /tmp/kv/quiet.sh (the other jobs paused, 2 threads, 2026-11-30): genforge's ddpm step
# (batch 64) 0.2024 CPU s (rounds 0.196-0.227), the peer's (batch 16) 0.2733 (0.269-0.285), medians; so
# genforge's 36 epochs = 2,268 steps = 459 CPU s (its 20 epochs took 317 s wall, trainer included, on a quiet
# machine: ~0.25 s wall/step), and the peer fits 1,680 steps = 6.7 epochs of 250 in them. Under load
# (load average 4) both steps cost more CPU seconds (0.270 and 0.302 in one round), so a loaded run reaches
# fewer peer steps than a quiet one would: the run prints the steps it reached (seed 0 at load 2-5, paused
# by other jobs' quiet runs: 1,541 steps, 0.298 CPU s each).
DEFAULT_BUDGET_CPU_S = 459.0
DEFAULT_EPOCHS = 7  # the cosine schedule's planned length (1,750 steps): the budget ends at ~96% of it
BATCH = 16
# dpm10 clips the predicted x0 to [-1, 1] at every step, as the recipe's DDPMScheduler (clip_sample: true) and
# genforge's dpmpp_2m (clip: true) do: diffusers' thresholding with sample_max_value 1.0 is exactly that clip
# (the threshold s = clamp(quantile(|x0|), 1, sample_max_value) = 1); dpm10_noclip is the plain from_config swap
SAMPLERS = {"ddpm1000": ("DDPMScheduler (DDPMPipeline's), x0 clipped", 1000),
            "dpm10": ("DPMSolverMultistepScheduler, x0 clipped", 10),
            "dpm10_noclip": ("DPMSolverMultistepScheduler, not clipped", 10)}


@dataclass
class Recipe:
    unet: UNet2DModel
    ema: EMAModel
    noise_scheduler: DDPMScheduler
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any


def build(seed: int, total_steps: int, channels: tuple[int, ...] = (32, 64, 64), layers: int = 1,
          sample_size: int = 28) -> Recipe:
    """The recipe's parts for 1-channel ``sample_size`` images; ``total_steps``: the cosine schedule's length
    (the example's len(train_dataloader) * num_epochs). ``channels`` needs entries divisible by 32 (GroupNorm)."""
    torch.manual_seed(seed)
    n = len(channels)
    unet = UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1, layers_per_block=layers,
                       block_out_channels=channels, down_block_types=("DownBlock2D",) * n,
                       up_block_types=("UpBlock2D",) * n)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=UNet2DModel, model_config=unet.config)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500,
                                 num_training_steps=max(1, total_steps))
    return Recipe(unet, ema, noise_scheduler, optimizer, lr_scheduler)


def train_step(r: Recipe, clean: torch.Tensor) -> float:
    """One step of the example's loop on ``clean`` (B x 1 x H x W in [-1, 1]): the loss."""
    r.unet.train()
    noise = torch.randn(clean.shape)
    timesteps = torch.randint(0, r.noise_scheduler.config.num_train_timesteps, (clean.shape[0],)).long()
    noisy = r.noise_scheduler.add_noise(clean, noise, timesteps)
    loss = F.mse_loss(r.unet(noisy, timesteps).sample.float(), noise.float())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(r.unet.parameters(), 1.0)
    r.optimizer.step()
    r.lr_scheduler.step()
    r.optimizer.zero_grad()
    r.ema.step(r.unet.parameters())
    return loss.detach().item()


def train(r: Recipe, x: torch.Tensor, epochs: int, budget_cpu_s: float, seed: int,
          batch_size: int = BATCH) -> dict[str, float]:
    """Shuffled epochs of ``train_step`` over ``x`` (N x 1 x H x W in [-1, 1]; the last batch may be smaller,
    as the example's DataLoader) until ``epochs`` or, checked after each step, until the loop's process CPU
    seconds reach ``budget_cpu_s`` (0: no budget). Returns steps, epochs (fractional), cpu_s, wall_s, loss."""
    order_rng = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(x) / batch_size)
    steps, loss = 0, float("nan")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=order_rng)
        for i in range(0, len(x), batch_size):
            loss = train_step(r, x[order[i:i + batch_size]])
            steps += 1
            if budget_cpu_s and time.process_time() - cpu0 >= budget_cpu_s:
                break
        else:
            continue
        break
    return {"steps": steps, "epochs": steps / per_epoch, "cpu_s": time.process_time() - cpu0,
            "wall_s": time.perf_counter() - wall0, "loss": loss}


def ema_unet(r: Recipe) -> UNet2DModel:
    """A copy of the UNet holding the EMA weights (what the example samples and saves)."""
    net = copy.deepcopy(r.unet)
    r.ema.copy_to(net.parameters())
    return net.eval()


def sampler(name: str, noise_scheduler: DDPMScheduler):
    """(scheduler, steps) of a SAMPLERS entry: the recipe's DDPM scheduler itself, or DPM-Solver++(2M) made
    from its config (the library's way of swapping samplers), with or without the x0 clip. ValueError: an
    unknown name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    if name == "ddpm1000":
        return noise_scheduler, SAMPLERS[name][1]
    clip = {"thresholding": True, "sample_max_value": 1.0} if name == "dpm10" else {}
    return DPMSolverMultistepScheduler.from_config(noise_scheduler.config, **clip), SAMPLERS[name][1]


@torch.no_grad()
def sample(unet: UNet2DModel, scheduler, n: int, steps: int, seed: int, chunk: int = 100,
           chunk_dir: Path | None = None) -> np.ndarray:
    """n x 1 x H x W float32 in [0, 1] from DDPMPipeline(unet, scheduler) at ``steps`` steps, in chunks of
    ``chunk`` images, chunk k from a generator seeded (seed, k) (so any chunk can be redrawn alone). With
    ``chunk_dir``, chunks are saved there as chunk-NNN.npy and reused when present."""
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    parts = []
    for k, start in enumerate(range(0, n, chunk)):
        path = chunk_dir / f"chunk-{k:03d}.npy" if chunk_dir else None
        if path is not None and path.exists():
            parts.append(np.load(path))
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        images = pipe(batch_size=min(chunk, n - start), generator=g, num_inference_steps=steps,
                      output_type="np").images                      # b x H x W x 1 in [0, 1]
        part = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path.with_suffix(".tmp.npy"), part)
            path.with_suffix(".tmp.npy").replace(path)
        parts.append(part)
    return np.concatenate(parts)


def measure(rounds: int, threads: int) -> None:
    """Median process CPU seconds per training step of genforge's ddpm (the trainer's model and batch) and of
    the peer (batch 16), interleaved rounds in this process, and the budget they imply."""
    from benchmarks.gate_ladder import CACHE, _params, _prepared
    from pipelines.train import plan_training

    params = _params([])
    base = CACHE / params["data"]["name"]
    base.mkdir(parents=True, exist_ok=True)
    ds = _prepared(params, base)
    _, model, settings, _ = plan_training(params, base, "ddpm")
    x01 = torch.from_numpy(ds.load("train")[0]).float().div_(255.0)
    n, bg = len(x01), int(settings["batch_size"])
    peer = build(0, 10_000)
    rng = torch.Generator().manual_seed(0)
    per = {"genforge": [], "peer": []}
    kinds = {"genforge": (lambda: model.fit_step(x01[torch.randint(0, n, (bg,), generator=rng)]), 4),
             "peer": (lambda: train_step(peer, x01[torch.randint(0, n, (BATCH,), generator=rng)] * 2 - 1), 12)}
    for f, _k in kinds.values():
        f()  # warm-up
    for _ in range(rounds):
        for name, (f, k) in kinds.items():
            start = time.process_time()
            for _ in range(k):
                f()
            per[name].append((time.process_time() - start) / k)
    g, p = statistics.median(per["genforge"]), statistics.median(per["peer"])
    steps_g, per_epoch_p = GENFORGE_EPOCHS * math.ceil(n / bg), math.ceil(n / BATCH)
    budget = steps_g * g
    print(f"threads {threads}: genforge ddpm {g:.4f} CPU s/step (batch {bg}; rounds {[round(v, 4) for v in per['genforge']]}), "
          f"peer {p:.4f} CPU s/step (batch {BATCH}; {[round(v, 4) for v in per['peer']]})")
    print(f"genforge {GENFORGE_EPOCHS} epochs = {steps_g} steps = {budget:.0f} CPU s; the peer's steps in it: "
          f"{budget / p:.0f} = {budget / p / per_epoch_p:.2f} epochs of {per_epoch_p} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-cpu-s", type=float, default=DEFAULT_BUDGET_CPU_S,
                    help="stop after the step that reaches this many process CPU seconds (0: none)")
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="the cosine schedule's planned epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samplers", default="dpm10,ddpm1000")
    ap.add_argument("--num-samples", type=int, default=0,
                    help="evaluate on the first N samples (and a real floor of the same N; 0: evaluation.num_samples)")
    ap.add_argument("--measure", type=int, default=0, metavar="ROUNDS", help="time the steps instead (see above)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        return measure(args.measure, args.threads)
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")

    from benchmarks.gate_ladder import CACHE, peer_setup
    from evaluation.ladder import evaluate_samples

    ds, ev, base = peer_setup()
    if args.num_samples:
        ev["num_samples"] = args.num_samples
    x = torch.from_numpy(ds.load("train")[0]).float().div_(255.0).mul_(2).sub_(1)  # [-1, 1], Normalize([0.5], [0.5])
    run = CACHE / "ddpm_reference" / f"s{args.seed}"
    plan = {"budget_cpu_s": args.budget_cpu_s, "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
            "batch": BATCH, "n_train": len(x), "data": ds.sha256}
    r = build(args.seed, math.ceil(len(x) / BATCH) * args.epochs)
    info_path, weights = run / "train.json", run / "ema.pt"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if info.get("plan") == plan and weights.exists():
        r.ema.load_state_dict(torch.load(weights, weights_only=True))
        print(f"reusing {weights} (trained with these settings)")
    else:
        import shutil
        shutil.rmtree(run, ignore_errors=True)
        info = {"plan": plan, **train(r, x, args.epochs, args.budget_cpu_s, args.seed)}
        run.mkdir(parents=True)
        torch.save(r.ema.state_dict(), weights)
        info_path.write_text(json.dumps(info, indent=1))
    print(f"diffusers train_unconditional recipe at 28x28, seed {args.seed}, threads {torch.get_num_threads()}: "
          f"{info['steps']} steps = {info['epochs']:.2f} epochs (schedule {args.epochs}), {info['cpu_s']:.0f} CPU s "
          f"(budget {args.budget_cpu_s:.0f}), {info['wall_s']:.0f} s wall, last loss {info['loss']:.4f}, "
          f"{sum(p.numel() for p in r.unet.parameters()) / 1e6:.2f}M parameters")
    net = ema_unet(r)
    shown = ("fid", "fid_real_floor", "fid_ratio", "coverage", "recall", "precision", "class_coverage", "copy_rate")
    for name in args.samplers.split(","):
        sched, steps = sampler(name, r.noise_scheduler)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        samples = sample(net, sched, int(ev["num_samples"]), steps, int(ev["seed"]), chunk_dir=run / name)
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        work = run / f"eval-{name}-n{ev['num_samples']}"
        metrics, _ = evaluate_samples(samples, ds, ev, work, base / "classifier")
        print(f"[{name}: {SAMPLERS[name][0]}, {steps} steps, N = {ev['num_samples']}; sampling {cpu_s:.0f} CPU s / "
              f"{wall_s:.0f} s wall this run; grid {work / 'samples.png'}]")
        print("  ".join(f"{k} {float(metrics[k]['value']):.4g}" for k in shown))


if __name__ == "__main__":
    main()
