"""RealNVP (family "realnvp"): invertibility, log-determinant, dequantised likelihood, training,
resume, ONNX export and the flow ORT sampler against PyTorch.

Tiny configs on 8x8 images (scikit-learn's digits), so the file runs in seconds on a CPU.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from genmodels import build_model, get_family
from genmodels.realnvp import RealNVP, RealNVPConfig, squeeze, unsqueeze
from serving.export import export_model
from serving.generator import _load_session, generate, load_model_dir
from serving.sampler_flow import images_from_noise
from serving.samplers import SamplerSpecError, check_spec

TINY = dict(image_shape=(1, 8, 8), hidden=8, blocks=1, scales=2, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits
    x = load_digits().images.astype(np.float32) / 16.0  # 1797 x 8 x 8 in [0, 1]
    x = np.round(x * 255) / 255                         # 8-bit images, as the data contract gives them
    return torch.from_numpy(x.astype(np.float32)).unsqueeze(1)


def _tiny(**overrides) -> RealNVP:
    return build_model("realnvp", {**TINY, **overrides})


def _scrambled(**overrides) -> RealNVP:
    """A tiny flow whose couplings are far from the identity (the last convs start at zero)."""
    model = _tiny(**overrides)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _batches(x, n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [x[torch.randperm(len(x), generator=g)[:size]] for _ in range(n)]


# --- contract ---------------------------------------------------------------------------------
def test_shapes_ranges_and_sampler_spec():
    model = _scrambled()
    assert get_family("realnvp") is RealNVP and model.capabilities == {"nll", "score"}
    imgs = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (6, 1, 8, 8) and imgs.dtype == torch.float32
    assert 0 <= imgs.min() and imgs.max() <= 1 and imgs.std() > 0
    assert model.sampler().to_json() == {"kind": "flow", "graph": "inverse", "output": "images",
                               "noise": {"name": "z", "shape": [1, 8, 8], "distribution": "normal"},
                               "conditional": False}
    assert model.nll_variant == "uniformly dequantized 8-bit 8x8"
    (g,) = model.onnx_graphs()
    assert g.name == "inverse" and g.input_names == ["z"] and g.output_names == ["images"]


@pytest.mark.parametrize("scales", [1, 2, 3])
def test_default_and_other_scales_build(scales):
    model = build_model("realnvp", {"scales": scales, "hidden": 4, "blocks": 0})
    assert model.config.image_shape == (1, 28, 28)
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 28, 28)


def test_default_config():
    cfg = RealNVPConfig()
    assert cfg.image_shape == (1, 28, 28) and cfg.alpha == 0.05


@pytest.mark.parametrize("bad", [{"image_shape": (1, 7, 7), "scales": 2}, {"alpha": 0.5}, {"hidden": 0},
                                 {"no_such_key": 1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        RealNVPConfig.from_dict({**TINY, **bad})


def test_coupling_widths_grow_by_hidden_mult_per_level():
    model = _tiny(scales=3, hidden=4, hidden_mult=3)
    widths = [[c.net.inp.out_channels for c in [*level.checker, *level.channel]] for level in model.flow.levels]
    assert widths == [[4] * 6, [12] * 6, [36] * 4]
    assert {c.net.inp.out_channels for c in _tiny(scales=3, hidden=4, hidden_mult=1).flow.modules()
            if hasattr(c, "net")} == {4}


def test_a_flow_stored_before_hidden_mult_loads_as_it_was_trained(tmp_path):
    from pipelines.train import load_model

    old = _scrambled(scales=3, hidden=4, hidden_mult=1)
    spec = {"family": "realnvp", "config": {k: v for k, v in old.config.architecture().items() if k != "hidden_mult"},
            "training": old.config.training_settings()}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    torch.save(old.state_dict(), tmp_path / "model.pt")
    loaded = load_model(tmp_path)
    assert loaded.config.hidden_mult == 1 and RealNVPConfig().hidden_mult == 2
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(loaded.sample(4, generator=g()), old.sample(4, generator=g()))


def test_config_json_round_trip():
    cfg = RealNVPConfig.from_dict({**TINY, "seed": 3})
    assert RealNVPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- the flow ---------------------------------------------------------------------------------
def test_squeeze_round_trip():
    x = torch.randn(3, 2, 8, 6)
    s = squeeze(x)
    assert s.shape == (3, 8, 4, 3) and torch.equal(unsqueeze(s), x)
    assert torch.equal(s[0, :4, 0, 0], x[0, 0, :2, :2].flatten())  # one 2x2 block -> 4 channels


@pytest.mark.parametrize("scales", [1, 2, 3])
def test_exact_invertibility(scales):
    model = _scrambled(scales=scales).eval()
    l = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        z, logdet = model.flow(l)
        back = model.flow.inverse(z)
    assert (z - l).abs().max() > 0.1  # not the identity
    assert (back - l).abs().max() < 1e-4


def test_images_round_trip_through_z(digits):
    model = _scrambled()
    x = digits[:20]
    z = model.forward_z(x)  # at the dequantisation cube's centre
    back = model.inverse_images(z)
    assert (back - x).abs().max() < 1e-4
    assert torch.equal(torch.round(back * 255), torch.round(x * 255))


def test_log_determinant_matches_the_jacobian():
    model = _scrambled().double().eval()
    l = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jac = torch.autograd.functional.jacobian(lambda v: model.flow(v.view(1, 1, 8, 8))[0].flatten(), l.flatten())
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], model.flow(l)[1][0], atol=1e-8, rtol=1e-8)


# --- likelihood -------------------------------------------------------------------------------
def test_nll_is_the_dequantised_density_in_nats(digits):
    model = _scrambled()
    x = digits[:50]
    nll = model.nll(x)
    assert nll.shape == (50,) and torch.isfinite(nll).all()
    assert torch.equal(nll, model.nll(x))  # seeded: reproducible
    torch.testing.assert_close(model.score(x), nll)
    # the same number by hand: -log N(z) - log|det| - logit Jacobian + D log 256
    g = torch.Generator().manual_seed(0)
    u = torch.rand(x.shape, generator=g)
    a, d = model.config.alpha, 64
    y = (torch.round(x * 255) + u) / 256
    s = a + (1 - 2 * a) * y
    z, logdet = model.flow(torch.log(s / (1 - s)))
    by_hand = (0.5 * z.pow(2) + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) - logdet \
        - (math.log(1 - 2 * a) - torch.log(s * (1 - s))).flatten(1).sum(1) + d * math.log(256)
    torch.testing.assert_close(model.nll(x, generator=torch.Generator().manual_seed(0)), by_hand.detach(),
                               rtol=1e-5, atol=1e-3)
    # more dequantisation draws: another estimate of the same bound, close on average
    avg = _scrambled(nll_samples=4).nll(x)
    assert abs(avg.mean() - nll.mean()) < 0.02 * nll.mean()


def test_untrained_identity_flow_nll():
    # the flow starts as the identity (zero last convs): nll is the logit-transformed standard normal
    model = _tiny()
    x = torch.full((2, 1, 8, 8), 128 / 255)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    y = (128 + u) / 256
    s = 0.05 + 0.9 * y
    l = torch.log(s / (1 - s))
    expected = (0.5 * l ** 2 + 0.5 * math.log(2 * math.pi) - math.log(0.9) + torch.log(s * (1 - s))).flatten(1).sum(1) \
        + 64 * math.log(256)
    torch.testing.assert_close(model.nll(x), expected, rtol=1e-5, atol=1e-3)


# --- training ---------------------------------------------------------------------------------
def test_fit_step_reduces_loss(digits):
    torch.manual_seed(0)
    model = _tiny(lr=3e-3)
    logs = [model.fit_step(xb) for xb in _batches(digits, 40, 64)]
    assert set(logs[0]) == {"loss", "bits_per_dim"}
    assert all(isinstance(v, float) and math.isfinite(v) for log in logs for v in log.values())
    first, last = np.mean([l["bits_per_dim"] for l in logs[:5]]), np.mean([l["bits_per_dim"] for l in logs[-5:]])
    assert last < first - 0.5
    assert model.nll(digits[:200]).mean() / (64 * math.log(2)) < first - 0.5


def test_actnorm_starts_from_the_first_batch_only(digits):
    model = _tiny()
    an = model.flow.actnorm
    assert not an.initialized and torch.equal(an.log_scale, torch.zeros_like(an.log_scale))
    model.nll(digits[:8])  # evaluation never initialises it
    assert not an.initialized
    torch.manual_seed(0)
    model.fit_step(digits[:64])
    assert an.initialized
    scale = an.log_scale.detach().clone()
    model.fit_step(digits[64:128])  # later steps only train it
    assert (an.log_scale - scale).abs().max() < 0.1
    # always-black corner pixels are nearly constant: their std is floored, so exp(log_scale) = 1 / floor
    # (then one Adam step, which moves a parameter by about its lr = lr * actnorm_lr at most)
    step = model.config.lr * model.config.actnorm_lr
    assert abs(scale[0, 0, 0, 0].item() + math.log(model.config.actnorm_floor)) < 1.05 * step
    plain = _tiny(actnorm=False)
    assert plain.flow.actnorm is None and "flow.actnorm.loc" not in plain.state_dict()


def test_checkpoint_is_a_state_dict_and_rng_is_left_alone(digits):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    model = _scrambled()
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


# --- export and serving -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _scrambled()
    out = tmp_path_factory.mktemp("realnvp") / "model"
    return model, out, export_model(model, out)


def test_ort_sampler_reproduces_the_torch_sampler(exported):
    model, out, _ = exported
    spec, files, _ = load_model_dir(out)
    sessions = {k: _load_session(p, ["CPUExecutionProvider"], 1) for k, p in files.items()}
    z = np.random.default_rng(0).standard_normal((10, 1, 8, 8), dtype=np.float32)
    ort_imgs = images_from_noise(spec, sessions, z)
    torch_imgs = model.inverse_images(torch.from_numpy(z)).numpy()
    assert np.abs(ort_imgs - torch_imgs).max() < 1e-4
    assert np.mean(np.rint(ort_imgs * 255) == np.rint(torch_imgs * 255)) > 0.999
    # and sample() is that inverse at torch.randn noise
    g = torch.Generator().manual_seed(4)
    zt = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    assert np.abs(images_from_noise(spec, sessions, zt.numpy()) - model.sample(3, generator=g).numpy()).max() < 1e-4


def test_generate_on_the_exported_folder(exported, tmp_path):
    model, out, _ = exported
    result = generate(out, n=10, seed=0, out_dir=tmp_path / "g", batch_size=4, threads=1)
    assert result["complete"] and result["sampler"] == "flow" and result["num_shards"] == 3
    with np.load(tmp_path / "g" / "shards" / "shard-00000.npz") as f:
        images = f["images"]
    assert images.shape == (4, 1, 8, 8) and images.dtype == np.uint8
    z = np.random.default_rng([0, 0]).standard_normal((4, 1, 8, 8), dtype=np.float32)
    expected = np.rint(model.inverse_images(torch.from_numpy(z)).numpy() * 255)
    assert np.abs(images.astype(np.float64) - expected).max() <= 1  # ORT vs PyTorch rounding at most


@pytest.mark.parametrize("change", [{"graph": "nope"}, {"noise": {"name": "z", "shape": [64]}},
                                    {"noise": {"name": "z", "shape": [1, 8, 8], "distribution": "uniform"}},
                                    {"temperature": 0}, {"conditional": True}])
def test_bad_specs_are_refused(change):
    with pytest.raises(SamplerSpecError):
        check_spec({**_tiny().sampler().to_json(), **change}, {"inverse"})
