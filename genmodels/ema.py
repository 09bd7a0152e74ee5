"""Exponential moving average (EMA) of a network's weights, the copy a family samples from (dcgan, wgan_gp,
ddpm, realnvp). Polyak & Juditsky 1992; for GANs Yazici et al. 2019, for diffusion Ho et al. 2020 (decay
0.9999), with the warm-up of TensorFlow's ExponentialMovingAverage(num_updates): decay_k = min(decay,
(1 + k) / (10 + k)) at the k-th update (k from 0), so early averages are not dominated by the random init."""
from __future__ import annotations

import torch
from torch import nn


def warmed_up_decay(decay: float, k: int) -> float:
    """The decay of the k-th update (k = 0, 1, ...): min(decay, (1 + k) / (10 + k))."""
    return min(decay, (1 + k) / (10 + k))


@torch.no_grad()
def update_ema(averaged: nn.Module, live: nn.Module, decay: float, k: int) -> None:
    """averaged <- d * averaged + (1 - d) * live with d = warmed_up_decay(decay, k), for every parameter and
    floating-point buffer (e.g. batch-norm running statistics); integer and bool buffers are copied. The two
    modules must have the same structure (``averaged`` a deepcopy of ``live``)."""
    d = warmed_up_decay(decay, k)
    torch._foreach_lerp_(list(averaged.parameters()), list(live.parameters()), 1.0 - d)
    for avg, cur in zip(averaged.buffers(), live.buffers()):
        if avg.is_floating_point():
            avg.lerp_(cur, 1.0 - d)
        else:
            avg.copy_(cur)
