"""The weight average every family samples from (genmodels/ema.py): the warmed-up decay, parameters and float
buffers averaged, integer buffers copied; and realnvp's use of it (its EMA copy samples, scores and is exported)."""
import torch
from torch import nn

from genmodels import build_model
from genmodels.ema import update_ema, warmed_up_decay


def test_warm_up_then_the_configured_decay():
    assert warmed_up_decay(0.999, 0) == 0.1 and warmed_up_decay(0.999, 8) == 9 / 18
    assert warmed_up_decay(0.999, 10_000) == 0.999


def test_update_averages_parameters_and_float_buffers_and_copies_integer_ones():
    live, avg = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        live.weight.fill_(2.0)
        live.running_mean.fill_(1.0)
    live.num_batches_tracked.fill_(7)
    update_ema(avg, live, 0.999, k=0)                        # d = 0.1: avg = 0.1 avg + 0.9 live
    assert torch.allclose(avg.weight, torch.full((3,), 0.1 * 1.0 + 0.9 * 2.0))
    assert torch.allclose(avg.running_mean, torch.full((3,), 0.9))
    assert int(avg.num_batches_tracked) == 7
    assert torch.equal(live.weight, torch.full((3,), 2.0))    # the live module is never touched


def test_realnvp_samples_scores_and_exports_its_average():
    cfg = dict(image_shape=(1, 8, 8), hidden=4, blocks=1, scales=2, seed=0)
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    averaged, plain = build_model("realnvp", {**cfg, "ema_decay": 0.9}), build_model("realnvp", cfg)
    assert plain.flow_ema is None and plain.sampling_flow() is plain.flow
    for _ in range(5):
        averaged.fit_step(x)
    assert int(averaged.ema_steps) == 5 and averaged.sampling_flow() is averaged.flow_ema
    assert any(k.startswith("flow_ema.") for k in averaged.state_dict())
    assert averaged.flow_ema.actnorm.initialized                 # the data-dependent init reached the copy
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    trained = averaged.nll_dequantized(x, g(), averaged.flow).detach()
    assert torch.allclose(averaged.nll(x, g()), averaged.nll_dequantized(x, g(), averaged.flow_ema))
    assert not torch.allclose(averaged.nll(x, g()), trained)      # the average is not the trained weights
    (graph,) = averaged.onnx_graphs()
    assert graph.module.flow is averaged.flow_ema
    z = torch.randn(3, 1, 8, 8, generator=g())
    assert torch.equal(averaged.inverse_images(z), graph.module(z))
