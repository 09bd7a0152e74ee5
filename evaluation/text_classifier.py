"""Domain classifier for the tokens modality: a small character CNN trained on the prepared data, the
feature extractor of the text Fréchet distance and the label predictor of conditional accuracy.

The same protocol as the image classifier (``evaluation.classifier``): trained once per data version,
cached as ``cache_dir/<data sha256>/text_classifier.{pt,json}`` (state dict + config JSON naming the
weights' sha256, loaded with ``torch.load(weights_only=True)``), retrained when the settings differ;
deterministic on CPU for a seed (one torch thread); the global torch RNG is left as it was.

Input: token ids ``N x T`` (int32 as stored, or int64 as models give them; the layout of
``contracts.modalities.tokens``: ``<bos>`` text ``<eos>`` ``<pad>``...). Ids at or above the embedding's
size (byte tokens the train split never used) share one "unknown" row.

Network (Zhang et al. 2015, "Character-level Convolutional Networks for Text Classification", scaled down;
Kim 2014's max-over-time pooling)::

    embed(V+1 -> e) | conv1d(e->w, 3) ReLU | conv1d(w->w, 3) ReLU | [max over time ; mean over time] of the
    non-pad positions | fc(2w -> feature_dim) ReLU  <- features (penultimate layer) | dropout | fc(-> K)

Training data: at most ``max_per_class`` (5,000) texts of each class, drawn with the seed; loss:
cross-entropy weighted by inverse class frequency of those, so a class holding 94% of the data (the census
surnames) does not swamp the others and the predictions are balanced across classes (what conditional
accuracy, which asks for every class in turn, needs). On the census names (73,000 train texts) that is ~10,000
texts and ~10 s for 8 epochs on one core; all 73,000 took 13 s per epoch.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contracts.io import sha256_file
from evaluation.classifier import _atomic_write, _torch_threads, _warmup_cosine, cached_classifier

WEIGHTS_FILE = "text_classifier.pt"
CONFIG_FILE = "text_classifier.json"
PAD = 0  # contracts.modalities.tokens.PAD
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_TRAIN_KEYS = ("batch_size", "lr", "weight_decay", "max_per_class")
_MODEL_KEYS = ("embed_dim", "width", "feature_dim", "dropout")

__all__ = ["CharCNN", "input_problem", "train_classifier", "extract", "accuracy", "balanced_accuracy",
           "save_classifier", "load_classifier", "load_or_train_classifier", "WEIGHTS_FILE", "CONFIG_FILE"]


def input_problem(shape: tuple[int, ...], name: str = "the data") -> str | None:
    """Why the classifier cannot take samples of ``shape`` of data set ``name`` (None: it can): one
    sequence of token ids, N x T."""
    if len(shape) == 1 and shape[0] >= 1:
        return None
    return f"token id sequences (N x T); {name}'s samples are {'x'.join(map(str, shape))}"


class CharCNN(nn.Module):
    """The character CNN of the module docstring. ``vocab_size``: ids 0..vocab_size-1 get their own
    embedding, larger ids the extra row ``vocab_size``."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 32, width: int = 64,
                 feature_dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.vocab_size, self.num_classes = int(vocab_size), int(num_classes)
        self.embed_dim, self.width = int(embed_dim), int(width)
        self.feature_dim, self.dropout = int(feature_dim), float(dropout)
        self.embed = nn.Embedding(self.vocab_size + 1, self.embed_dim, padding_idx=PAD)
        self.conv1 = nn.Conv1d(self.embed_dim, self.width, 3, padding=1)
        self.conv2 = nn.Conv1d(self.width, self.width, 3, padding=1)
        self.fc = nn.Sequential(nn.Linear(2 * self.width, self.feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(self.feature_dim, self.num_classes))

    def config(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "num_classes": self.num_classes, "embed_dim": self.embed_dim,
                "width": self.width, "feature_dim": self.feature_dim, "dropout": self.dropout}

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``N x feature_dim`` of int ids ``N x T``."""
        ids = ids.long()
        mask = (ids != PAD).unsqueeze(1).float()                                  # N x 1 x T
        h = self.embed(ids.clamp(0, self.vocab_size)).transpose(1, 2)             # N x e x T
        h = F.relu(self.conv2(F.relu(self.conv1(h))))                             # N x w x T
        count = mask.sum(2).clamp_min(1.0)
        mean = (h * mask).sum(2) / count
        peak = h.masked_fill(mask == 0, float("-inf")).amax(2)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))    # an all-pad row: zeros
        return self.fc(torch.cat([peak, mean], 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_ids(ids))


def _ids(x: Any) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2 or t.is_floating_point():
        raise ValueError(f"token ids must be an integer array N x T, got {tuple(t.shape)} {t.dtype}")
    return t.long()


@torch.inference_mode()
def extract(model: CharCNN, ids: Any, batch_size: int = 1000,
            num_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 N x feature_dim, logits float64 N x num_classes) of token ids N x T."""
    x = _ids(ids)
    model.eval()
    feats, logits = [], []
    with _torch_threads(num_threads):
        for start in range(0, len(x), batch_size):
            f = model.embed_ids(x[start:start + batch_size])
            feats.append(f.double().numpy())
            logits.append(model.head(f).double().numpy())
    if not feats:
        return np.zeros((0, model.feature_dim)), np.zeros((0, model.num_classes))
    return np.concatenate(feats), np.concatenate(logits)


def accuracy(model: CharCNN, ids: Any, labels: Any) -> float:
    """Share of sequences whose predicted class is the label."""
    return float((extract(model, ids)[1].argmax(1) == np.asarray(labels)).mean())


def balanced_accuracy(predicted: Any, labels: Any) -> float:
    """Mean over the classes present in ``labels`` of the share of their sequences predicted right."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


def train_classifier(train_ids: Any, train_labels: Any, num_classes: int, seed: int = 0, epochs: int = 8, *,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4, max_per_class: int = 5000,
                     embed_dim: int = 32,
                     width: int = 64, feature_dim: int = 64, dropout: float = 0.2, num_threads: int | None = 1,
                     test_images: Any = None, test_labels: Any = None,
                     log: Callable[[str], None] | None = None) -> tuple[CharCNN, dict[str, Any]]:
    """Train a :class:`CharCNN` (AdamW, warm-up then cosine decay, inverse-frequency class weights);
    deterministic on CPU for a seed and thread count. ``test_images``/``test_labels``: the test split's
    ids and labels (the image classifier's argument names, so the evaluation context calls both alike).
    Returns ``(model in eval mode, info)``: config, train_settings, train_seconds, final_loss, n_train and
    with a test set test_accuracy, balanced_test_accuracy, n_test. ValueError for labels outside
    0..num_classes-1 or mismatched lengths."""
    x, y = _ids(train_ids), torch.from_numpy(np.asarray(train_labels).astype(np.int64))
    if len(x) != len(y):
        raise ValueError(f"{len(x)} sequences but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    vocab_size = int(x.max()) + 1 if len(x) else 1
    n_given = len(x)
    keep = _per_class(y.numpy(), int(max_per_class), seed)
    x, y = x[keep], y[keep]
    counts = torch.bincount(y, minlength=num_classes).double()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    settings = {"seed": int(seed), "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                "weight_decay": float(weight_decay), "max_per_class": int(max_per_class)}
    steps = max(1, len(x) // batch_size) if len(x) >= batch_size else 1
    t0 = time.perf_counter()
    with _torch_threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = CharCNN(vocab_size, num_classes, embed_dim, width, feature_dim, dropout)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(epochs * steps))
        model.train()
        loss_sum, seen = 0.0, 0
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            loss_sum, seen = 0.0, 0
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                loss = F.cross_entropy(model(x[idx]), y[idx], weight=weights.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum, seen = loss_sum + float(loss.detach()) * len(idx), seen + len(idx)
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / max(seen, 1):.4f}")
    model.eval()
    info: dict[str, Any] = {"config": model.config(), "train_settings": settings,
                            "train_seconds": time.perf_counter() - t0, "final_loss": loss_sum / max(seen, 1),
                            "n_train": int(len(x)), "n_given": int(n_given)}
    if test_images is not None and test_labels is not None:
        predicted = extract(model, test_images, num_threads=num_threads)[1].argmax(1)
        info["test_accuracy"] = float((predicted == np.asarray(test_labels)).mean())
        info["balanced_test_accuracy"] = balanced_accuracy(predicted, test_labels)
        info["n_test"] = int(len(test_labels))
    return model, info


def _per_class(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices (sorted) of at most ``limit`` examples of each class, drawn with ``default_rng(seed)``: a class
    of 87,000 surnames trains the classifier no better than 5,000 of them, at 17x the cost."""
    rng = np.random.default_rng(seed)
    keep = [idx if len(idx) <= limit else rng.choice(idx, limit, replace=False)
            for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def save_classifier(model: CharCNN, directory: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write the weights, then the JSON naming their sha256 (a reader never pairs it with other weights)."""
    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda p: torch.save(state, p))
    meta = {**info, "config": model.config(), "weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(weights),
            "torch_version": torch.__version__}
    text = json.dumps(meta, indent=2, sort_keys=True)
    _atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(text + "\n"))
    return directory


def load_classifier(directory: str | os.PathLike) -> tuple[CharCNN, dict[str, Any]]:
    """A classifier saved by :func:`save_classifier`. FileNotFoundError when absent, ValueError when the
    weights do not match the recorded sha256."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no cached text classifier in {directory} (need {CONFIG_FILE} and {WEIGHTS_FILE})")
    meta = json.loads(config_path.read_text())
    if meta.get("weights_sha256") != sha256_file(weights_path):
        raise ValueError(f"{weights_path} does not match the sha256 recorded in {config_path}")
    model = CharCNN(**meta["config"])
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    model.eval()
    return model, meta


def load_or_train_classifier(cache_dir: str | os.PathLike, data_sha256: str, train_images: Any = None,
                             train_labels: Any = None, num_classes: int | None = None, *, test_images: Any = None,
                             test_labels: Any = None, seed: int = 0, epochs: int = 8,
                             log: Callable[[str], None] | None = None,
                             **train_kwargs: Any) -> tuple[CharCNN, dict[str, Any]]:
    """The classifier of one data version: loaded from ``cache_dir/<data_sha256>/`` when it was trained
    there with the same settings, else trained (``train_classifier``) and saved. Returns ``(model, info)``:
    the cache's JSON plus ``cached`` and ``path``. ValueError for a ``data_sha256`` that is not a plain hash;
    FileNotFoundError when nothing usable is cached and no data is given."""
    if not _SAFE_KEY.match(str(data_sha256)) or str(data_sha256) in (".", ".."):
        raise ValueError(f"data_sha256 must be a plain hash string, got {data_sha256!r}")
    directory = Path(cache_dir) / str(data_sha256)
    wanted = {"seed": int(seed), "epochs": int(epochs),
              **{k: train_kwargs[k] for k in _TRAIN_KEYS if k in train_kwargs}}
    model_keys = {k: train_kwargs[k] for k in _MODEL_KEYS if k in train_kwargs}
    hit = cached_classifier(directory, load_classifier, wanted, model_keys, num_classes, log, what="text classifier",
                            config_file=CONFIG_FILE)
    if hit is not None:
        return hit
    if train_images is None or train_labels is None or num_classes is None:
        raise FileNotFoundError(f"no usable cached text classifier in {directory} and no data given to train one")
    model, info = train_classifier(train_images, train_labels, num_classes, seed=seed, epochs=epochs,
                                   test_images=test_images, test_labels=test_labels, log=log, **train_kwargs)
    info["data_sha256"] = str(data_sha256)
    info["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save_classifier(model, directory, info)
    model, meta = load_classifier(directory)  # exactly what a later cache hit returns
    return model, {**meta, "cached": False, "path": str(directory)}
