"""Class-conditional VAE (family "cvae"): the `vae` networks with the label fed to both.

Sohn et al. 2015 (CVAE) in its simplest form: q(z | x, y) sees the image with the one-hot label
broadcast as K extra channels, p(x | z, y) sees [z, one-hot(y)], and it is trained with the prior N(0, I).
So `sample(labels=...)` draws digits of the chosen class, and the latent code carries what the label does
not (slant, thickness, style). Sampling draws z from an ex-post mixture per class (``prior_components``
per class, fitted to the posterior means of that class's training images: ``ClassMixturePrior``), not
from N(0, I): the codes of one class do not fill N(0, I) (Ghosh et al. 2020, sec. 4).

Evaluation asks for p(x) without a label. Both `nll` and `score` marginalise the label under a uniform
prior: -log p(x) = -log (1/K) sum_y p(x | y), each p(x | y) bounded by IWAE; K times the cost of the
vae's bound, so it stays a bound in the same unit.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from contracts.samplers import DirectSpec, Noise
from genmodels.base import ModelConfig, OnnxGraph, arch, training
from genmodels.latent_prior import ClassMixturePrior
from genmodels.vae import VAE, Decoder, Encoder, VAEConfig


@dataclass
class CVAEConfig(VAEConfig):
    # Defaults measured on mnist5k (the domain classifier's verdict on 1,000 samples drawn by label, and
    # PRDC recall on its features). A wide latent codes the class itself and the decoder learns to ignore
    # the label (latent 16, 6 epochs: 47% of samples are the asked digit); a narrow one obeys the label but
    # draws one style per class (latent 4, 8 epochs: 91%, recall 0.08, flagged as mode collapse). Latent 8
    # learns to use the label with time: 72% / recall 0.26 at 8 epochs, 86% / 0.37 at 16.
    latent_dim: int = arch(8, ge=1)
    # with the per-class mixture prior (below), seed 0, benchmarks/quality_curve.py: 20 epochs 74x, 30 69x,
    # 40 59x, 60 52x (recall 0.43, accuracy 0.98), 80 55x; 60 epochs take ~2.5 min on 2 cores
    epochs: int = training(60)
    # sampling draws z from a 3-component mixture per class, fitted after each epoch to the posterior means
    # of that class's training images (genmodels/latent_prior.py, ClassMixturePrior). Seed 0: N(0, I) 135x,
    # conditional accuracy 0.89; one mixture over all classes (20) 150x, 0.83; per class 1/3/5 components
    # 84x/76x/74x, accuracy 0.96/0.98/0.98, recall 0.34/0.39/0.32, copy_rate 0.008/0.025/0.023
    prior_components: int = training(3, ge=0)


class _DecodeImages(nn.Module):
    """The exported graph: (z, labels) -> mean image in [0, 1]; with a mixture prior the first input is
    standard-normal noise (N x latent + 1) that the mixture turns into z."""

    def __init__(self, model: "CVAE"):
        super().__init__()
        self.decoder, self.eye, self.prior = model.decoder, model.eye, model.prior

    def forward(self, z, labels):  # N x latent (+1), N int64 -> N x C x H x W
        if self.prior is not None:
            z = self.prior(z, labels)
        return torch.sigmoid(self.decoder(torch.cat([z, self.eye[labels]], dim=1)))


class CVAE(VAE):
    family: ClassVar[str] = "cvae"
    config_class: ClassVar[type[ModelConfig]] = CVAEConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"conditional", "score", "nll", "encode", "decode", "latent"})

    def __init__(self, config: CVAEConfig):
        if config.num_classes < 1:
            raise ValueError(f"a conditional VAE needs num_classes >= 1, got {config.num_classes}")
        super().__init__(config)
        # one-hot rows gathered by label: a Gather in ONNX, no OneHot op needed
        self.register_buffer("eye", torch.eye(config.num_classes), persistent=False)

    def _prior(self, config: CVAEConfig) -> ClassMixturePrior:
        return ClassMixturePrior(config.num_classes, config.prior_components, config.latent_dim)

    def training_data_problem(self, labels: torch.Tensor) -> str | None:
        k = self.config.prior_components
        counts = torch.bincount(labels.long().cpu(), minlength=self.config.num_classes)
        if k and int(counts.min()) < k:
            c = int(counts.argmin())
            return (f"prior_components {k}: a {k}-component mixture prior per class needs at least {k} training "
                    f"images of each class, class {c} has {int(counts[c])}; lower model.cvae.prior_components "
                    f"(0: the prior N(0, I))")
        return None

    def _networks(self, config: CVAEConfig) -> tuple[Encoder, Decoder]:
        c, h, w = config.image_shape
        k = config.num_classes
        return (Encoder(dataclasses.replace(config, image_shape=(c + k, h, w))),  # image + K label planes
                Decoder(dataclasses.replace(config, latent_dim=config.latent_dim + k)))  # [z, one-hot]

    @property
    def nll_variant(self) -> str:
        return f"{super().nll_variant}; label marginalised: -log (1/K) sum_y p(x|y), K={self.config.num_classes}"

    # --- conditioning ----------------------------------------------------------------------
    def _encoder_input(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        planes = self.eye[labels][:, :, None, None].expand(-1, -1, *x.shape[2:])  # N x K x H x W
        return torch.cat([x, planes], dim=1)

    def _decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([z, self.eye[labels]], dim=1)

    def _labels_for_fit(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("cvae trains on labelled data; fit_step got no labels")
        return y.to(self.device).long()

    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        return self.requested_labels(labels, n)

    # --- label-free likelihood and score: marginalise y under a uniform prior --------------
    def _per_class(self, fn, x: torch.Tensor) -> torch.Tensor:
        """fn(x, y) for every class y: K x N."""
        return torch.stack([fn(x, torch.full((x.shape[0],), y, device=x.device, dtype=torch.long))
                            for y in range(self.config.num_classes)])

    @torch.no_grad()
    def nll(self, x: torch.Tensor, k: int | None = None, generator: torch.Generator | None = None,
            chunk: int = 4096, labels: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x) bound in nats/image; with `labels`, -log p(x | y) instead."""
        self.eval()
        x = x.to(self.device)
        k, g = k or self.config.iwae_k, self._eval_generator(generator, x.device)
        if labels is not None:
            return self._nll_given(x, self._labels(labels, len(x)), k, g, chunk)
        per_class = self._per_class(lambda xb, y: self._nll_given(xb, y, k, g, chunk), x)
        return math.log(self.config.num_classes) - torch.logsumexp(-per_class, dim=0)

    @torch.no_grad()
    def score(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Anomaly score (N), label-free: the -ELBO marginalised over classes, or the best class's recon error."""
        self.eval()
        x = x.to(self.device)
        g = self._eval_generator(generator, x.device)
        per_class = self._per_class(lambda xb, y: self._score_given(xb, y, g), x)
        if self.config.score == "recon":
            return per_class.min(dim=0).values
        return math.log(self.config.num_classes) - torch.logsumexp(-per_class, dim=0)

    # --- export / serving ------------------------------------------------------------------
    def onnx_graphs(self) -> list[OnnxGraph]:
        name, dim = self._noise_input()
        z = torch.zeros(2, dim, device=self.device)  # batch 2: dynamo must not specialise on 1
        labels = torch.zeros(2, dtype=torch.long, device=self.device)
        return [OnnxGraph(name="decoder", module=_DecodeImages(self).eval(), example_inputs=(z, labels),
                          input_names=[name, "labels"], output_names=["images"],
                          dynamic_axes={name: {0: "batch"}, "labels": {0: "batch"}, "images": {0: "batch"}})]

    def sampler(self) -> DirectSpec:
        name, dim = self._noise_input()
        return DirectSpec(graph="decoder", noise=Noise(name=name, shape=(dim,)), conditional=True,
                          labels_input="labels")
