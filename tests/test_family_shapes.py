"""Images that are not 1 x 8 x 8 (issue #12, cases 10 and 11): every family builds, trains a step, samples,
exports with ONNX parity (batch 1 and 7) and serves non-square, odd-sized and RGB images; where an
architecture cannot take a shape it refuses in one line naming the family, the shape and what it needs.

The tiny configs are the contract suite's (tests/test_family_contract.py), one per family."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genmodels import FAMILIES, build_model, get_family
from tests.test_family_contract import FamilyContract

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the image families (text families have their own suite: TokenContract, tests/test_text_models.py)
IMAGE_FAMILIES = sorted(f for f in FAMILIES if "image" in get_family(f).modalities)
# one tiny config per family: the first contract class of each
CONFIGS = {}
for _cls in FamilyContract.__subclasses__():
    if getattr(_cls, "family", None) in IMAGE_FAMILIES and not getattr(_cls, "module_path", None):
        CONFIGS.setdefault(_cls.family, _cls.config)

# 8x12: 2 stride-2 levels (8x12 -> 4x6); 3x32x32: CIFAR-like RGB; 3x28x20: non-square RGB, odd after 2 halvings
SHAPES = [(1, 8, 12), (3, 32, 32), (3, 28, 20)]


def test_every_family_has_a_shape_config():
    assert set(CONFIGS) == set(IMAGE_FAMILIES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_family_trains_exports_and_serves_the_shape(family, shape, tmp_path):
    from serving.export import export_model
    from serving.generator import generate, iter_samples

    torch.manual_seed(0)
    model = build_model(family, {"image_shape": shape, "num_classes": 3, "seed": 0, **CONFIGS[family]})
    x = torch.rand(4, *shape)
    losses = model.fit_step(x, torch.arange(4) % 3)
    assert all(np.isfinite(v) for v in losses.values())
    model.eval()
    labels = torch.arange(3) % 3 if "conditional" in model.capabilities else None
    s = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(0))
    assert tuple(s.shape) == (3, *shape) and 0.0 <= float(s.min()) and float(s.max()) <= 1.0

    report = export_model(model, tmp_path / "onnx")
    assert report["passed"] and report["max_abs_error"] <= 1e-4
    spec = json.loads((tmp_path / "onnx" / "sampler.json").read_text())
    assert spec["image_shape"] == list(shape) and spec["sample_shape"] == list(shape)
    generate(tmp_path / "onnx", 3, 0, tmp_path / "gen", batch_size=2)
    shards = [images.shape for images, _ in iter_samples(tmp_path / "gen")]
    assert shards == [(2, *shape), (1, *shape)]


@pytest.mark.parametrize("family, config, shape, message", [
    ("ddpm", {"channel_mult": (1, 2)}, (1, 7, 9),
     "ddpm needs image height and width divisible by 2 (2**(len(channel_mult)-1)); the data's images are 1x7x9 "
     "(CxHxW): give channel_mult at most 1 entries, or resize the images"),
    ("ddpm", {"channel_mult": (1, 2, 2, 2)}, (3, 28, 20),
     "ddpm needs image height and width divisible by 8 (2**(len(channel_mult)-1)); the data's images are 3x28x20 "
     "(CxHxW): give channel_mult at most 3 entries, or resize the images"),
    ("realnvp", {"scales": 3}, (1, 20, 14),
     "realnvp needs image height and width divisible by 4 (2**(scales-1)); the data's images are 1x20x14 "
     "(CxHxW): set scales to at most 2, or resize the images"),
    ("realnvp", {"scales": 2}, (3, 32, 15),
     "realnvp needs image height and width divisible by 2 (2**(scales-1)); the data's images are 3x32x15 "
     "(CxHxW): set scales to at most 1, or resize the images"),
])
def test_a_shape_the_architecture_cannot_take_is_refused_in_one_line(family, config, shape, message):
    from contracts.errors import GenforgeError
    from pipelines.train import build_for_dataset

    with pytest.raises(ValueError) as exc:
        build_model(family, {**CONFIGS[family], **config, "image_shape": shape, "num_classes": 3})
    assert str(exc.value) == message
    # what `genforge stage train` prints: the model section, then the same line
    meta = {"modality": "image", "shape": list(shape), "dtype": "uint8", "value_range": [0, 255],
            "num_classes": 3, "class_names": ["a", "b", "c"]}
    with pytest.raises(GenforgeError) as exc:
        build_for_dataset(family, {**CONFIGS[family], **config}, meta, 0)
    assert str(exc.value) == f"model.{family}: {message}" and "\n" not in str(exc.value)
