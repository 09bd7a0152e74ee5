"""Denoising diffusion (family "ddpm"): a small UNet noise predictor, DDPM training, DDIM / DPM-Solver++ sampling.

Ho et al. 2020 training (epsilon prediction, uniform t, plain MSE) on a small UNet in the DDPM
layout: sinusoidal time embedding + MLP, residual blocks with GroupNorm and SiLU that add the time
embedding, stride-2 conv downsampling, nearest + conv upsampling, skip connections, and one
self-attention block at the lowest resolution. An exponential moving average (EMA) of the weights
is kept as a second copy of the UNet (``self.ema``, so it is in state_dict and checkpoints);
sampling and export use it. Sampling is DDIM (Song et al. 2021) or DPM-Solver++(2M) (Lu et al. 2022),
the ``sampler`` option, with the loops in genmodels/ddim.py (PyTorch) and serving/sampler_ddim.py
(NumPy over the ONNX denoiser).

With ``conditional: true`` it is class-conditional with classifier-free guidance (Ho & Salimans 2022):
a learned label embedding (num_classes + 1 rows; the last is the "null" class) is added to the time
embedding; training replaces each label by the null class with probability ``label_dropout`` (0.1),
so one network learns eps(x, t, y) and eps(x, t, null). Sampling combines them per step as
eps_u + w (eps_c - eps_u) (``contracts.diffusion.guided_eps``; w = ``guidance_scale``: 0 unconditional,
1 conditional, > 1 guided), the two predictions coming from one batched call of 2N, at the steps with
t >= ``guidance_min_t`` (default 0.2 T; the others take eps_c alone: a guidance interval).

Images crossing the interface are N x C x H x W in [0, 1]; the diffusion works in [-1, 1].
Shapes: any H, W divisible by 2 ** (len(channel_mult) - 1): 28x28 -> 14 -> 7, 8x8 -> 4 -> 2.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contracts.diffusion import guided_at, guided_eps
from contracts.samplers import DDIMSpec, Noise
from genmodels.base import GenerativeModel, ModelConfig, OnnxGraph, arch, require_halvable, training
from genmodels.ddim import SCHEDULES, alphas_cumprod, ddim_sample
from genmodels.ema import update_ema


@dataclass
class DDPMConfig(ModelConfig):
    # the default UNet (16/32/32 channels at 28/14/7, attention at 7x7, 0.19M parameters) is sized for
    # the CPU budget: 56 epochs (3,528 steps) of mnist5k in ~8.6 min on 2 cores (the whole trainer call,
    # 9.2 s an epoch on a quiet machine, benchmarks/train.py); the FID ratio still falls steeply at 40
    # epochs (151x at 20, 95x at 30, 63.5x at 40 epochs: README). base 32 is ~3x slower per image, so only
    # ~18 epochs would fit the same time
    base_channels: int = arch(16, ge=1)                     # UNet channels at full resolution
    channel_mult: tuple[int, ...] = (1, 2, 2)   # channels per level = base * mult; one downsample between levels
    num_res_blocks: int = arch(1, ge=1)                     # residual blocks per level, each way
    attention: bool = True                      # one self-attention block in the middle (lowest resolution)
    dropout: float = arch(0.0, ge=0, lt=1)
    schedule: str = "linear"                    # "linear" | "cosine" beta schedule
    timesteps: int = arch(1000, ge=2)                       # T, training diffusion steps
    # the sampling settings (sampler, steps, eta, clip, guidance_scale) are not config: see DDPM.sampling_options
    conditional: bool = False                   # label embedding + classifier-free guidance; needs num_classes
    label_dropout: float = training(0.1, ge=0, lt=1)        # conditional: share of labels replaced by the null class
    ema_decay: float = training(0.999, ge=0, lt=1)      # EMA of the weights, warmed up as min(decay, (1+k)/(10+k))
    lr: float = training(2e-3, gt=0)
    weight_decay: float = training(0.0, ge=0)     # AdamW
    warmup_steps: int = training(100, ge=0)       # linear learning-rate warm-up
    grad_clip: float = training(1.0, ge=0)        # max gradient norm (0 = off)
    batch_size: int = training(64)          # training defaults the trainer reads (overridable there)
    epochs: int = training(56)

    def __post_init__(self):
        super().__post_init__()
        self.channel_mult = tuple(int(m) for m in self.channel_mult)  # JSON gives a list back
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError("channel_mult entries must be >= 1")
        if self.conditional and self.num_classes < 1:
            raise ValueError(f"ddpm with conditional: true needs num_classes >= 1, got {self.num_classes}")
        require_halvable("ddpm", self.image_shape, len(self.channel_mult) - 1, "2**(len(channel_mult)-1)",
                         "give channel_mult at most {n} entries")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["channel_mult"] = list(self.channel_mult)
        return out


def _groups(channels: int) -> int:
    """GroupNorm groups: the largest of 8, 4, 2, 1 that divides the channel count."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class TimeEmbedding(nn.Module):
    """int64 t (N) -> N x dim: sinusoidal features of t, then Linear-SiLU-Linear (the DDPM MLP)."""

    def __init__(self, base: int, dim: int):
        super().__init__()
        half = base // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        args = t.to(torch.float32)[:, None] * self.freqs[None]  # N x half
        return self.mlp(torch.cat([torch.sin(args), torch.cos(args)], dim=1))


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-dropout-conv (zero-initialised), + skip (1x1 when channels change)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (DDPM's init)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb):  # N x c_in x H x W, N x t_dim -> N x c_out x H x W
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, residual (plain matmuls: exports cleanly)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.scale = c ** -0.5

    def forward(self, x):  # N x C x H x W -> same
        q, k, v = self.qkv(self.norm(x)).flatten(2).chunk(3, dim=1)          # N x C x L each (L = H*W)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * self.scale, dim=2)  # N x L x L
        out = torch.bmm(v, attn.transpose(1, 2))                              # N x C x L
        return x + self.proj(out.reshape(x.shape))


class UNet(nn.Module):
    """eps_theta(x_t, t): N x C x H x W (in [-1, 1] scale) and int64 N -> predicted noise, N x C x H x W."""

    def __init__(self, cfg: DDPMConfig):
        super().__init__()
        c_img = cfg.image_shape[0]
        base = cfg.base_channels
        chans = [base * m for m in cfg.channel_mult]
        t_dim = 4 * base
        self.time = TimeEmbedding(base, t_dim)
        # conditional: one row per class plus the null class (index num_classes), added to the time embedding
        self.label = nn.Embedding(cfg.num_classes + 1, t_dim) if cfg.conditional else None
        self.conv_in = nn.Conv2d(c_img, base, 3, padding=1)

        self.down = nn.ModuleList()   # level i: num_res_blocks blocks at resolution H / 2**i
        self.downsample = nn.ModuleList()
        c = base
        for i, ch in enumerate(chans):
            self.down.append(nn.ModuleList([ResBlock(c if j == 0 else ch, ch, t_dim, cfg.dropout)
                                             for j in range(cfg.num_res_blocks)]))
            c = ch
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # H x W -> H/2 x W/2

        self.mid1 = ResBlock(c, c, t_dim, cfg.dropout)
        self.mid_attn = Attention(c) if cfg.attention else nn.Identity()
        self.mid2 = ResBlock(c, c, t_dim, cfg.dropout)

        self.up = nn.ModuleList()     # level i (deepest first): concat the level's skip, then blocks
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chans))):
            ch = chans[i]
            self.up.append(nn.ModuleList([ResBlock((c + ch) if j == 0 else ch, ch, t_dim, cfg.dropout)
                                           for j in range(cfg.num_res_blocks)]))
            c = ch
            if i > 0:  # after a 2x nearest upsampling; to the next level's width (half the cost at full size)
                self.upsample.append(nn.Conv2d(c, chans[i - 1], 3, padding=1))
                c = chans[i - 1]

        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, c_img, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, labels=None):
        temb = self.time(t)                          # N x 4*base
        if self.label is not None:                   # int64 N in [0, num_classes]; num_classes = null
            temb = temb + self.label(labels)
        h = self.conv_in(x)                          # N x base x H x W
        skips = []
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, temb)
            skips.append(h)                          # N x chans[i] x H/2**i x W/2**i
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for i, blocks in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, temb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))  # N x C x H x W


class DDPM(GenerativeModel):
    family: ClassVar[str] = "ddpm"
    config_class: ClassVar[type[ModelConfig]] = DDPMConfig
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # sampling defaults, generate-time options (``sample(..., sampler=, steps=, eta=, clip=)``, ``genforge
    # generate --sampler --steps --eta``): steps S (capped at T); eta (ddim only) 0 = deterministic given x_T
    # (PyTorch and ONNX Runtime loops agree to ~1e-5), 1 = fresh noise every step, DDPM-like; clip the
    # predicted x0 to [-1, 1] at every step
    # sampler: "ddim" | "dpmpp_2m" (contracts.diffusion.SAMPLERS); conditional models add guidance_scale
    # (DEFAULT_GUIDANCE). The default is the cheapest setting whose FID ratio is within 5% of DDIM-50's on
    # the default mnist5k model (benchmarks/ddpm_steps.py, N = 1,000): DPM-Solver++(2M) with 10 steps,
    # FID ratio 155 against DDIM-50's 183 (DDIM-10: 175), 5x fewer denoiser calls
    sampling_options: ClassVar[dict[str, Any]] = {"steps": 10, "eta": 0.0, "clip": True, "sampler": "dpmpp_2m"}
    # classifier-free guidance w of conditional models (0 unconditional, 1 conditional) and the share of T
    # below which steps are not guided (a guidance interval; 0: every step guided), from
    # benchmarks/ddpm_guidance.py on the conditional mnist5k model trained 40 epochs (the README's command),
    # dpmpp_2m 10 steps, N = 1,000: w = 3 with guidance at t >= 200 gives FID ratio 23 and conditional
    # accuracy 0.97 (w = 2: 18, 0.956, within two standard errors of 0.95; w = 5: 33, 0.98; w = 1: 32, 0.82):
    # the lowest FID ratio whose accuracy clears 0.95 by two standard errors. At 20 epochs the same settings
    # give 85 and 0.88 (guidance at every step there, the old default: w = 5, 105 and 0.92)
    DEFAULT_GUIDANCE: ClassVar[float] = 3.0
    DEFAULT_GUIDANCE_MIN_T: ClassVar[float] = 0.2
    legacy_sampling_keys: ClassVar[dict[str, str]] = {"sample_steps": "steps"}  # DDPMConfig field until v2

    def __init__(self, config: DDPMConfig):
        super().__init__(config)
        self.sampling["steps"] = min(self.sampling["steps"], config.timesteps)
        if config.conditional:  # per instance: what every ddpm can do, plus labels
            self.capabilities = self.capabilities | {"conditional"}
            self.sampling["guidance_scale"] = self.DEFAULT_GUIDANCE
            self.sampling["guidance_min_t"] = int(self.DEFAULT_GUIDANCE_MIN_T * config.timesteps)
        with torch.random.fork_rng(devices=[]):  # same config -> same weights; global RNG untouched
            torch.manual_seed(config.seed)
            self.unet = UNet(config)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)  # in state_dict as "ema.*"
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))  # optimiser steps taken (EMA/warm-up)
        self._acp = alphas_cumprod(config.schedule, config.timesteps)     # float64 list, length T
        self.register_buffer("sqrt_acp", torch.tensor([math.sqrt(a) for a in self._acp]), persistent=False)
        self.register_buffer("sqrt_1m_acp", torch.tensor([math.sqrt(1 - a) for a in self._acp]), persistent=False)
        self._opt = torch.optim.AdamW(self.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      fused=True)

    @classmethod
    def from_config(cls, values: dict[str, Any], sampling: dict[str, Any] | None = None) -> "DDPM":
        """As the base class. Files written before samplers existed sampled with DDIM and keep it: a
        config.json "sampling" section without "sampler", or the old key sample_steps (config.json before
        the config split, old params)."""
        old = (sampling is not None or "sample_steps" in values) and "sampler" not in {**values, **(sampling or {})}
        if old:
            sampling = {"sampler": "ddim", **(sampling or {})}
        # conditional files from before the guidance interval guided every step, and keep doing so
        if sampling is not None and "guidance_scale" in sampling and "guidance_min_t" not in sampling:
            sampling = {**sampling, "guidance_min_t": 0}
        return super().from_config(values, sampling)

    def set_sampling_defaults(self, **options: Any) -> None:
        """As the base class; an eta > 0 without a sampler keeps DDIM, the only sampler taking eta."""
        if options.get("eta") and "sampler" not in options:
            options["sampler"] = "ddim"
        super().set_sampling_defaults(**options)

    # --- training --------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self._opt}

    def diffusion_loss(self, x0: torch.Tensor, net: nn.Module | None = None,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """Ho et al.'s simple loss: E_t,eps ||eps - eps_theta(sqrt(a_t) x0 + sqrt(1-a_t) eps, t[, y])||^2, mean.

        x0 in [-1, 1]; ``labels`` int64 N (conditional models, null class included). t and eps come from
        the global RNG (the trainer seeds and checkpoints it).
        """
        net = net or self.unet
        t = torch.randint(0, self.config.timesteps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = self.sqrt_acp[t].view(-1, 1, 1, 1) * x0 + self.sqrt_1m_acp[t].view(-1, 1, 1, 1) * eps
        return F.mse_loss(net(x_t, t) if labels is None else net(x_t, t, labels), eps)

    def _train_labels(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Conditional: the batch labels, each replaced by the null class with probability label_dropout
        (drawn from the global RNG, before t and eps; unconditional
        models draw nothing, so their training stream is unchanged). Unconditional: None."""
        cfg = self.config
        if not cfg.conditional:
            return None
        if y is None or (y < 0).any():
            raise ValueError("ddpm with conditional: true trains on labelled data; fit_step got no labels "
                             "(or unlabelled images, -1)")
        y = y.to(self.device).long().reshape(n)
        drop = torch.rand(n, device=self.device) < cfg.label_dropout
        return torch.where(drop, torch.full_like(y, cfg.num_classes), y)

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        cfg = self.config
        step = int(self.step)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr
        for group in self._opt.param_groups:
            group["lr"] = lr
        loss = self.diffusion_loss(x.to(self.device) * 2 - 1, labels=self._train_labels(y, x.shape[0]))
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip)
        self._opt.step()
        update_ema(self.ema, self.unet, cfg.ema_decay, step)
        self.step += 1
        return {"loss": loss.item()}

    # --- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def denoise_from(self, x_t: torch.Tensor, generator: torch.Generator | None = None,
                     sample_steps: int | None = None, labels: torch.Tensor | None = None,
                     **sampling: Any) -> torch.Tensor:
        """DDIM / DPM-Solver++ with the EMA weights from a given x_T (N x C x H x W): images in [0, 1].

        ``sampling``: sampler, steps, eta, clip (and guidance_scale) over ``self.sampling`` (``sample_steps``
        is the old name of steps). ``labels``: int64 N in [0, num_classes) for conditional models (None:
        every class in turn); unconditional models refuse them (ValueError).
        """
        self.ema.eval()
        if sample_steps is not None:
            sampling = {"steps": sample_steps, **sampling}
        spec = self.sampling_spec(sampling)
        x_t = x_t.to(self.device)
        x0 = ddim_sample(self._eps_fn(self._sample_labels(labels, x_t.shape[0]), spec.guidance_scale,
                                      spec.guidance_min_t), x_t,
                         self._acp, spec.sample_steps, eta=spec.eta, clip=spec.clip, generator=generator,
                         sampler=spec.sampler)
        return ((x0 + 1) * 0.5).clamp(0.0, 1.0)

    def _sample_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.config.conditional:
            if labels is not None:
                raise ValueError("ddpm is unconditional (conditional: false); it takes no labels")
            return None
        return self.requested_labels(labels, n)

    def _eps_fn(self, labels: torch.Tensor | None, scale: float | None, min_t: int | None = None):
        """denoiser(x, t) for the loop: the EMA UNet, guided when conditional (one batch of 2N per step,
        [conditional; unconditional], as serving does; w = 1 or 0 need only one half); with ``min_t`` guided
        only at steps with t >= min_t (``contracts.diffusion.guided_at``), plain conditional below."""
        net = self.ema
        if labels is None:
            return net
        if min_t and scale not in (0.0, 1.0):  # w = 0 stays the unconditional model at every step
            every, plain = self._eps_fn(labels, scale), self._eps_fn(labels, 1.0)
            return lambda x, t: every(x, t) if guided_at(int(t[0]), min_t) else plain(x, t)
        null = torch.full_like(labels, self.config.num_classes)
        if scale in (0.0, 1.0):
            fixed = labels if scale == 1.0 else null
            return lambda x, t: net(x, t, fixed)
        both = torch.cat([labels, null])

        def guided(x, t):
            eps_c, eps_u = net(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            return guided_eps(eps_c, eps_u, scale)
        return guided

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **sampling: Any) -> torch.Tensor:
        """N x C x H x W in [0, 1]: x_T ~ N(0, I), then ``steps`` sampler steps with the EMA UNet.

        ``sampling``: sampler, steps, eta, clip (guidance_scale) for this call (defaults: ``self.sampling``).
        ``labels``: conditional models only, int64 N (None: every class in turn)."""
        spec = self.sampling_spec(sampling)  # validated before any work
        labels = self._sample_labels(labels, n)
        # draw on the generator's device, then move: a CPU generator gives the same x_T on any device
        x_t = torch.randn(n, *self.config.image_shape, generator=generator,
                          device=generator.device if generator is not None else self.device)
        return self.denoise_from(x_t, generator, labels=labels, **spec.sampling_defaults())

    # --- export / serving ------------------------------------------------------------------
    def onnx_graphs(self) -> list[OnnxGraph]:
        module = _Denoiser(self.ema).eval()
        c, h, w = self.config.image_shape
        x = torch.zeros(2, c, h, w, device=self.device)  # batch 2: dynamo must not specialise on 1
        # t spans [0, T-1]: export's parity check draws random timesteps from the example's range
        t = torch.tensor([0, self.config.timesteps - 1], dtype=torch.int64, device=self.device)
        inputs, names = (x, t), ["x", "t"]
        axes = {"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}}
        if self.config.conditional:  # labels span [0, num_classes], the null class included (parity draws there)
            inputs += (torch.tensor([0, self.config.num_classes], dtype=torch.int64, device=self.device),)
            names.append("labels")
            axes["labels"] = {0: "batch"}
        return [OnnxGraph(name="denoiser", module=module, example_inputs=inputs, input_names=names,
                          output_names=["eps"], dynamic_axes=axes)]

    def sampler(self) -> DDIMSpec:
        cfg, opts = self.config, self.sampling
        cond = bool(cfg.conditional)
        return DDIMSpec(graph="denoiser", noise=Noise(name="x", shape=tuple(cfg.image_shape)), timestep_input="t",
                        output="eps", conditional=cond, prediction="epsilon", timesteps=cfg.timesteps,
                        sample_steps=opts["steps"], timestep_spacing="trailing", eta=opts["eta"], clip=opts["clip"],
                        schedule=cfg.schedule, alphas_cumprod=tuple(self._acp), sampler=opts["sampler"],
                        labels_input="labels" if cond else None, null_label=cfg.num_classes if cond else None,
                        guidance_scale=opts["guidance_scale"] if cond else None,
                        guidance_min_t=opts.get("guidance_min_t") if cond else None)


class _Denoiser(nn.Module):
    """The exported graph: (x float32 N x C x H x W, t int64 N[, labels int64 N]) -> eps, N x C x H x W."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, labels=None):
        return self.unet(x, t, labels)
