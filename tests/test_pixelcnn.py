"""PixelCNN (family "pixelcnn"): causality, exact likelihood, training, resume, ONNX export and the
autoregressive ORT sampler against the PyTorch sampler.

Tiny configs on 8x8 images (scikit-learn's digits), so the file runs in seconds on a CPU.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genmodels import build_model, get_family
from genmodels.pixelcnn import PixelCNN, PixelCNNConfig, draw_pixels
from serving.export import export_model
from serving.generator import _load_session, generate, load_model_dir
from serving.samplers import SamplerSpecError, check_spec
from serving.sampler_autoregressive import draw_pixels as np_draw_pixels
from serving.sampler_autoregressive import sample_from_uniforms

TINY = dict(image_shape=(1, 8, 8), channels=8, layers=3, head_channels=16, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits
    x = load_digits().images.astype(np.float32) / 16.0  # 1797 x 8 x 8 in [0, 1]
    return torch.from_numpy(x).unsqueeze(1)


def _tiny(**overrides) -> PixelCNN:
    return build_model("pixelcnn", {**TINY, **overrides})


def _batches(x, n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [x[torch.randperm(len(x), generator=g)[:size]] for _ in range(n)]


# --- contract ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pixels", ["binary", "256"])
def test_shapes_ranges_and_sampler_spec(pixels):
    model = _tiny(pixels=pixels)
    assert get_family("pixelcnn") is PixelCNN and model.capabilities == {"nll", "score"}
    imgs = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (6, 1, 8, 8) and imgs.dtype == torch.float32
    values = torch.unique(imgs)
    if pixels == "binary":
        assert set(values.tolist()) <= {0.0, 1.0} and len(values) == 2
    else:
        k = values * 255
        assert torch.allclose(k, k.round(), atol=1e-4) and 0 <= values.min() and values.max() <= 1
    x = torch.rand(3, 1, 8, 8)
    logits = model.logits(x)
    assert logits.shape == ((3, 1, 8, 8) if pixels == "binary" else (3, 1, 8, 8, 256))
    spec = model.sampler().to_json()
    assert spec["kind"] == "autoregressive" and spec["pixels"] == pixels and spec["conditional"] is False
    assert spec["uniforms"]["shape"] == [1, 8, 8]
    assert {g.name for g in model.onnx_graphs()} == {"logits", "row", "pixel"}
    want = "binarized 8x8 (static threshold 0.5)" if pixels == "binary" else "8-bit 8x8 (256-way categorical)"
    assert want in model.nll_variant


def test_default_config_builds_for_mnist():
    model = build_model("pixelcnn", {})
    assert model.config.image_shape == (1, 28, 28) and model.config.pixels == "binary"
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("bad", [{"pixels": "16"}, {"kernel": 4}, {"first_kernel": 1}, {"layers": 1},
                                 {"threshold": 1.0}, {"no_such_key": 1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        PixelCNNConfig.from_dict({**TINY, **bad})


def test_config_json_round_trip():
    cfg = PixelCNNConfig.from_dict({**TINY, "pixels": 256})  # YAML may give an int
    again = PixelCNNConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.pixels == "256"


# --- causality: logits at (i, j) depend exactly on the pixels before (i, j) in raster order ---
@pytest.mark.parametrize("pixels", ["binary", "256"])
def test_causality_is_exact(pixels):
    model = _tiny(pixels=pixels).double()  # float64: im2col + GEMM, no transform that mixes positions
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64) * 255).round() / 255
    base = model.logits(x)
    order = torch.arange(64).view(8, 8)
    for i in range(8):
        for j in range(8):
            y = x.clone()
            if pixels == "binary":
                y[0, 0, i, j] = 0.0 if x[0, 0, i, j] > 0.5 else 1.0
            else:
                y[0, 0, i, j] = (y[0, 0, i, j] + 0.5) % 1.0
            changed = (model.logits(y) != base).reshape(1, 1, 8, 8, -1).any(-1)[0, 0]  # 8 x 8
            # nothing at or before (i, j) moves, bit for bit ...
            assert not changed[order <= order[i, j]].any(), (i, j)
            # ... and the pixel right after it (same row) and below it do
            if j + 1 < 8:
                assert changed[i, j + 1], (i, j)
            if i + 1 < 8:
                assert changed[i + 1, j], (i, j)


def test_no_blind_spot():
    # the original PixelCNN's masked 3x3 stack never sees pixels above-right; the vertical stack does
    model = _tiny(layers=3).double()
    x = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) > 0.5).double()
    i, j = 5, 3
    base = model.logits(x)[0, 0, i, j]
    for di, dj in [(-1, 1), (-1, 2), (-1, 3), (-2, 3), (-1, -3), (0, -1), (0, -3), (-4, 0)]:
        y = x.clone()
        y[0, 0, i + di, j + dj] = 1 - y[0, 0, i + di, j + dj]
        assert model.logits(y)[0, 0, i, j] != base, (di, dj)


@pytest.mark.parametrize("pixels", ["binary", "256"])
def test_incremental_steps_equal_the_full_network(pixels):
    """Teacher-forced row/pixel steps (the sampler's cache) give the full graph's logits."""
    model = _tiny(pixels=pixels).eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    full = model.logits(x)
    row, pixel = model._steps()
    s = model._state_shapes(4)
    r0 = model.config.first_kernel // 2
    img = torch.zeros(4, 1, 8 + r0, 8 + r0)
    img[:, :, r0:, r0:] = model.prep(x)
    v_hist, cond = torch.zeros(s["v_hist"]), torch.zeros(4, 3, 16, 8)
    with torch.no_grad():
        for i in range(8):
            if i:
                cond, v_hist = row(img[:, :, i - 1:i + r0, r0:], v_hist)
            h_hist = torch.zeros(s["h_hist"])
            for j in range(8):
                logits, h_hist = pixel(cond[..., j], img[:, :, i + r0, j:j + r0], h_hist)
                torch.testing.assert_close(logits, full[:, :, i, j], atol=1e-5, rtol=1e-5)


# --- likelihood -------------------------------------------------------------------------------
def test_nll_is_the_summed_cross_entropy():
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    binary = _tiny()
    nll = binary.nll(x)
    assert nll.shape == (5,) and torch.isfinite(nll).all()
    # an untrained model sits near a fair coin per pixel: H * W * ln 2 nats
    assert abs(nll.mean().item() - 64 * math.log(2)) < 0.1 * 64 * math.log(2)
    b = (x > 0.5).float()
    lg = binary.logits(x)
    manual = -(b * F.logsigmoid(lg) + (1 - b) * F.logsigmoid(-lg)).flatten(1).sum(1)
    torch.testing.assert_close(nll, manual)
    torch.testing.assert_close(binary.score(x), nll)
    # static binarisation: values on the same side of 0.5 give the same likelihood
    torch.testing.assert_close(binary.nll(torch.where(x > 0.5, 0.51, 0.49)), nll)

    cat = _tiny(pixels="256")
    nll = cat.nll(x)
    assert abs(nll.mean().item() - 64 * math.log(256)) < 0.1 * 64 * math.log(256)
    k = (x * 255).round().long()
    lp = torch.log_softmax(cat.logits(x), -1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(nll, -lp.flatten(1).sum(1))


def test_a_valid_distribution_sums_to_one():
    # exact normalisation: sum of p(x) over all 2^(2*2) binary 2x2 images is 1
    model = build_model("pixelcnn", {**TINY, "image_shape": (1, 2, 2)})
    grid = torch.tensor([[(m >> b) & 1 for b in range(4)] for m in range(16)], dtype=torch.float32).view(16, 1, 2, 2)
    total = torch.exp(-model.nll(grid).double()).sum().item()
    assert abs(total - 1.0) < 1e-5


# --- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pixels", ["binary", "256"])
def test_fit_step_reduces_loss(digits, pixels):
    model = _tiny(pixels=pixels, lr=5e-3)
    logs = [model.fit_step(xb) for xb in _batches(digits, 30, 64)]
    assert set(logs[0]) == {"loss", "bits_per_dim"}
    assert all(isinstance(v, float) and math.isfinite(v) for log in logs for v in log.values())
    first, last = np.mean([l["loss"] for l in logs[:5]]), np.mean([l["loss"] for l in logs[-5:]])
    assert last < first - 0.15 * first
    assert abs(logs[-1]["bits_per_dim"] - logs[-1]["loss"] / (64 * math.log(2))) < 1e-9


def test_checkpoint_is_a_state_dict_and_rng_is_left_alone(digits):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    model = _tiny()
    model.fit_step(digits[:16])  # no randomness in a PixelCNN step
    model.sample(2, generator=torch.Generator().manual_seed(0))
    model.nll(digits[:4])
    assert torch.equal(before, torch.get_rng_state())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded = _tiny(seed=5)
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(model.sample(4, generator=g()), loaded.sample(4, generator=g()))
    assert not torch.equal(model.sample(4, generator=g()), model.sample(4, generator=torch.Generator().manual_seed(4)))


def test_sample_uses_the_uniforms_it_is_given():
    model = _tiny()
    u = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    assert torch.equal(model.sample(5, generator=torch.Generator().manual_seed(9)), model.sample_from_uniforms(u))
    # the rule: pixel = 1 exactly when u < sigmoid(logit) at that pixel, given the pixels before
    imgs = model.sample_from_uniforms(u)
    p = torch.sigmoid(model.logits(imgs).double())
    assert torch.equal(imgs.bool(), u.double() < p)


def test_draw_rules_agree_between_torch_and_numpy():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(500, 1, generator=g)
    for binary, shape in ((True, (500, 1)), (False, (500, 1, 256))):
        logits = torch.randn(shape, generator=g) * 3
        a = draw_pixels(logits, u, binary).numpy()
        b = np_draw_pixels(logits.numpy(), u.numpy(), binary)
        assert np.array_equal(a, b)
    # inverse CDF: k is the first category whose cumulative probability exceeds u
    logits = torch.log(torch.tensor([[[0.25] * 4 + [0.0] * 252]]).clamp_min(1e-30))
    for uu, k in ((0.0, 0), (0.2499, 0), (0.26, 1), (0.99, 3)):
        assert draw_pixels(logits, torch.tensor([[uu]]), False).item() * 255 == pytest.approx(k)


# --- export and serving -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["binary", "256"])
def exported(request, tmp_path_factory):
    model = _tiny(pixels=request.param)
    with torch.no_grad():  # trained-looking weights: larger logits than at init
        for p in model.parameters():
            p.mul_(1.5)
    out = tmp_path_factory.mktemp(f"pixelcnn-{request.param}") / "model"
    report = export_model(model, out)
    return model, out, report


def _sessions(out):
    spec, files, _ = load_model_dir(out)
    return spec, {k: _load_session(p, ["CPUExecutionProvider"], 1) for k, p in files.items()}


def test_ort_sampler_reproduces_the_torch_sampler(exported):
    model, out, _ = exported
    spec, sessions = _sessions(out)
    u = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)
    cached = sample_from_uniforms(spec, sessions, u)
    plain = sample_from_uniforms(spec, sessions, u, cached=False)  # full graph on the rows so far
    torch_imgs = model.sample_from_uniforms(torch.from_numpy(u)).numpy()
    assert np.array_equal(cached, torch_imgs) and np.array_equal(plain, torch_imgs)
    assert len(np.unique(cached.reshape(10, -1), axis=0)) == 10


def test_generate_on_the_exported_folder(exported, tmp_path):
    model, out, _ = exported
    result = generate(out, n=10, seed=0, out_dir=tmp_path / "g", batch_size=4, threads=1)
    assert result["complete"] and result["sampler"] == "autoregressive" and result["num_shards"] == 3
    with np.load(tmp_path / "g" / "shards" / "shard-00000.npz") as z:
        images = z["images"]
    assert images.shape == (4, 1, 8, 8) and images.dtype == np.uint8
    # shard 0's uniforms are default_rng([seed, 0]).random((4, 1, 8, 8), float32): the same in PyTorch
    u = np.random.default_rng([0, 0]).random((4, 1, 8, 8), dtype=np.float32)
    expected = np.rint(model.sample_from_uniforms(torch.from_numpy(u)).numpy() * 255).astype(np.uint8)
    assert np.array_equal(images, expected)
    generate(out, n=10, seed=0, out_dir=tmp_path / "g2", batch_size=4, threads=2)
    assert (tmp_path / "g" / "shards" / "shard-00002.npz").read_bytes() == \
        (tmp_path / "g2" / "shards" / "shard-00002.npz").read_bytes()


@pytest.mark.parametrize("change", [{"pixels": "gray"}, {"graph": "nope"}, {"uniforms": {"shape": [1, 8]}},
                                    {"cache": {"row_graph": "row", "pixel_graph": "missing", "row_window": 4,
                                               "left_window": 3, "layers": 3, "channels": 8, "history": 1}},
                                    {"conditional": True}])
def test_bad_specs_are_refused(change):
    spec = {**_tiny().sampler().to_json(), **change}
    with pytest.raises(SamplerSpecError):
        check_spec(spec, {"logits", "row", "pixel"})


# --- the exported logits graph's form (genmodels/pixelcnn_export.py) ----------------------------
def test_logits_graph_is_conv_only_and_equals_the_model_at_every_height(exported):
    import onnx

    model, out, report = exported
    assert report["graphs"]["logits"]["exporter"] == "torchscript"  # the rewritten form, not the fallback
    graph = onnx.load(str(out / "logits.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Pad", "Slice", "Split"} and "Conv" in ops
    assert all(a.name != "auto_pad" for n in graph.node for a in n.attribute)
    assert "Pad" not in {n.op_type for n in onnx.load(str(out / "row.onnx")).graph.node}  # conv's own padding
    heights = {d.dim_param for vi in graph.value_info for d in vi.type.tensor_type.shape.dim[2:3]}
    assert "height" in heights  # symbolic shapes recorded for ORT's NCHWc transformer
    sess = _load_session(out / "logits.onnx", ["CPUExecutionProvider"], 1)
    x = torch.from_numpy(np.random.default_rng(3).random((5, 1, 8, 8), dtype=np.float32))
    full = model.logits(x)
    for h in (1, 2, 5, 8):  # the generator without its cache calls logits on the rows so far
        got = sess.run(None, {"x": x[:, :, :h].numpy()})[0]
        assert got.shape == tuple(full[:, :, :h].shape)
        np.testing.assert_allclose(got, full[:, :, :h].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pixels,image_channels", [("binary", 1), ("256", 1), ("256", 3)])
def test_logits_graph_keeps_ort_s_blocked_layout(tmp_path, pixels, image_channels):
    """16 channels (one NCHWc block): after ORT's optimiser the only layout reorder left is the output's
    ("256" with one image channel: the MatMul head; with three: the conv head and a transpose)."""
    import collections

    import onnx
    import onnxruntime as ort

    model = _tiny(channels=16, layers=2, head_channels=16, pixels=pixels, image_shape=(image_channels, 8, 8))
    report = export_model(model, tmp_path / "m")
    assert report["graphs"]["logits"]["exporter"] == "torchscript" and report["passed"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "m" / "logits.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["ReorderInput"] + ops["ReorderOutput"] <= 1, ops
