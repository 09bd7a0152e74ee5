"""Domain classifier: a small CNN trained on the prepared data, used as the feature extractor for
FID / KID / PRDC and as the label predictor for class coverage.

Trained once per data version: :func:`load_or_train_classifier` caches the state dict and a
config JSON under ``cache_dir/<data sha256>/`` and later loads them with
``torch.load(weights_only=True)``.

Images: ``N x C x H x W`` with C in {1, 3}; uint8 in 0..255 or float in [0, 1] (generated
samples). Both are mapped to float [0, 1] the same way, so real and generated images meet the
network identically.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contracts.io import sha256_file
from evaluation.suite.base import CLASSIFIER_CHANNELS, CLASSIFIER_MIN_SIZE

__all__ = [
    "DomainClassifier",
    "input_problem",
    "train_classifier",
    "accuracy",
    "extract",
    "features",
    "predict",
    "save_classifier",
    "load_classifier",
    "load_or_train_classifier",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
]

WEIGHTS_FILE = "classifier.pt"
CONFIG_FILE = "classifier.json"


class DomainClassifier(nn.Module):
    """Small CNN for 28x28 and 8x8 inputs (any size >= 8 works), 1 or 3 channels.

    conv(C->w) pool | conv(w->2w) conv(2w->2w) pool | conv(2w->4w) | adaptive-avg-pool 2x2 |
    fc(16w -> feature_dim) ReLU  <- features (penultimate layer) | dropout | fc(-> num_classes)
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: tuple[int, int] | list[int] = (28, 28),
        width: int = 16,
        feature_dim: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if in_channels not in CLASSIFIER_CHANNELS:
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        h, w_ = (int(v) for v in image_size)
        if min(h, w_) < CLASSIFIER_MIN_SIZE:
            raise ValueError(f"images must be at least {CLASSIFIER_MIN_SIZE}x{CLASSIFIER_MIN_SIZE}, got {h}x{w_}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.image_size = (h, w_)
        self.width = int(width)
        self.feature_dim = int(feature_dim)
        self.dropout = float(dropout)
        w = self.width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *conv(in_channels, w),
            nn.MaxPool2d(2),
            *conv(w, 2 * w),
            *conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *conv(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(16 * w, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "width": self.width,
            "feature_dim": self.feature_dim,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DomainClassifier":
        return cls(**config)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (after the ReLU), ``N x feature_dim``."""
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


# ----------------------------------------------------------------------------------- helpers


def input_problem(shape: tuple[int, ...], name: str = "the data") -> str | None:
    """Why the classifier cannot take samples of ``shape`` (C, H, W) of data set ``name``, or None: it takes
    1 or 3 channels of at least CLASSIFIER_MIN_SIZE pixels a side (evaluation.suite.base.CLASSIFIERS)."""
    if len(shape) == 3 and shape[0] in CLASSIFIER_CHANNELS and min(shape[1:]) >= CLASSIFIER_MIN_SIZE:
        return None
    return (f"images of 1 or 3 channels and at least {CLASSIFIER_MIN_SIZE}x{CLASSIFIER_MIN_SIZE} pixels; {name}'s "
            f"images are {'x'.join(map(str, shape))}")


def _as_float01(images: Any) -> torch.Tensor:
    """uint8 0..255 or float [0, 1] ``N x C x H x W`` -> float32 tensor in [0, 1]."""
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
    else:
        t = torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim != 4:
        raise ValueError(f"images must be N x C x H x W, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got {t.dtype}")
    return t.float()


def _check_input(model: DomainClassifier, x: torch.Tensor) -> None:
    if x.shape[1] != model.in_channels or tuple(x.shape[2:]) != model.image_size:
        raise ValueError(
            f"classifier expects N x {model.in_channels} x {model.image_size[0]} x {model.image_size[1]}, "
            f"got {tuple(x.shape)}"
        )


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer (dy, dx) in [-max_shift, max_shift], zero fill."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    offs = torch.randint(0, 2 * s + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        if num_threads is not None:
            torch.set_num_threads(before)


@torch.inference_mode()
def extract(
    model: DomainClassifier, images: Any, batch_size: int = 500, num_threads: int | None = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One pass: (penultimate features float64 ``N x d``, logits float64 ``N x num_classes``).

    ``num_threads`` (default 1, restored afterwards; None keeps torch's setting): on a busy
    2-core machine one thread was the faster (4,000 28x28 images: 1.0-1.6 s with 1 thread,
    2.2-13 s with 2); the features came out bit-identical either way.
    """
    x = _as_float01(images)
    _check_input(model, x)
    model.eval()
    feats, logits = [], []
    with _torch_threads(num_threads):
        for start in range(0, x.shape[0], batch_size):
            f = model.embed(x[start : start + batch_size])
            feats.append(f.double().numpy())
            logits.append(model.head(f).double().numpy())
    d = model.feature_dim
    if not feats:
        return np.zeros((0, d)), np.zeros((0, model.num_classes))
    return np.concatenate(feats), np.concatenate(logits)


def features(
    model: DomainClassifier, images: Any, batch_size: int = 500, num_threads: int | None = 1
) -> np.ndarray:
    """Penultimate-layer features, float64 numpy ``N x feature_dim``."""
    return extract(model, images, batch_size, num_threads)[0]


def predict(
    model: DomainClassifier, images: Any, batch_size: int = 500, num_threads: int | None = 1
) -> np.ndarray:
    """Predicted class per image, int64 numpy ``N``."""
    return extract(model, images, batch_size, num_threads)[1].argmax(axis=1).astype(np.int64)


def accuracy(
    model: DomainClassifier, images: Any, labels: Any, batch_size: int = 500, num_threads: int | None = 1
) -> float:
    """Share of images whose predicted class equals the label."""
    pred = predict(model, images, batch_size, num_threads)
    return float((pred == np.asarray(labels).astype(np.int64)).mean())


# ---------------------------------------------------------------------------------- training


def _default_shift(image_size: tuple[int, int]) -> int:
    return max(1, round(min(image_size) / 14))  # 2 px at 28x28, 1 px at 8x8


def train_classifier(
    train_images: Any,
    train_labels: Any,
    num_classes: int,
    seed: int = 0,
    epochs: int = 8,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    max_shift: int | None = None,
    width: int = 16,
    feature_dim: int = 128,
    dropout: float = 0.3,
    num_threads: int | None = 1,
    test_images: Any = None,
    test_labels: Any = None,
    log: Callable[[str], None] | None = None,
) -> tuple[DomainClassifier, dict[str, Any]]:
    """Train a :class:`DomainClassifier`; deterministic on CPU for a given seed (and thread count).

    AdamW with a linear warm-up then cosine decay of the learning rate; random integer shifts
    of up to ``max_shift`` pixels as augmentation (default 2 at 28x28, 1 at 8x8). All randomness
    (init, order, shifts, dropout) comes from ``seed``; the global torch RNG is restored.
    ``num_threads``: torch intra-op threads while training (restored afterwards; None keeps the
    current setting). The default 1 makes the weights independent of the machine's core count
    (1 and 2 threads gave different weights: backward kernels reduce in a thread-dependent
    order; the CPU's instruction set can still matter) and avoids OpenMP's collapse on a busy
    machine (mnist5k on 2 shared cores: 24 s with 1 thread, ~200 s with 2).
    Returns ``(model in eval mode, info)``; info: ``config, train_settings, train_seconds,
    train_accuracy (last epoch, augmented), final_loss, n_train`` and, when a test set is given,
    ``test_accuracy, n_test``.
    """
    x = _as_float01(train_images)
    y = torch.from_numpy(np.asarray(train_labels).astype(np.int64))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    image_size = (int(x.shape[2]), int(x.shape[3]))
    shift = _default_shift(image_size) if max_shift is None else int(max_shift)
    settings = {
        "seed": int(seed),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "max_shift": shift,
    }
    n = x.shape[0]
    steps_per_epoch = max(1, n // batch_size)  # drop the ragged last batch (BatchNorm)
    t0 = time.perf_counter()
    with _torch_threads(num_threads):
        threads_used = torch.get_num_threads()
        model, correct, seen, loss_sum = _fit(
            x, y, num_classes, image_size, seed, epochs, batch_size, lr, weight_decay, shift,
            width, feature_dim, dropout, steps_per_epoch, log,
        )
    model.eval()
    info: dict[str, Any] = {
        "config": model.config(),
        "train_settings": settings,
        "train_seconds": time.perf_counter() - t0,
        "train_accuracy": correct / max(seen, 1),
        "final_loss": loss_sum / max(seen, 1),
        "n_train": int(n),
        "torch_threads": threads_used,
    }
    if test_images is not None and test_labels is not None:
        info["test_accuracy"] = accuracy(model, test_images, test_labels, num_threads=num_threads)
        info["n_test"] = int(len(test_labels))
    return model, info


def _warmup_cosine(total_steps: int, warmup_share: float = 0.2, floor: float = 0.01) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup_share`` of the steps, then cosine to ``floor``."""
    total = max(1, int(total_steps))
    warm = max(1, int(round(warmup_share * total)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    image_size: tuple[int, int],
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    shift: int,
    width: int,
    feature_dim: int,
    dropout: float,
    steps_per_epoch: int,
    log: Callable[[str], None] | None,
) -> tuple[DomainClassifier, int, int, float]:
    n = x.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = DomainClassifier(
            x.shape[1], num_classes, image_size, width=width, feature_dim=feature_dim, dropout=dropout
        )
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(epochs * steps_per_epoch))
        model.train()
        loss_sum = correct = seen = 0
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            loss_sum, correct, seen = 0.0, 0, 0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb = _random_shift(x[idx], shift, gen)
                yb = y[idx]
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f} acc {correct / seen:.4f}")
    return model, correct, seen, loss_sum


# -------------------------------------------------------------------------------------- cache


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is meant to be shared and read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_classifier(model: DomainClassifier, directory: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write ``classifier.pt`` (state dict) and ``classifier.json`` (config + info) atomically.

    The JSON is written last and names the weights' sha256, so a reader never pairs a JSON with
    half-written or foreign weights.
    """
    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda p: torch.save(state, p))
    meta = dict(info)
    meta["config"] = model.config()
    meta["weights_file"] = WEIGHTS_FILE
    meta["weights_sha256"] = sha256_file(weights)
    meta["torch_version"] = torch.__version__
    text = json.dumps(meta, indent=2, sort_keys=True)
    _atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(text + "\n"))
    return directory


def load_classifier(directory: str | os.PathLike) -> tuple[DomainClassifier, dict[str, Any]]:
    """Load a classifier saved by :func:`save_classifier` (``torch.load(weights_only=True)``)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no cached classifier in {directory} (need {CONFIG_FILE} and {WEIGHTS_FILE})")
    meta = json.loads(config_path.read_text())
    if meta.get("weights_sha256") and meta["weights_sha256"] != sha256_file(weights_path):
        raise ValueError(f"{weights_path} does not match the sha256 recorded in {config_path}")
    model = DomainClassifier.from_config(meta["config"])
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta


_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def cached_classifier(directory: Path, load: Callable[[Path], tuple[Any, dict[str, Any]]], wanted: dict[str, Any],
                      model_keys: dict[str, Any], num_classes: int | None, log: Callable[[str], None] | None = None,
                      what: str = "classifier", config_file: str = CONFIG_FILE) -> tuple[Any, dict[str, Any]] | None:
    """``(model, meta + cached/path)`` from a classifier cache folder when ``load`` reads it and it was trained
    with the ``wanted`` train settings, the ``model_keys`` config values and ``num_classes`` (None: any); None
    otherwise (a folder ``load`` cannot read, or one trained otherwise, is logged as retrained). Shared by the
    image and the text domain classifier (each with its own ``config_file``, the file that marks a cache)."""
    if not (directory / config_file).is_file():
        return None
    try:
        model, meta = load(directory)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        if log is not None:
            log(f"cached {what} in {directory} unusable ({err}); retraining")
        return None
    stored = meta.get("train_settings", {})
    same = (all(stored.get(k) == v for k, v in wanted.items())
            and all(meta["config"].get(k) == v for k, v in model_keys.items())
            and (num_classes is None or meta["config"]["num_classes"] == num_classes))
    if same:
        return model, {**meta, "cached": True, "path": str(directory)}
    if log is not None:
        log(f"cached {what} in {directory} was trained with other settings; retraining")
    return None


def load_or_train_classifier(
    cache_dir: str | os.PathLike,
    data_sha256: str,
    train_images: Any = None,
    train_labels: Any = None,
    num_classes: int | None = None,
    *,
    test_images: Any = None,
    test_labels: Any = None,
    seed: int = 0,
    epochs: int = 8,
    log: Callable[[str], None] | None = None,
    **train_kwargs: Any,
) -> tuple[DomainClassifier, dict[str, Any]]:
    """The classifier for one data version: loaded from ``cache_dir/<data_sha256>/`` when it is
    there and was trained with the same settings, otherwise trained and saved there.

    Returns ``(model, info)``: info is the cache's JSON (``config, train_settings,
    train_seconds, test_accuracy, n_train, n_test, data_sha256, weights_sha256, ...``) plus
    ``cached`` (True when loaded) and ``path`` (the cache folder).
    """
    if not _SAFE_KEY.match(str(data_sha256)) or str(data_sha256) in (".", ".."):
        raise ValueError(f"data_sha256 must be a plain hash string, got {data_sha256!r}")
    directory = Path(cache_dir) / str(data_sha256)
    wanted = {
        "seed": int(seed),
        "epochs": int(epochs),
        **{k: train_kwargs[k] for k in ("batch_size", "lr", "weight_decay", "max_shift") if k in train_kwargs},
    }
    model_keys = {k: train_kwargs[k] for k in ("width", "feature_dim", "dropout") if k in train_kwargs}
    hit = cached_classifier(directory, load_classifier, wanted, model_keys, num_classes, log)
    if hit is not None:
        return hit
    if train_images is None or train_labels is None or num_classes is None:
        raise FileNotFoundError(
            f"no usable cached classifier in {directory} and no training data given to train one"
        )
    model, info = train_classifier(
        train_images,
        train_labels,
        num_classes,
        seed=seed,
        epochs=epochs,
        test_images=test_images,
        test_labels=test_labels,
        log=log,
        **train_kwargs,
    )
    info["data_sha256"] = str(data_sha256)
    info["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save_classifier(model, directory, info)
    _, meta = load_classifier(directory)  # return exactly what a later cache hit returns
    meta["cached"] = False
    meta["path"] = str(directory)
    return model, meta
