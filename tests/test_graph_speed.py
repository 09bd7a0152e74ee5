"""benchmarks/graph_speed.py's parts on tiny graphs: the timing loop runs every method on an exported graph,
FLOPs are counted as 2 per multiply-add, the ORT profile sums to 1, and the int8 variant is a QDQ graph that
stays close to fp32. Seconds, default run."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from benchmarks.graph_speed import _flops_per_sample, _inputs, _int8_model, measure_graph, ort_profile
from genmodels.base import OnnxGraph
from serving.export import export_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv_graph() -> OnnxGraph:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1)).eval()
    return OnnxGraph(name="net", module=net, example_inputs=(torch.zeros(2, 1, 8, 8),), input_names=["x"],
                     output_names=["y"])


def test_every_method_is_timed_on_the_exported_graph(tmp_path):
    from genmodels.vae import VAE, VAEConfig

    model = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=4, width=4, hidden=16, seed=0)).eval()
    export_model(model, tmp_path / "vae")
    g = model.onnx_graphs()[0]
    methods = ("ort", "ort_spin", "eager", "eager_cl", "eager_bf16")
    rates, compile_times = measure_graph(g, tmp_path / "vae" / "decoder.onnx", 16, 1, 0, methods=methods,
                                         rounds=1, seconds=0.01, clock="cpu")
    assert not compile_times
    # the VAE decoder has transposed convolutions, so channels_last applies
    assert set(rates) == set(methods) and all(r > 0 for r in rates.values())
    shares = ort_profile(tmp_path / "vae" / "decoder.onnx", _inputs(g, 16, 0)[0], calls=1)
    assert sum(shares.values()) == pytest.approx(1.0) and list(shares.values()) == sorted(shares.values(), reverse=True)


def test_flops_are_two_per_multiply_add():
    lin = nn.Linear(4, 3)
    assert _flops_per_sample(lin, [torch.zeros(5, 4)], 5) == 2 * 4 * 3
    conv = nn.Conv2d(2, 3, 3, padding=1)  # 8 x 8 outputs, 3 channels, 2 x 3 x 3 multiply-adds each
    assert _flops_per_sample(conv, [torch.zeros(2, 2, 8, 8)], 2) == 2 * 8 * 8 * 3 * 2 * 3 * 3


def test_int8_variant_is_a_qdq_graph_close_to_fp32(tmp_path):
    g = _conv_graph()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(g.module, g.example_inputs, str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=18)
    calib = [_inputs(g, 8, 0, seed=s)[0] for s in range(1, 3)]
    q = _int8_model(path, calib, tmp_path / "net.int8.onnx")
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    import onnxruntime as ort

    feeds, tensors = _inputs(g, 8, 0, seed=1)
    got = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        ref = g.module(*tensors).numpy()
    err = np.abs(got - ref).max()
    assert 0 < err < 0.05 * np.abs(ref).max()  # quantized (not bit-equal), yet within a few % of the range


def test_lstm_gate_flops_are_counted():
    lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    # per sample and position: layer 1 2 x 4*5 x (3 + 5), layer 2 2 x 4*5 x (5 + 5)
    assert _flops_per_sample(lstm, [torch.zeros(2, 7, 3)], 2) == 7 * (2 * 20 * 8 + 2 * 20 * 10)


def test_missed_targets_say_what_they_would_take():
    from benchmarks.graph_speed import _misses

    # ORT 100 samples/s at 1 GFLOP/sample on a 200 GFLOP/s peak: 50%; bf16 at 150 needs 75%; eager 80 -> 1.5x needs 120
    lines = _misses("g/x", 8, 1, {"ort": 100, "eager_bf16": 150, "ort_int8": 180, "compile": 90}, 80, 1e9, 200)
    assert lines == ["g/x batch 8, 1 thread(s): ORT runs at 50% of the fp32 peak; 1.5x best fp32 eager needs 120 "
                     "samples/s = 60% of the peak; ORT int8 (speed only) runs 2.25x best fp32 eager",
                     "g/x batch 8, 1 thread(s): ORT runs at 50% of the fp32 peak; bf16 autocast needs 150 samples/s "
                     "= 75% of the peak; ORT int8 (speed only) runs 1.20x bf16 autocast"]
    assert _misses("g/x", 8, 1, {"ort": 100}, 50, 1e9, 200) == []
