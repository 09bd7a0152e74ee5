"""RealNVP (family "realnvp"): Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using
Real NVP", small, for grey images (MNIST 28x28, digits 8x8).

One file, one family: the config, the coupling layers, the multi-scale flow, the exact likelihood
and the export hooks. Images crossing the interface are N x C x H x W floats in [0, 1].

Data -> flow input (the paper's preprocessing). An 8-bit image x = k / 255 is dequantised,
y = (k + u) / 256 with u ~ U[0, 1)^D, then logit-transformed, l = logit(alpha + (1 - 2 alpha) y).
The flow f maps l to z ~ N(0, I) (same shape as the image). The density of y is
    log p(y) = log N(f(l); 0, I) + log|det df/dl| + sum_d [log(1 - 2 alpha) - log s_d - log(1 - s_d)],
with s = alpha + (1 - 2 alpha) y, and the discrete model is P(k) = integral of p over k's cube of
side 1/256, so -log P(k) <= E_u[-log p(y)] + D log 256 (Jensen). nll() returns
-log p(y) + D log 256 at one seeded u per image (``nll_samples`` draws averaged): an unbiased
estimate of that dequantisation bound, in nats per image. Divided by D ln 2 it is the bits/dim
the RealNVP paper reports (1.06 on MNIST).

Flow (multi-scale, ``scales`` levels). Each level but the last: 3 affine couplings with
alternating checkerboard masks, a squeeze (C x H x W -> 4C x H/2 x W/2), 3 affine couplings with
alternating channel masks, then half the channels are factored out (they are part of z) and the
other half goes to the next level. The last level: 4 checkerboard couplings. Level i's coupling
networks have ``hidden * hidden_mult**i`` channels: each level has a quarter of the pixels, so
doubling the width keeps every level's cost about equal, and the coarse levels, whose 3x3 convs see
the whole digit, get the capacity for its shape (mnist5k, seed 0, 18 epochs, 1 thread: scales 2
and widths 16/16, 471x the real floor's FID, strokes in fragments; scales 3, 2 blocks, 16/16/16,
322x; 16/32/64, 162x, with 8 of 10 classes; ``benchmarks/quality_curve.py``). The learning rate
decays 5x slower than it did (``lr_decay`` 0.9999 per step, from 0.9995): seed 1 went from 287x and
6 classes to 144x and 8; 3 seeds of ``genforge run``: 122-211x. An exponential moving
average of the weights (``ema_decay``, off by default) improves bits/dim (seed 1, 14 epochs: 1.649
against 1.688) but not the samples (328x against 250x), so the trained weights sample. The factored parts
are put back where they came from (un-squeezed), so z has the image's shape. H and W must be
divisible by 2^(scales-1). Before the first level (config ``actnorm``, on by default): a per-pixel
affine initialised from the first training batch (Glow's actnorm, data-dependent init), standing
in for the paper's batch normalisation: MNIST's background pixels are nearly constant, and a
flow that must learn to contract them through tanh-bounded couplings spends most of a 10-minute
CPU budget on it (mnist5k, hidden=24, lr 1e-3, 150 s runs: 2.44 bits/dim after 263 steps with
it, 2.58 after 491 steps without).

Coupling: y = x * exp(s(x_fixed)) + t(x_fixed) on the non-fixed half, s and t from a small
ResNet (3x3 convs, ReLU) whose last conv starts at zero (the flow starts as the identity);
s = scale * tanh(raw) with a learned per-channel scale (the paper's stabilisation). Every op is
a standard ONNX op: the exported "inverse" graph is z -> images.

Samples. inverse: z -> l -> y = (sigmoid(l) - alpha) / (1 - 2 alpha) -> images =
clip((256 y - 1/2) / 255, 0, 1), so that the generator's round(255 * images) is floor(256 y), the
8-bit value whose dequantisation cube holds y.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contracts.samplers import FlowSpec, Noise
from genmodels.base import LikelihoodModel, ModelConfig, OnnxGraph, arch, evaluation, require_halvable, training
from genmodels.ema import update_ema

LOG_2PI = math.log(2 * math.pi)


@dataclass
class RealNVPConfig(ModelConfig):
    hidden: int = arch(16, ge=1)                # channels of each coupling's s/t ResNet at the first level
    hidden_mult: int = arch(2, ge=1)            # ... times hidden_mult at each later level (16, 32, 64)
    blocks: int = arch(2, ge=0)                 # residual blocks per coupling network
    scales: int = arch(3, ge=1)                 # multi-scale levels (H, W divisible by 2^(scales-1))
    alpha: float = arch(0.05, gt=0, lt=0.5)             # logit transform: logit(alpha + (1 - 2 alpha) y), as in the paper
    actnorm: bool = True            # a per-pixel affine on the logits first, initialised from the first batch
    actnorm_floor: float = arch(0.05, gt=0)     # smallest per-pixel std the data-dependent init divides by
    actnorm_lr: float = training(10.0, gt=0)  # its learning rate, as a multiple of lr
    nll_samples: int = evaluation(1, ge=1)        # dequantisation draws averaged by nll()
    ema_decay: float = training(0.0, ge=0, lt=1)  # EMA of the flow's weights (genmodels/ema.py), which samples,
                                                  # scores and is exported; 0: the trained weights themselves
    lr: float = training(3e-3)
    lr_decay: float = training(0.9999, gt=0, le=1)      # per-step exponential decay of the learning rate (0.9995: seed 1, 287x / 6 classes at 18 epochs; 0.9999: 144x / 8)
    weight_decay: float = training(5e-5, ge=0)    # L2 on the weights (the paper uses 5e-5)
    grad_clip: float = training(100.0, ge=0)      # max gradient norm (0 = no clipping)
    batch_size: int = training(32)          # training defaults the trainer reads (overridable there)
    epochs: int = training(18)

    def __post_init__(self):
        super().__post_init__()
        require_halvable("realnvp", self.image_shape, self.scales - 1, "2**(scales-1)", "set scales to at most {n}")


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x 4C x H/2 x W/2 (each 2x2 block becomes 4 channels)."""
    _, c, h, w = x.shape
    x = x.reshape(-1, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(-1, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of squeeze: N x 4C x H x W -> N x C x 2H x 2W."""
    _, c, h, w = x.shape
    x = x.reshape(-1, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(-1, c // 4, h * 2, w * 2)


class ResNet(nn.Module):
    """in -> 3x3 conv -> [ReLU, 3x3, ReLU, 3x3, + skip] x blocks -> ReLU -> 3x3 conv (zero-init) -> out."""

    def __init__(self, c_in: int, hidden: int, c_out: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden, hidden, 3, padding=1)) for _ in range(blocks))
        self.out = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.relu(h))


class Coupling(nn.Module):
    """Affine coupling with a checkerboard (over pixels) or channel (over halves) mask."""

    def __init__(self, c: int, h: int, w: int, hidden: int, blocks: int, kind: str, parity: int):
        super().__init__()
        self.kind, self.parity = kind, parity
        if kind == "checker":
            ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            self.register_buffer("mask", ((ii + jj + parity) % 2 == 0).float().view(1, 1, h, w), persistent=False)
            self.net = ResNet(c + 1, hidden, 2 * c, blocks)   # input: fixed pixels and the mask itself
            self.scale = nn.Parameter(torch.ones(1, c, 1, 1))
        else:
            self.net = ResNet(c // 2, hidden, c, blocks)
            self.scale = nn.Parameter(torch.ones(1, c // 2, 1, 1))

    def _st(self, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "checker":
            fixed = torch.cat([fixed, self.mask.expand_as(fixed[:, :1])], dim=1)
        s, t = self.net(fixed).chunk(2, dim=1)
        return self.scale * torch.tanh(s), t

    def _split(self, x):
        a, b = x.chunk(2, dim=1)
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, fixed, free):
        return torch.cat([fixed, free] if self.parity == 0 else [free, fixed], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, log|det dy/dx| per image)."""
        if self.kind == "checker":
            s, t = self._st(x * self.mask)
            s, t = s * (1 - self.mask), t * (1 - self.mask)      # fixed pixels: s = t = 0, y = x
            return x * torch.exp(s) + t, s.flatten(1).sum(1)
        fixed, free = self._split(x)
        s, t = self._st(fixed)
        return self._join(fixed, free * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "checker":
            s, t = self._st(y * self.mask)                       # y * mask = x * mask
            s, t = s * (1 - self.mask), t * (1 - self.mask)
            return (y - t) * torch.exp(-s)
        fixed, free = self._split(y)
        s, t = self._st(fixed)
        return self._join(fixed, (free - t) * torch.exp(-s))


class Level(nn.Module):
    """One scale: checkerboard couplings, then (unless last) squeeze, channel couplings, factor out half."""

    def __init__(self, c: int, h: int, w: int, cfg: "RealNVPConfig", last: bool, hidden: int):
        super().__init__()
        self.last = last
        n_checker = 4 if last else 3
        self.checker = nn.ModuleList(Coupling(c, h, w, hidden, cfg.blocks, "checker", i % 2) for i in range(n_checker))
        self.channel = nn.ModuleList(
            [] if last else [Coupling(4 * c, h // 2, w // 2, hidden, cfg.blocks, "channel", i % 2) for i in range(3)])


class ActNorm(nn.Module):
    """z = (l - loc) * exp(log_scale) per pixel (C x H x W parameters), log|det| = sum(log_scale).

    Glow's actnorm, per pixel rather than per channel: loc and log_scale start as the mean and
    -log std of the first training batch (std floored at ``floor``), so pixels that are nearly
    constant (MNIST's background, whose logit only varies by the dequantisation noise) are
    standardised from the first step instead of after thousands of Adam steps. ``initialized``
    is a buffer: saved with the weights, so a resumed or loaded model never re-initialises.
    """

    def __init__(self, shape: tuple[int, int, int], floor: float):
        super().__init__()
        self.floor = floor
        self.loc = nn.Parameter(torch.zeros(1, *shape))
        self.log_scale = nn.Parameter(torch.zeros(1, *shape))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, l: torch.Tensor) -> None:
        self.loc.copy_(l.mean(0, keepdim=True))
        self.log_scale.copy_(-torch.log(l.std(0, keepdim=True).clamp(min=self.floor)))
        self.initialized.fill_(True)

    def forward(self, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(l)
        return (l - self.loc) * torch.exp(self.log_scale), self.log_scale.sum().expand(l.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.exp(-self.log_scale) + self.loc


class Flow(nn.Module):
    """The multi-scale flow: l (N x C x H x W, logit space) <-> z (same shape)."""

    def __init__(self, cfg: "RealNVPConfig"):
        super().__init__()
        c, h, w = cfg.image_shape
        levels = []
        for i in range(cfg.scales):
            last = i == cfg.scales - 1
            levels.append(Level(c, h, w, cfg, last, cfg.hidden * cfg.hidden_mult ** i))
            c, h, w = 2 * c, h // 2, w // 2  # the half that goes on: 4C / 2 channels
        self.levels = nn.ModuleList(levels)
        self.actnorm = ActNorm(tuple(cfg.image_shape), cfg.actnorm_floor) if cfg.actnorm else None

    def forward(self, x: torch.Tensor, i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """l -> (z, log|det dz/dl| per image)."""
        level = self.levels[i]
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        if i == 0 and self.actnorm is not None:
            x, logdet = self.actnorm(x)
        for coupling in level.checker:
            x, ld = coupling(x)
            logdet = logdet + ld
        if level.last:
            return x, logdet
        x = squeeze(x)
        for coupling in level.channel:
            x, ld = coupling(x)
            logdet = logdet + ld
        out, rest = x.chunk(2, dim=1)                            # factor out half: it is part of z
        rest, ld = self.forward(rest, i + 1)
        return unsqueeze(torch.cat([out, rest], dim=1)), logdet + ld

    def inverse(self, z: torch.Tensor, i: int = 0) -> torch.Tensor:
        level = self.levels[i]
        if not level.last:
            out, rest = squeeze(z).chunk(2, dim=1)
            x = torch.cat([out, self.inverse(rest, i + 1)], dim=1)
            for coupling in reversed(level.channel):
                x = coupling.inverse(x)
            z = unsqueeze(x)
        for coupling in reversed(level.checker):
            z = coupling.inverse(z)
        if i == 0 and self.actnorm is not None:
            z = self.actnorm.inverse(z)
        return z


class _Inverse(nn.Module):
    """The exported "inverse" graph: z (N x C x H x W, standard normal) -> images in [0, 1]."""

    def __init__(self, flow: Flow, alpha: float):
        super().__init__()
        self.flow, self.alpha = flow, alpha

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = (torch.sigmoid(self.flow.inverse(z)) - self.alpha) / (1 - 2 * self.alpha)  # dequantised, [0, 1]
        return ((y * 256.0 - 0.5) / 255.0).clamp(0.0, 1.0)   # round(255 x) = floor(256 y)


class RealNVP(LikelihoodModel):
    family: ClassVar[str] = "realnvp"
    config_class: ClassVar[type[ModelConfig]] = RealNVPConfig
    sampling_options: ClassVar[dict[str, Any]] = {"temperature": 1.0}  # z ~ N(0, temperature^2 I)
    capabilities: ClassVar[frozenset[str]] = frozenset({"nll", "score"})
    # models stored before widths grew per level / before the weight average
    legacy_field_values: ClassVar[dict[str, Any]] = {"hidden_mult": 1, "ema_decay": 0.0}

    def __init__(self, config: RealNVPConfig):
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):  # same config -> same weights; global RNG untouched
            torch.manual_seed(config.seed)
            self.flow = Flow(config)
        self.flow_ema: Flow | None = None  # in state_dict as "flow_ema.*" when ema_decay > 0
        if config.ema_decay > 0:
            self.flow_ema = copy.deepcopy(self.flow).requires_grad_(False)
            self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))  # optimiser steps averaged
        named = list(self.flow.named_parameters(prefix="flow"))
        decay = [p for n, p in named if n.endswith("weight")]
        rest = [p for n, p in named if not n.endswith("weight") and not n.startswith("flow.actnorm.")]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        if config.actnorm:
            groups.append({"params": list(self.flow.actnorm.parameters()), "weight_decay": 0.0,
                           "lr": config.lr * config.actnorm_lr})
        self._opt = torch.optim.Adam(groups, lr=config.lr, fused=True)
        self._sched = torch.optim.lr_scheduler.ExponentialLR(self._opt, gamma=config.lr_decay)

    @property
    def nll_variant(self) -> str:
        c, h, w = self.config.image_shape
        return f"uniformly dequantized 8-bit {h}x{w}" if c == 1 else f"uniformly dequantized 8-bit {c}x{h}x{w}"

    # --- the model -------------------------------------------------------------------------
    def sampling_flow(self) -> Flow:
        """The flow that samples, scores (nll, score, forward_z) and is exported: the EMA copy when
        ``ema_decay > 0``, else the trained one."""
        return self.flow if self.flow_ema is None else self.flow_ema

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:  # training: the global RNG, which the trainer seeds and checkpoints
            return torch.rand_like(like)
        return torch.rand(like.shape, generator=generator, device=generator.device).to(like)

    def nll_dequantized(self, x: torch.Tensor, generator: torch.Generator | None = None,
                        flow: Flow | None = None) -> torch.Tensor:
        """-log p(y) + D log 256 in nats per image at one dequantisation draw (differentiable), under ``flow``
        (default: the trained one)."""
        a = self.config.alpha
        k = torch.round(x.clamp(0.0, 1.0) * 255.0)                      # the 8-bit values
        y = (k + self._noise(k, generator)) / 256.0                      # dequantised, in [0, 1)
        s = a + (1 - 2 * a) * y
        l = torch.log(s) - torch.log1p(-s)                                # logit
        log_det_logit = (math.log(1 - 2 * a) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        z, log_det_flow = (self.flow if flow is None else flow)(l)
        log_pz = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).flatten(1).sum(1)
        dims = math.prod(x.shape[1:])
        return -(log_pz + log_det_flow + log_det_logit) + dims * math.log(256.0)

    @torch.no_grad()
    def forward_z(self, images: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """z of images (N x C x H x W in [0, 1]) at dequantisation u (default 0.5: the cube's centre)."""
        self.eval()
        a = self.config.alpha
        k = torch.round(images.to(self.device).clamp(0.0, 1.0) * 255.0)
        y = (k + (0.5 if u is None else u.to(k))) / 256.0
        s = a + (1 - 2 * a) * y
        return self.sampling_flow()(torch.log(s) - torch.log1p(-s))[0]

    @torch.no_grad()
    def inverse_images(self, z: torch.Tensor) -> torch.Tensor:
        """The exported graph's function: z (N x C x H x W) -> images in [0, 1]."""
        self.eval()
        return _Inverse(self.sampling_flow(), self.config.alpha)(z.to(self.device))

    # --- training --------------------------------------------------------------------------
    def training_nll(self, x: torch.Tensor) -> torch.Tensor:
        return self.nll_dequantized(x)

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        losses = super().fit_step(x, y)
        if self.flow_ema is not None:
            update_ema(self.flow_ema, self.flow, self.config.ema_decay, int(self.ema_steps))
            self.ema_steps += 1
        return losses

    # --- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def nll(self, x: torch.Tensor, generator: torch.Generator | None = None, chunk: int = 256) -> torch.Tensor:
        """-log p(x) in nats per image, N (the dequantisation bound; see the module docstring).

        The u draws come from ``generator``, default one seeded with config.seed: reproducible, and
        the global RNG training resumes from is never advanced.
        """
        self.eval()
        x = x.to(self.device)
        g = generator if generator is not None else torch.Generator(device=x.device).manual_seed(self.config.seed)
        k = self.config.nll_samples
        total = torch.zeros(x.shape[0], device=x.device)
        for _ in range(k):
            total += torch.cat([self.nll_dequantized(xb, g, self.sampling_flow()) for xb in x.split(chunk)])
        return total / k

    @torch.no_grad()
    def score(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Anomaly score = nll (nats per image)."""
        return self.nll(x, generator)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **sampling: Any) -> torch.Tensor:
        """z ~ N(0, I) (torch.randn, N x C x H x W), times ``temperature`` (option, default
        ``self.sampling``), through the inverse: N x C x H x W in [0, 1]."""
        temperature = self.sampling_spec(sampling).temperature
        # draw on the generator's device, then move: a CPU generator gives the same z on any device
        z = torch.randn((n, *self.config.image_shape), generator=generator,
                        device=generator.device if generator is not None else self.device)
        if temperature != 1.0:  # float32, as serving's images_from_noise scales it
            z = z * torch.tensor(temperature, dtype=torch.float32)
        return self.inverse_images(z)

    # --- export / serving ------------------------------------------------------------------
    def onnx_graphs(self) -> list[OnnxGraph]:
        module = _Inverse(self.sampling_flow(), self.config.alpha).eval()
        z = torch.zeros(2, *self.config.image_shape, device=self.device)  # batch 2: dynamo must not specialise on 1
        return [OnnxGraph(name="inverse", module=module, example_inputs=(z,), input_names=["z"],
                          output_names=["images"], dynamic_axes={"z": {0: "batch"}, "images": {0: "batch"}})]

    def sampler(self) -> FlowSpec:
        return FlowSpec(graph="inverse", output="images",
                        noise=Noise(name="z", shape=tuple(int(v) for v in self.config.image_shape)),
                        temperature=self.sampling["temperature"], conditional=False)
