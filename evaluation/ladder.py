"""Known-bad sample sets ("rungs") and the gate's verdict on them, without training a model.

Each rung is an array of n images (float32 N x C x H x W in [0, 1]) built from the prepared data: what a
broken or cheating model would draw. :func:`evaluate_samples` runs the image metric suite on such an array
through the same :class:`~evaluation.suite.base.EvalContext` and ``pipelines.evaluate.run_metrics`` that
``genforge stage evaluate`` uses (a stand-in model whose ``sample`` hands out the array), and
:func:`gate_tags` turns the summary into the tags ``registry`` writes, so ``pipelines.gate.gate_decision``
decides on exactly what it would decide on for a registered model.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from evaluation.suite.base import to_model_input

TINY_NOISE = 0.02      # std of the Gaussian noise added to repeated / replayed images ([0, 1] pixels)
BLUR_SIGMA_28 = 1.5    # Gaussian blur of the "blurred" rung, in pixels of a 28-pixel image (scaled to the size)
RUNGS = ("good", "noise", "one_class", "ten_prototypes", "replay", "blurred")


def _jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + rng.normal(0.0, TINY_NOISE, x.shape), 0.0, 1.0).astype(np.float32)


def blur(x: np.ndarray, sigma_28: float = BLUR_SIGMA_28) -> np.ndarray:
    """Gaussian blur of each channel of ``x`` (N x C x H x W floats) with sigma ``sigma_28 * H / 28`` pixels."""
    from scipy.ndimage import gaussian_filter

    sigma = sigma_28 * x.shape[-2] / 28.0
    return gaussian_filter(x.astype(np.float32), sigma=(0, 0, sigma, sigma), mode="nearest").astype(np.float32)


def build_rungs(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], n: int,
                seed: int = 0, modality: str = "image") -> dict[str, np.ndarray]:
    """The rungs, each n images float32 in [0, 1], from the stored (uint8) train and test splits:

    - ``good``: n held-out test images (a seeded draw): what a perfect model would sample;
    - ``noise``: uniform noise;
    - ``one_class``: one training image of class 0 repeated, with tiny noise (collapsed to one class);
    - ``ten_prototypes``: one training image per class, each repeated n / classes times, with tiny noise;
    - ``replay``: n training images with tiny noise (memorization);
    - ``blurred``: the ``good`` images blurred (Gaussian, 1.5 px at 28 px).

    Raises ValueError when the test split has fewer than n images."""
    (train_x, train_y), (test_x, _) = train, test
    if len(test_x) < n:
        raise ValueError(f"the test split has {len(test_x)} images, fewer than n = {n}")
    rng = np.random.default_rng(seed)
    good = to_model_input(test_x[rng.permutation(len(test_x))[:n]], modality).astype(np.float32)
    classes = np.unique(train_y)
    protos = to_model_input(train_x[[int(np.flatnonzero(train_y == c)[0]) for c in classes]], modality)
    shape = good.shape[1:]
    return {
        "good": good,
        "noise": rng.random((n, *shape)).astype(np.float32),
        "one_class": _jitter(np.repeat(protos[:1], n, axis=0), rng),
        "ten_prototypes": _jitter(protos[np.arange(n) % len(protos)], rng),
        "replay": _jitter(to_model_input(train_x[rng.permutation(len(train_x))[:n]], modality), rng),
        "blurred": blur(good),
    }


class FixedSamples:
    """A stand-in for a GenerativeModel whose ``sample`` hands out ``images`` in order (no capabilities
    beyond samples, so likelihood, anomaly and latent metrics are skipped as for a model that lacks them)."""

    capabilities: frozenset[str] = frozenset()
    device = "cpu"

    def __init__(self, images: np.ndarray, num_classes: int, modality: str = "image"):
        self.images, self.next = np.asarray(images, dtype=np.float32), 0
        self.config = SimpleNamespace(data=SimpleNamespace(modality=modality), num_classes=num_classes)

    def sample(self, n: int, generator: Any = None, labels: Any = None) -> Any:
        import torch

        if self.next + n > len(self.images):
            raise ValueError(f"asked for {self.next + n} samples, {len(self.images)} were given")
        out = torch.from_numpy(self.images[self.next:self.next + n])
        self.next += n
        return out


def evaluate_samples(images: np.ndarray, data: Any, settings: dict[str, Any], workdir: Path,
                     classifier_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The metric suite (``settings["metrics"]``, null: the image defaults) on ``images`` (at least
    min(num_samples, test split) of them) against the prepared ``data`` (``pipelines.dataset``):
    ({output: {"value", "setting"}}, {skipped metric: reason}). ``settings``: the merged ``evaluation.*``
    (``pipelines.evaluate._settings``); plots go under ``workdir``; the domain classifier is cached in
    ``classifier_dir`` (trained once per data version)."""
    from evaluation.suite import EvalContext, selected_metrics
    from pipelines.evaluate import run_metrics

    workdir.mkdir(parents=True, exist_ok=True)
    model = FixedSamples(images, int(data.num_classes), data.spec.modality)
    ctx = EvalContext(model, data, settings, "cpu", workdir, classifier_dir)
    return run_metrics(ctx, selected_metrics(settings.get("metrics"), data.spec.modality))


def gate_tags(metrics: dict[str, Any], parity_max_abs_error: float = 0.0) -> dict[str, str]:
    """The model-version tags the registry writes for these metrics (numeric values as ``metric.<key>``,
    booleans as 0/1, as evaluate's summary), data validated and the given ONNX parity error."""
    tags = {"validated": "true", "parity_max_abs_error": str(parity_max_abs_error)}
    for key, entry in metrics.items():
        value = entry["value"]
        if isinstance(value, bool):
            tags[f"metric.{key}"] = str(int(value))
        elif isinstance(value, (int, float)):
            tags[f"metric.{key}"] = str(float(value))
    return tags
