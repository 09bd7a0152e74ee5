"""WGAN-GP (family "wgan_gp"): the dcgan networks trained with the Wasserstein loss and a gradient penalty.

Gulrajani et al. 2017: the critic D maximises E[D(real)] - E[D(fake)] with the penalty
gp_weight * E[(||grad D(x_hat)||_2 - 1)^2] on random interpolates x_hat between real and fake, and the
generator minimises -E[D(G(z))], updated once every `n_critic` critic steps. The critic has no batch
norm (the penalty is per sample); layer norm instead, as the paper suggests. Adam(0.5, 0.9) with
lr 2e-4 rather than the paper's (0, 0.9, 1e-4): on mnist5k's short budget it reaches digits sooner.

Each trainer step (one batch) is one critic update; every n_critic-th also updates the generator. The
critic-step counter is a buffer, so it is checkpointed and a resumed run updates G on the same steps.
`conditional: true` works as in dcgan (projection critic, labels into the generator).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from genmodels.base import ModelConfig, training
from genmodels.dcgan import DCGAN, DCGANConfig


@dataclass
class WGANGPConfig(DCGANConfig):
    # Defaults: 120 epochs of mnist5k in batches of 64 = 7,560 critic and 1,512 generator steps, ~8.5 min on
    # 2 CPU cores (60 epochs took 251 s on a quiet machine). Fewer generator steps than dcgan's per epoch, so more
    # epochs; the FID ratio still falls at 60 (126.5x -> 80.6x at 120, benchmarks/quality_curve.py, README).
    n_critic: int = training(5, ge=1)             # critic updates per generator update
    gp_weight: float = training(10.0, ge=0)       # lambda of the gradient penalty
    critic_norm: str = "layer"      # "layer" | "none" (never batch norm: the penalty is per sample)
    lr_g: float = training(2e-4)
    lr_d: float = training(2e-4)
    betas: tuple[float, float] = training((0.5, 0.9))
    batch_size: int = training(64)
    epochs: int = training(120)

    def __post_init__(self):
        super().__post_init__()
        if self.critic_norm not in ("layer", "none"):
            raise ValueError(f"critic_norm must be 'layer' or 'none' (batch norm breaks the per-sample penalty), "
                             f"got {self.critic_norm!r}")
        if self.spectral_norm:
            raise ValueError("spectral_norm is a dcgan option; wgan_gp constrains the critic with its gradient penalty")


class WGANGP(DCGAN):
    family: ClassVar[str] = "wgan_gp"
    config_class: ClassVar[type[ModelConfig]] = WGANGPConfig
    # PyTorch's default init, not DCGAN's N(0, 0.02): that critic starts with input gradients of norm
    # ~0.01, and its first few hundred steps would only grow them towards the penalty's target of 1
    dcgan_init_critic: ClassVar[bool] = False

    def __init__(self, config: WGANGPConfig):
        super().__init__(config)
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_loss_g", torch.zeros(()))  # reported between generator updates

    def discriminator_norm(self) -> str:
        return self.config.critic_norm

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """E[(||grad_x D(x_hat)||_2 - 1)^2], x_hat uniformly between real and fake per sample."""
        mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        x_hat = (mix * real + (1 - mix) * fake).requires_grad_(True)  # N x C x H x W
        grad, = torch.autograd.grad(self.discriminator(x_hat, labels).sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        real = x.to(self.device) * 2 - 1
        labels = self._train_labels(y)
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        update_g = (int(self.critic_steps) + 1) % self.config.n_critic == 0
        fake = self._generate(z, labels) if update_g else None
        with torch.no_grad():
            fake_for_critic = fake.detach() if fake is not None else self._generate(z, labels)

        # critic: minimise D(fake) - D(real) + lambda * penalty
        d_real = self.discriminator(real, labels).mean()
        d_fake = self.discriminator(fake_for_critic, labels).mean()
        gp = self.gradient_penalty(real, fake_for_critic, labels)
        loss_d = d_fake - d_real + self.config.gp_weight * gp
        self._opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self._opt_d.step()
        self.critic_steps += 1

        if update_g:  # against the updated critic, whose weights stay frozen for this backward
            self.discriminator.requires_grad_(False)
            loss_g = -self.discriminator(fake, labels).mean()
            self._opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self._opt_g.step()
            self.discriminator.requires_grad_(True)
            self.update_ema()
            self.last_loss_g.fill_(loss_g.detach())

        return {"loss_d": loss_d.item(), "loss_g": self.last_loss_g.item(), "gp": gp.item(),
                "wasserstein": (d_real - d_fake).item()}
