"""Convolutional variational autoencoder (family "vae").

One file, one family: the config dataclass, the encoder/decoder, the loss, the likelihood bounds
and the export hooks. Images are N x C x H x W floats in [0, 1].

Units. Every loss and bound is in nats per image, summed over pixels.
- likelihood="bernoulli": log p(x|z) = -BCE(logits, x) on continuous [0, 1] pixels. This is the
  "continuous BCE" the pytorch/examples VAE (and most papers) use; it is not a normalised density
  for non-binary x (the continuous Bernoulli would add a per-pixel normaliser), so nll() is the
  IWAE bound *in that unit*, comparable with other continuous-BCE numbers, not with bits/dim of
  a discrete model.
- likelihood="gaussian": log p(x|z) = log N(x; sigmoid(decoder(z)), sigma^2) per pixel, a
  continuous density (no dequantisation), with sigma learned (one per channel) or fixed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contracts.samplers import DirectSpec, Noise
from genmodels.base import GenerativeModel, ModelConfig, OnnxGraph, arch, evaluation, stride2_levels, training
from genmodels.latent_prior import MixturePrior

LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig(ModelConfig):
    # Defaults: on mnist5k these beat the pytorch/examples MLP VAE's test loss (138 nats/image
    # after 10 epochs) in about half its training time on 2 CPU cores, ~130 nats after 2 epochs
    # (benchmarks/vae_reference.py). Train longer for better samples: ~118 nats at 6 epochs.
    latent_dim: int = arch(20, ge=1)
    width: int = arch(8, ge=1)                  # channels after the first stride-2 conv; doubles per level
    hidden: int = arch(0, ge=0)                 # optional fully connected layer between convs and latent (0 = none)
    likelihood: str = "bernoulli"   # "bernoulli" (continuous BCE on logits) | "gaussian"
    learn_sigma: bool = True        # gaussian only: learn one sigma per channel ...
    sigma: float = arch(0.1, gt=0)              # ... starting here (or fixed at this value when not learned)
    beta: float = training(1.0, ge=0)             # weight on the KL term (beta-VAE); 1 = the true ELBO
    score: str = evaluation("elbo")         # anomaly score: "elbo" (negative ELBO) | "recon" (recon. error at z = mu)
    score_samples: int = evaluation(8, ge=1)      # posterior samples averaged by score="elbo"
    iwae_k: int = evaluation(64, ge=1)            # importance samples in nll()
    lr: float = training(6e-3)              # high for Adam, fine with ELU and a small net; the budget is ~250 steps
    # > 0: sample z from a Gaussian mixture of this many full-covariance components fitted to the training
    # images' posterior means after each epoch (ex-post density, genmodels/latent_prior.py; mnist5k 206x ->
    # 56x the FID floor at 20); 0: from the prior N(0, I). Sampling only: nll and score keep N(0, I).
    prior_components: int = training(20, ge=0)
    batch_size: int = training(32)          # training defaults the trainer reads (overridable there)
    epochs: int = training(2)

    def __post_init__(self):
        super().__post_init__()
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")
        if self.score not in ("elbo", "recon"):
            raise ValueError(f"score must be 'elbo' or 'recon', got {self.score!r}")


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c, h, w = cfg.image_shape
        layers: list[nn.Module] = []
        for i in range(stride2_levels(h, w)):
            out = cfg.width * 2 ** i
            # ELU, not ReLU: with ReLU this small net sits near 200 nats/image for its first ~200
            # steps on mnist5k (167 at step 300); with ELU it is at 133 by then
            layers += [nn.Conv2d(c, out, 4, 2, 1), nn.ELU()]  # (c, h, w) -> (out, h/2, w/2)
            c, h, w = out, h // 2, w // 2
        layers.append(nn.Flatten())
        features = c * h * w
        if cfg.hidden:
            layers += [nn.Linear(features, cfg.hidden), nn.ELU()]
            features = cfg.hidden
        self.convs = nn.Sequential(*layers)  # N x C x H x W -> N x features
        self.head = nn.Linear(features, 2 * cfg.latent_dim)

    def forward(self, x):  # N x C x H x W -> mu, logvar: N x latent_dim each
        return self.head(self.convs(x)).chunk(2, dim=1)


class Decoder(nn.Module):
    """Mirror of the encoder; returns pixel logits (sigmoid gives the mean image in [0, 1])."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c_img, h, w = cfg.image_shape
        n = stride2_levels(h, w)
        h, w = h // 2 ** n, w // 2 ** n
        chans = [c_img] + [cfg.width * 2 ** i for i in range(n)]  # chans[i] = channels at level i
        features = cfg.latent_dim
        layers: list[nn.Module] = []
        if cfg.hidden:
            layers += [nn.Linear(features, cfg.hidden), nn.ELU()]
            features = cfg.hidden
        layers.append(nn.Linear(features, chans[-1] * h * w))
        if n:
            layers += [nn.ELU(), nn.Unflatten(1, (chans[-1], h, w))]  # N x chans[-1] x h x w
            for i in range(n, 0, -1):  # (chans[i], h, w) -> (chans[i-1], 2h, 2w)
                layers.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 4, 2, 1))
                if i > 1:
                    layers.append(nn.ELU())
        else:  # odd-sized images: no stride-2 stage fits, a linear decoder
            layers.append(nn.Unflatten(1, (c_img, h, w)))
        self.net = nn.Sequential(*layers)

    def forward(self, z):  # N x latent_dim -> N x C x H x W logits
        return self.net(z)


class _DecodeImages(nn.Module):
    """The exported graph: z (N x latent_dim) -> mean image in [0, 1]; with a mixture prior, standard-normal
    noise (N x latent_dim + 1) -> the mixture's z -> mean image."""

    def __init__(self, decoder: Decoder, prior: MixturePrior | None = None):
        super().__init__()
        self.decoder, self.prior = decoder, prior

    def forward(self, z):
        if self.prior is not None:
            z = self.prior(z)
        return torch.sigmoid(self.decoder(z))


class VAE(GenerativeModel):
    family: ClassVar[str] = "vae"
    config_class: ClassVar[type[ModelConfig]] = VAEConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"score", "nll", "encode", "decode", "latent"})
    legacy_field_values: ClassVar[dict[str, Any]] = {"prior_components": 0}  # models stored before the mixture prior

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):  # same config -> same weights; global RNG untouched
            torch.manual_seed(config.seed)
            self.encoder, self.decoder = self._networks(config)
        log_sigma = torch.full((config.image_shape[0], 1, 1), math.log(config.sigma))
        if config.likelihood == "gaussian" and config.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        self.prior = self._prior(config) if config.prior_components else None
        self._opt = torch.optim.Adam(self.parameters(), lr=config.lr, fused=True)

    def _prior(self, config: VAEConfig) -> MixturePrior:
        """The ex-post mixture prior sampling draws z from (``prior_components`` > 0); the cvae's is per class."""
        return MixturePrior(config.prior_components, config.latent_dim)

    def _networks(self, config: VAEConfig) -> tuple[Encoder, Decoder]:
        """(encoder, decoder); the conditional VAE widens their inputs for the label."""
        return Encoder(config), Decoder(config)

    @property
    def nll_variant(self) -> str:
        """What nll() measures, recorded next to the number by evaluation."""
        unit = ("continuous-BCE (Bernoulli on [0,1] pixels, unnormalised)" if self.config.likelihood == "bernoulli"
                else "Gaussian density on [0,1] pixels")
        return f"IWAE upper bound, k={self.config.iwae_k}, {unit}"

    # --- the model -------------------------------------------------------------------------
    def log_px(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image (nats), summed over pixels. x, logits: N x C x H x W -> N."""
        if self.config.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        # a floor on sigma keeps the density bounded if reconstructions of the (mostly exactly 0)
        # MNIST pixels become near-perfect
        log_sigma = self.log_sigma.clamp(min=math.log(1e-3))
        mean = torch.sigmoid(logits)
        lp = -0.5 * ((x - mean) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * LOG_2PI
        return lp.flatten(1).sum(1)

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:  # training: the global RNG, which the trainer seeds and checkpoints
            return torch.randn_like(like)
        return torch.randn(like.shape, generator=generator, device=generator.device).to(like)

    # Conditioning hooks: the class-conditional VAE (genmodels/cvae.py) feeds labels to both
    # networks through these two; here they pass the input through unchanged.
    def _encoder_input(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return x

    def _decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return z

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None,
                   labels: torch.Tensor | None = None):
        """One-sample (recon, kl) per image in nats; recon = -log p(x|z), -ELBO = recon + kl.

        With the bernoulli likelihood recon is the summed continuous BCE, so recon + kl is the
        pytorch/examples VAE loss per image.
        """
        mu, logvar = self.encoder(self._encoder_input(x, labels))
        z = mu + torch.exp(0.5 * logvar) * self._noise(mu, generator)  # reparameterisation
        recon = -self.log_px(x, self.decoder(self._decoder_input(z, labels)))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)  # KL(q(z|x) || N(0, I)), closed form
        return recon, kl

    # --- training --------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self._opt}

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        recon, kl = self.elbo_terms(x.to(self.device), labels=self._labels_for_fit(y))
        # mean over the batch, not sum: the loss reads in nats/image and lr does not depend on batch size
        loss = (recon + self.config.beta * kl).mean()
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        return {"loss": loss.item(), "recon": recon.mean().item(), "kl": kl.mean().item()}

    def training_data_problem(self, labels: torch.Tensor) -> str | None:
        k, n_images = self.config.prior_components, len(labels)
        if k > n_images:
            return (f"prior_components {k}: a {k}-component mixture prior needs at least {k} training images, the "
                    f"training split has {n_images}; lower model.{self.family}.prior_components (0: the prior N(0, I))")
        return None

    @torch.no_grad()
    def end_epoch(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        """With ``prior_components``: fit the mixture prior to the posterior means of all training images
        ``x`` (N x C x H x W in [0, 1]; ``y`` the labels, which the conditional VAE's encoder reads), in
        chunks of 1,024, seeded by (config seed, epoch). Raises ValueError with fewer images than components."""
        if self.prior is None:
            return
        labels = y.long() if "conditional" in self.capabilities else None
        codes = torch.cat([self.encode(x[i:i + 1024], None if labels is None else labels[i:i + 1024])
                           for i in range(0, len(x), 1024)])
        self.prior.fit(codes, seed=1000 * int(self.config.seed) + int(epoch), labels=labels)

    def _latent_draw(self, n: int, generator: torch.Generator | None,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
        """z for n samples: N(0, I), or the mixture prior's draw from N x (latent_dim + 1) standard normals (the
        cvae's: each label's mixture)."""
        dim = self.prior.noise_dim if self.prior is not None else self.config.latent_dim
        # draw on the generator's device, then move: a CPU generator gives the same z on any device
        noise = torch.randn(n, dim, generator=generator,
                            device=generator.device if generator is not None else self.device).to(self.device)
        return self.prior(noise, labels) if self.prior is not None else noise

    # --- inference -------------------------------------------------------------------------
    def _eval_generator(self, generator: torch.Generator | None, device) -> torch.Generator:
        # evaluation draws its own seeded noise: scores are reproducible and never advance the
        # global RNG that training resumes from
        return generator if generator is not None else torch.Generator(device=device).manual_seed(self.config.seed)

    def _labels_for_fit(self, y: torch.Tensor | None) -> torch.Tensor | None:
        return None  # unconditional: the labels the trainer passes are not used

    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if labels is not None:
            raise ValueError(f"{self.family} is unconditional; it takes no labels (cvae does)")
        return None

    @torch.no_grad()
    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior means: N x C x H x W -> N x latent_dim."""
        self.eval()
        x = x.to(self.device)
        return self.encoder(self._encoder_input(x, self._labels(labels, len(x))))[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images in [0, 1]: N x latent_dim -> N x C x H x W."""
        self.eval()
        z = z.to(self.device)
        return torch.sigmoid(self.decoder(self._decoder_input(z, self._labels(labels, len(z)))))

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **sampling: Any) -> torch.Tensor:
        """Decoder means at z ~ N(0, I), or the fitted mixture prior (``prior_components``), (pixel noise would
        only add salt): N x C x H x W in [0, 1]."""
        self.sampling_spec(sampling)  # the direct sampler takes no option: any is an error
        labels = self._labels(labels, n)
        return self.decode(self._latent_draw(n, generator, labels), labels)

    @torch.no_grad()
    def score(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Anomaly score per image (N), higher = more anomalous, in nats."""
        self.eval()
        x = x.to(self.device)
        return self._score_given(x, None, self._eval_generator(generator, x.device))

    @torch.no_grad()
    def nll(self, x: torch.Tensor, k: int | None = None, generator: torch.Generator | None = None,
            chunk: int = 4096) -> torch.Tensor:
        """IWAE upper bound on -log p(x) with k importance samples (default config.iwae_k), nats/image.

        -log (1/k) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x); k=1 is the one-sample -ELBO and
        the bound tightens as k grows. See the module docstring for the bernoulli unit.
        """
        self.eval()
        x = x.to(self.device)
        return self._nll_given(x, None, k or self.config.iwae_k, self._eval_generator(generator, x.device), chunk)

    def _score_given(self, x: torch.Tensor, labels: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        if self.config.score == "recon":
            mu = self.encoder(self._encoder_input(x, labels))[0]
            return -self.log_px(x, self.decoder(self._decoder_input(mu, labels)))
        total = torch.zeros(x.shape[0], device=x.device)
        for _ in range(self.config.score_samples):
            recon, kl = self.elbo_terms(x, g, labels)
            total += recon + kl
        return total / self.config.score_samples

    def _nll_given(self, x: torch.Tensor, labels: torch.Tensor | None, k: int, g: torch.Generator,
                   chunk: int) -> torch.Tensor:
        per = max(1, chunk // k)  # images per chunk, so at most ~chunk decodes at once
        out = []
        for i in range(0, x.shape[0], per):
            xb = x[i:i + per]
            yb = None if labels is None else labels[i:i + per]
            n = xb.shape[0]
            mu, logvar = self.encoder(self._encoder_input(xb, yb))
            eps = self._noise(mu.unsqueeze(1).expand(n, k, -1), g)        # N x K x D
            z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps
            yk = None if yb is None else yb.repeat_interleave(k, 0)
            logits = self.decoder(self._decoder_input(z.reshape(n * k, -1), yk))
            log_px = self.log_px(xb.repeat_interleave(k, 0), logits).view(n, k)
            # log p(z) - log q(z|x); the 2*pi terms cancel
            log_w = log_px + (0.5 * eps.pow(2) - 0.5 * z.pow(2) + 0.5 * logvar.unsqueeze(1)).sum(2)
            out.append(math.log(k) - torch.logsumexp(log_w, dim=1))
        return torch.cat(out)

    # --- export / serving ------------------------------------------------------------------
    def onnx_graphs(self) -> list[OnnxGraph]:
        module = _DecodeImages(self.decoder, self.prior).eval()
        name, dim = self._noise_input()
        z = torch.zeros(2, dim, device=self.device)  # batch 2: dynamo must not specialise on 1
        return [OnnxGraph(name="decoder", module=module, example_inputs=(z,), input_names=[name],
                          output_names=["images"],
                          dynamic_axes={name: {0: "batch"}, "images": {0: "batch"}})]

    def _noise_input(self) -> tuple[str, int]:
        """The decoder graph's noise input: ("z", latent_dim), or ("noise", latent_dim + 1) with a mixture prior."""
        return ("noise", self.prior.noise_dim) if self.prior is not None else ("z", self.config.latent_dim)

    def sampler(self) -> DirectSpec:
        name, dim = self._noise_input()
        return DirectSpec(graph="decoder", noise=Noise(name=name, shape=(dim,)), conditional=False)
