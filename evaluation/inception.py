"""Optional InceptionV3 pool3 features (2048-d) from a weights file the user supplies.

Nothing is ever downloaded: the network is built with ``torchvision.models.inception_v3(
weights=None, aux_logits=True, init_weights=False)`` and its state dict is read from a local file
with ``torch.load(weights_only=True)``. The file is a plain state dict of torchvision's
Inception3 (e.g. torchvision's ``inception_v3_google-*.pth``); ``fc.*`` is ignored (the head is
replaced by the identity, so the output is the 2048-d average-pooled "pool3" vector) and the
auxiliary classifier's keys may be absent. A ``{"state_dict": ...}`` wrapper and a ``module.``
prefix (DataParallel) are unwrapped.

Input: ``N x C x H x W`` images, uint8 0..255 or float in [0, 1], C in {1, 3}; grayscale is
tiled to 3 channels, images are resized to 299 x 299 (bilinear) and scaled to [-1, 1], the
range the Google InceptionV3 weights expect (torchvision's ``transform_input`` does the same for
ImageNet-normalised input).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InceptionFeatures", "INCEPTION_FEATURE_DIM"]

INCEPTION_FEATURE_DIM = 2048
_INPUT_SIZE = 299


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError("the Inception weights file must hold a state dict")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


class InceptionFeatures:
    """Callable feature extractor: ``InceptionFeatures(path)(images) -> float64 N x 2048``."""

    name = "inception_v3_pool3"

    def __init__(
        self,
        weights_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        num_threads: int | None = None,
    ) -> None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"InceptionV3 weights file not found: {path} (genforge never downloads them; "
                f"pass the path of a local torchvision Inception3 state dict)"
            )
        from torchvision.models import inception_v3  # lazy: torchvision is only needed here

        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        model.fc = nn.Identity()
        state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("AuxLogits.")]
        if missing or unexpected:
            raise ValueError(
                f"{path} is not an Inception3 state dict: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {list(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.num_threads = num_threads  # torch intra-op threads during __call__ (None: as set)
        self.weights_path = str(path)

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            batch = batch.float() / 255.0
        elif batch.is_floating_point():
            batch = batch.float()
        else:
            raise ValueError(f"images must be uint8 or float in [0, 1], got {batch.dtype}")
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        elif batch.shape[1] != 3:
            raise ValueError(f"images must have 1 or 3 channels, got {batch.shape[1]}")
        batch = batch.to(self.device)
        if tuple(batch.shape[2:]) != (_INPUT_SIZE, _INPUT_SIZE):
            batch = F.interpolate(batch, size=(_INPUT_SIZE, _INPUT_SIZE), mode="bilinear", align_corners=False)
        return batch * 2.0 - 1.0

    @torch.inference_mode()
    def __call__(self, images: Any) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            x = images.detach().cpu()
        else:
            x = torch.from_numpy(np.ascontiguousarray(images))
        if x.ndim != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {tuple(x.shape)}")
        out = [np.zeros((0, INCEPTION_FEATURE_DIM))]
        before = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            for start in range(0, x.shape[0], self.batch_size):
                feats = self.model(self._prepare(x[start : start + self.batch_size]))
                out.append(feats.double().cpu().numpy())
        finally:
            torch.set_num_threads(before)
        return np.concatenate(out)

    features = __call__
