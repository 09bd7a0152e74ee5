"""DCGAN (family "dcgan"): a small convolutional GAN for 28x28 and 8x8 (or other small) images.

Radford et al. 2015 in the sizes MNIST needs: transposed-conv generator with batch norm and a
tanh output, strided-conv discriminator with leaky ReLU, N(0, 0.02) init, Adam(0.5, 0.999), and
the non-saturating generator loss. Optional spectral norm on the discriminator (then without
batch norm, which it replaces). With `conditional: true` it is a class-conditional GAN: the
generator sees [z, one-hot(y)] and the discriminator is a projection discriminator (Miyato &
Koyama 2018: logit = head(h) + <embed(y), h> over its features h), sampled by label. Samples and the
exported graph use an exponential moving average of the generator's weights (``ema_decay``; Yazici et al.
2019, "The Unusual Effectiveness of Averaging in GAN Training"; 0 samples the trained weights). Images
crossing the interface are N x C x H x W in [0, 1]; inside, the networks work in [-1, 1].
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from contracts.samplers import DirectSpec, Noise
from genmodels.base import GenerativeModel, ModelConfig, OnnxGraph, arch, stride2_levels, training
from genmodels.ema import update_ema


@dataclass
class DCGANConfig(ModelConfig):
    # Defaults: recognisable digits after 25 epochs of mnist5k (3,125 steps, ~4 s an epoch on 2
    # idle CPU cores; the default trains 50, below). At this budget the number of steps matters more than width: ngf=64 with
    # batch 64 costs more per epoch and draws rougher strokes; ndf=16 lets G get away with scribbles.
    latent_dim: int = arch(64, ge=1)
    ngf: int = arch(32, ge=1)                   # generator channels at half size (14x14 for 28x28); doubles per stage down
    ndf: int = arch(32, ge=1)                   # discriminator channels after its first conv; doubles per level
    spectral_norm: bool = False     # spectral norm on every discriminator layer (and no batch norm there)
    conditional: bool = False       # labels into generator and discriminator; sample(labels=...)
    lr_g: float = training(2e-4)
    lr_d: float = training(2e-4)
    betas: tuple[float, float] = training((0.5, 0.999))
    # EMA of the generator's weights (and batch-norm statistics), warmed up as min(decay, (1+k)/(10+k)) over
    # generator steps k; what sample() and the exported graph use. 0: no average, the trained weights
    ema_decay: float = training(0.999, ge=0, lt=1)
    batch_size: int = training(32)          # training defaults the trainer reads (overridable there)
    # 50 epochs (~4.5 min on 2 cores): the conditional dcgan's FID ratio falls 191x -> 42.5x -> 8.1x at 10 -> 25 ->
    # 50 epochs, conditional accuracy 0.49 -> 0.82 -> 0.96 (seed 0, EMA weights); the unconditional one is
    # 108x at 25 and 99x at 50 (benchmarks/quality_curve.py; README "Model families")
    epochs: int = training(50)

    def __post_init__(self):
        super().__post_init__()
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives a list back
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two floats, got {self.betas}")
        if self.conditional and self.num_classes < 1:
            raise ValueError(f"conditional: true needs num_classes >= 1, got {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["betas"] = list(self.betas)
        return out


def _dcgan_init(m: nn.Module) -> None:
    """DCGAN's init: weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _init(m: nn.Module) -> nn.Module:
    _dcgan_init(m)
    return m


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        c_img, h, w = cfg.image_shape
        n = stride2_levels(h, w)
        h, w = h // 2 ** n, w // 2 ** n
        chans = [c_img] + [cfg.ngf * 2 ** i for i in range(n)]  # chans[i] = channels at level i
        top = chans[-1] if n else cfg.ngf
        # batch norm after the reshape: per channel (DCGAN), and it still trains on a batch of one
        inputs = cfg.latent_dim + (cfg.num_classes if cfg.conditional else 0)  # [z, one-hot(y)]
        self.project = nn.Sequential(  # N x inputs -> N x top x h x w
            nn.Linear(inputs, top * h * w, bias=False), nn.Unflatten(1, (top, h, w)),
            nn.BatchNorm2d(top), nn.ReLU())
        layers: list[nn.Module] = []
        for i in range(n, 1, -1):  # (chans[i], h, w) -> (chans[i-1], 2h, 2w)
            layers += [nn.ConvTranspose2d(chans[i], chans[i - 1], 4, 2, 1, bias=False),
                       nn.BatchNorm2d(chans[i - 1]), nn.ReLU()]
        # last stage to image channels (a 3x3 conv at full size when no stride-2 stage fits)
        layers.append(nn.ConvTranspose2d(chans[1], c_img, 4, 2, 1) if n else nn.Conv2d(top, c_img, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z, onehot=None):  # N x latent (+ N x K) -> N x C x H x W in [-1, 1]
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        return torch.tanh(self.net(self.project(z)))


class Discriminator(nn.Module):
    """Strided convs to one logit. `norm`: "batch" (DCGAN), "layer" (per-sample, for WGAN-GP, whose
    gradient penalty is per sample and breaks under batch norm), "spectral" (spectral norm on every
    layer instead of a normalisation layer) or "none"."""

    def __init__(self, cfg: DCGANConfig, norm: str = "batch", dcgan_init: bool = True):
        super().__init__()
        if norm not in ("batch", "layer", "spectral", "none"):
            raise ValueError(f"discriminator norm must be batch, layer, spectral or none, got {norm!r}")
        c, h, w = cfg.image_shape
        # initialise before spectral norm wraps a weight, so its power iteration starts from the final one
        init = _init if dcgan_init else (lambda m: m)  # else PyTorch's default (Kaiming-uniform) init
        sn = (lambda m: _spectral_norm(init(m))) if norm == "spectral" else init
        layers: list[nn.Module] = []
        for i in range(max(1, stride2_levels(h, w))):
            out = cfg.ndf * 2 ** i
            stride = 2 if h % 2 == 0 and w % 2 == 0 else 1
            layers.append(sn(nn.Conv2d(c, out, 4 if stride == 2 else 3, stride, 1)))  # -> out x h/2 x w/2
            if i > 0 and norm == "batch":  # never on the first layer (DCGAN)
                layers.append(init(nn.BatchNorm2d(out)))
            elif i > 0 and norm == "layer":
                layers.append(nn.GroupNorm(1, out))  # one group: layer norm over C x H x W
            layers.append(nn.LeakyReLU(0.2))
            c, h, w = out, h // stride, w // stride
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)  # N x C x H x W -> N x F
        self.head = sn(nn.Linear(c * h * w, 1))
        # projection discriminator: a class embedding dotted with the features
        self.embed = init(nn.Embedding(cfg.num_classes, c * h * w)) if cfg.conditional else None

    def forward(self, x, labels=None):  # N x C x H x W in [-1, 1] (+ N labels) -> N logits (real > 0)
        h = self.features(x)
        logit = self.head(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit


class _GenerateImages(nn.Module):
    """The exported graph: z (+ labels) -> image in [0, 1]."""

    def __init__(self, generator: Generator, eye: torch.Tensor | None = None):
        super().__init__()
        self.generator = generator
        self.eye = eye

    def forward(self, z, labels=None):
        onehot = None if self.eye is None else self.eye[labels]  # a Gather in ONNX
        return (self.generator(z, onehot) + 1) * 0.5


class DCGAN(GenerativeModel):
    family: ClassVar[str] = "dcgan"
    config_class: ClassVar[type[ModelConfig]] = DCGANConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"latent"})

    def __init__(self, config: DCGANConfig):
        super().__init__(config)
        if config.conditional:  # per instance: the class's set is what every dcgan can do
            self.capabilities = self.capabilities | {"conditional"}
        with torch.random.fork_rng(devices=[]):  # same config -> same weights; global RNG untouched
            torch.manual_seed(config.seed)
            self.generator = Generator(config)
            self.discriminator = Discriminator(config, self.discriminator_norm(), dcgan_init=self.dcgan_init_critic)
        self.generator_ema: Generator | None = None  # in state_dict as "generator_ema.*" when ema_decay > 0
        if config.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))  # generator steps averaged
        if config.conditional:
            self.register_buffer("eye", torch.eye(config.num_classes), persistent=False)
        fused = {"fused": True}  # one kernel per step instead of one per tensor: measurable on CPU
        self._opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=config.betas, **fused)
        self._opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=config.betas, **fused)

    dcgan_init_critic: ClassVar[bool] = True

    def discriminator_norm(self) -> str:
        return "spectral" if self.config.spectral_norm else "batch"

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self._opt_g, "discriminator": self._opt_d}

    # --- labels ----------------------------------------------------------------------------
    def _train_labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if not self.config.conditional:
            return None
        if y is None:
            raise ValueError(f"{self.family} with conditional: true trains on labelled data; fit_step got no labels")
        return y.to(self.device).long()

    def _sample_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.config.conditional:
            if labels is not None:
                raise ValueError(f"{self.family} is unconditional (conditional: false); it takes no labels")
            return None
        return self.requested_labels(labels, n)

    def _generate(self, z: torch.Tensor, labels: torch.Tensor | None, averaged: bool = False) -> torch.Tensor:
        """N x C x H x W in [-1, 1], from the trained generator or (``averaged``) the sampling one."""
        net = self.sampling_generator() if averaged else self.generator
        return net(z, None if labels is None else self.eye[labels])

    # --- the weight average ------------------------------------------------------------------
    def sampling_generator(self) -> Generator:
        """The generator samples come from: the EMA copy when ``ema_decay > 0``, else the trained one."""
        return self.generator if self.generator_ema is None else self.generator_ema

    @torch.no_grad()
    def update_ema(self) -> None:
        """After each generator step: EMA <- decay * EMA + (1 - decay) * weights (float buffers too: the batch-norm
        running statistics); integer buffers are copied."""
        if self.generator_ema is None:
            return
        update_ema(self.generator_ema, self.generator, self.config.ema_decay, int(self.ema_steps))
        self.ema_steps += 1

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """A state dict saved before the EMA existed (no ``generator_ema.*``) loads with the average set to the
        trained weights, so such a model samples as it did."""
        if self.generator_ema is not None and not any(k.startswith("generator_ema.") for k in state_dict):
            state_dict = {**state_dict, "ema_steps": torch.zeros((), dtype=torch.long),
                          **{"generator_ema." + k[len("generator."):]: v for k, v in state_dict.items()
                             if k.startswith("generator.")}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # --- training --------------------------------------------------------------------------
    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        real = x.to(self.device) * 2 - 1
        labels = self._train_labels(y)  # fakes take the batch's labels: same class mix as the data
        # the global RNG (seeded and checkpointed by the trainer) is the only randomness here
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        fake = self._generate(z, labels)

        # discriminator: real -> 1, fake -> 0; softplus(-l) = -log sigmoid(l), i.e. BCE on logits
        logit_real = self.discriminator(real, labels)
        logit_fake = self.discriminator(fake.detach(), labels)
        loss_d = F.softplus(-logit_real).mean() + F.softplus(logit_fake).mean()
        self._opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self._opt_d.step()

        # generator, non-saturating: maximise log D(G(z)) against the updated discriminator;
        # D's weights are frozen for this backward so it costs no D parameter gradients
        self.discriminator.requires_grad_(False)
        loss_g = F.softplus(-self.discriminator(fake, labels)).mean()
        self._opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self._opt_g.step()
        self.discriminator.requires_grad_(True)
        self.update_ema()

        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(),
                "d_real": torch.sigmoid(logit_real).mean().item(),
                "d_fake": torch.sigmoid(logit_fake).mean().item()}

    # --- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **sampling: Any) -> torch.Tensor:
        """N x C x H x W in [0, 1]; batch norm uses its running statistics (eval mode)."""
        self.sampling_spec(sampling)  # the direct sampler takes no option: any is an error
        self.eval()
        labels = self._sample_labels(labels, n)
        # draw on the generator's device, then move: a CPU generator gives the same z on any device
        z = torch.randn(n, self.config.latent_dim, generator=generator,
                        device=generator.device if generator is not None else self.device)
        return self.from_noise(z, labels)

    @torch.no_grad()
    def from_noise(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """What the exported graph computes: N x latent (+ N labels) -> N x C x H x W in [0, 1]."""
        self.eval()
        return (self._generate(z.to(self.device), labels, averaged=True) + 1) * 0.5

    def onnx_graphs(self) -> list[OnnxGraph]:
        module = _GenerateImages(self.sampling_generator(), self.eye if self.config.conditional else None).eval()
        z = torch.zeros(2, self.config.latent_dim, device=self.device)  # batch 2: dynamo must not specialise on 1
        inputs, names, axes = (z,), ["z"], {"z": {0: "batch"}, "images": {0: "batch"}}
        if self.config.conditional:
            inputs, names = (z, torch.zeros(2, dtype=torch.long, device=self.device)), ["z", "labels"]
            axes["labels"] = {0: "batch"}
        return [OnnxGraph(name="generator", module=module, example_inputs=inputs, input_names=names,
                          output_names=["images"], dynamic_axes=axes)]

    def sampler(self) -> DirectSpec:
        return DirectSpec(graph="generator", noise=Noise(name="z", shape=(self.config.latent_dim,)),
                          conditional=bool(self.config.conditional), labels_input="labels")
