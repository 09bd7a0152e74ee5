"""A VAE whose loss turns NaN at a set step: exercises the trainer's divergence handling."""
import math

from genmodels.vae import VAE


class NaNAfterStepsVAE(VAE):
    family = "nanvae"
    steps_before_nan = 15  # digits with batch 128: 12 steps an epoch, so epoch 2 diverges

    def fit_step(self, x, y):
        self._steps = getattr(self, "_steps", 0) + 1
        losses = super().fit_step(x, y)
        if self._steps > self.steps_before_nan:
            losses["loss"] = math.nan
        return losses


class CollapsedVAE(VAE):
    """Every sample is the same image: the textbook mode collapse the gate must reject."""

    family = "vae"

    def sample(self, n, labels=None, generator=None):
        one = super().sample(1, generator=generator)
        return one.expand(n, *one.shape[1:]).clone()
