"""genmodels families (vae, dcgan): contract, training, resume, likelihood bounds, ONNX parity.

Tiny configs on scikit-learn's 8x8 digits, so the whole file runs in seconds on a CPU.
"""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from genmodels import build_model, get_family
from genmodels.dcgan import DCGAN, DCGANConfig
from genmodels.vae import VAE, VAEConfig

TINY = {
    "vae": dict(image_shape=(1, 8, 8), latent_dim=4, width=8, iwae_k=16, seed=0),
    "dcgan": dict(image_shape=(1, 8, 8), latent_dim=8, ngf=8, ndf=8, seed=0),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits
    x = load_digits().images.astype(np.float32) / 16.0  # 1797 x 8 x 8 in [0, 1]
    return torch.from_numpy(x).unsqueeze(1)


def _tiny(family: str, **overrides):
    return build_model(family, {**TINY[family], **overrides})


def _batches(x: torch.Tensor, n: int, size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [x[torch.randperm(len(x), generator=g)[:size]] for _ in range(n)]


def _train(model, x, steps, size=64):
    out = []
    for xb in _batches(x, steps, size):
        out.append(model.fit_step(xb, torch.zeros(len(xb), dtype=torch.long)))
    return out


# --- contract ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vae", "dcgan"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_builds_and_samples_in_range(family, shape):
    model = _tiny(family, image_shape=shape)
    assert get_family(family) is type(model) and model.family == family
    imgs = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (5, *shape) and imgs.dtype == torch.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0 and imgs.std() > 0  # distinct pixels, not a constant
    spec = model.sampler().to_json()
    graphs = {g.name: g for g in model.onnx_graphs()}
    assert spec["kind"] == "direct" and spec["graph"] in graphs and spec["conditional"] is False
    # the VAE's default mixture prior draws z from latent_dim + 1 standard normals (genmodels/latent_prior.py)
    name, dim = ("noise", model.config.latent_dim + 1) if family == "vae" else ("z", model.config.latent_dim)
    assert spec["noise"] == {"name": name, "shape": [dim], "distribution": "normal"}
    g = graphs[spec["graph"]]
    assert g.input_names == [name] and g.output_names == ["images"]
    assert tuple(g.module(*g.example_inputs).shape[1:]) == shape


def test_capabilities_are_declared_and_honoured():
    assert VAE.capabilities == {"score", "nll", "encode", "decode", "latent"}
    assert not DCGAN.capabilities & {"score", "nll", "encode", "decode", "conditional"}
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(NotImplementedError):
        _tiny("dcgan").nll(x)
    with pytest.raises(NotImplementedError):
        _tiny("dcgan").score(x)


def test_default_configs_build_for_mnist():
    for family in ("vae", "dcgan"):
        model = build_model(family, {})
        assert model.config.image_shape == (1, 28, 28)
        assert model.sample(2).shape == (2, 1, 28, 28)


def test_building_and_sampling_leave_the_global_rng_alone():
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    model = _tiny("vae")
    model.sample(3, generator=torch.Generator().manual_seed(0))
    model.score(x)
    model.nll(x)
    _tiny("dcgan", spectral_norm=True).sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("cls, bad", [
    (VAEConfig, {"no_such_key": 1}), (VAEConfig, {"likelihood": "poisson"}), (VAEConfig, {"score": "psnr"}),
    (DCGANConfig, {"lr": 1e-3}), (DCGANConfig, {"betas": [0.5]}),
])
def test_config_rejects_unknown_keys_and_values(cls, bad):
    with pytest.raises(ValueError):
        cls.from_dict(bad)


@pytest.mark.parametrize("family", ["vae", "dcgan"])
def test_checkpoint_is_state_dict_plus_config_json(family, digits):
    model = _tiny(family)
    _train(model, digits, 3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    config = json.dumps(model.config.to_dict())
    buf.seek(0)
    loaded = build_model(family, {**json.loads(config), "seed": 123})  # other init: weights must come from the file
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model.sample(4, generator=g()), loaded.sample(4, generator=g()))


# --- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, {"likelihood": "gaussian"}, {"beta": 4.0, "hidden": 16}])
def test_vae_fit_step_reduces_loss(digits, overrides):
    model = _tiny("vae", lr=3e-3, **overrides)
    logs = _train(model, digits, 40)
    assert set(logs[0]) == {"loss", "recon", "kl"}
    assert all(isinstance(v, float) and math.isfinite(v) for log in logs for v in log.values())
    first, last = np.mean([l["loss"] for l in logs[:5]]), np.mean([l["loss"] for l in logs[-5:]])
    assert last < first - 0.1 * abs(first)


def test_vae_gaussian_sigma_learned_or_fixed(digits):
    learned, fixed = _tiny("vae", likelihood="gaussian"), _tiny("vae", likelihood="gaussian", learn_sigma=False)
    _train(learned, digits, 5)
    _train(fixed, digits, 5)
    assert not torch.allclose(learned.log_sigma, torch.tensor(math.log(0.1)))
    assert torch.allclose(fixed.log_sigma, torch.tensor(math.log(0.1)))
    assert "log_sigma" in fixed.state_dict()  # a buffer: checkpointed, not optimised


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_dcgan_fit_step(digits, spectral_norm):
    model = _tiny("dcgan", spectral_norm=spectral_norm, lr_d=1e-3, lr_g=1e-3)
    # distance of the mean sample from the mean digit: generator progress D's loss cannot show
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    gap = lambda: (model.sample(500, generator=g()).mean(0) - digits.mean(0)).abs().mean().item()  # noqa: E731
    gap_before = gap()
    logs = _train(model, digits, 30)
    assert set(logs[0]) == {"loss_d", "loss_g", "d_real", "d_fake"}
    assert all(isinstance(v, float) and math.isfinite(v) for log in logs for v in log.values())
    assert all(0 <= log["d_real"] <= 1 and 0 <= log["d_fake"] <= 1 for log in logs)
    # an untrained D sits at log 4 (= 1.386); after a few dozen steps it separates real from fake
    assert abs(logs[0]["loss_d"] - math.log(4)) < 0.1
    assert np.mean([l["loss_d"] for l in logs[-5:]]) < math.log(4) - 0.05
    assert np.mean([l["d_real"] - l["d_fake"] for l in logs[-5:]]) > 0.03
    assert gap() < gap_before - 0.01


def test_dcgan_samples_and_exports_the_weight_average(digits):
    model = _tiny("dcgan", ema_decay=0.9)
    _train(model, digits, 6)
    assert int(model.ema_steps) == 6  # one average step per generator step
    live, averaged = dict(model.generator.named_parameters()), dict(model.generator_ema.named_parameters())
    assert not torch.equal(live["project.0.weight"], averaged["project.0.weight"])
    z = torch.randn(4, model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        from_average = (model.generator_ema(z) + 1) * 0.5
    assert torch.equal(model.from_noise(z), from_average)  # samples come from the average ...
    graph = model.onnx_graphs()[0]
    assert graph.module.generator is model.generator_ema  # ... and so does the exported graph
    # a state dict saved before the average existed loads with the average = the trained weights
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("generator_ema.") and k != "ema_steps"}
    fresh = _tiny("dcgan", ema_decay=0.9)
    fresh.load_state_dict(old)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.from_noise(z), (model.generator(z) + 1) * 0.5)
    assert _tiny("dcgan", ema_decay=0.0).generator_ema is None
    with pytest.raises(ValueError, match="ema_decay"):
        _tiny("dcgan", ema_decay=1.0)


# --- VAE likelihood and scores ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_vae(digits):
    torch.manual_seed(0)
    model = _tiny("vae", lr=3e-3, score_samples=64)
    _train(model, digits, 80)
    return model


def test_vae_encode_decode(trained_vae, digits):
    z = trained_vae.encode(digits[:6])
    assert z.shape == (6, 4)
    imgs = trained_vae.decode(z)
    assert imgs.shape == (6, 1, 8, 8) and 0 <= imgs.min() and imgs.max() <= 1
    assert (imgs - digits[:6]).abs().mean() < 0.25  # reconstructs, not just any image


def test_vae_nll_is_a_tighter_bound_than_the_elbo(trained_vae, digits):
    x = digits[:200]
    nll = trained_vae.nll(x)  # k = 16
    assert nll.shape == (200,) and torch.isfinite(nll).all() and (nll > 0).all()
    assert torch.equal(nll, trained_vae.nll(x))  # seeded: reproducible
    neg_elbo = trained_vae.score(x)  # score="elbo" with 64 samples: -ELBO
    nll_1 = trained_vae.nll(x, k=1)
    nll_256 = trained_vae.nll(x, k=256)
    # IWAE: E[bound_k] decreases in k, and bound_1 is the ELBO
    assert nll_256.mean() < nll.mean() < neg_elbo.mean()
    assert abs(nll_1.mean() - neg_elbo.mean()) < 0.05 * neg_elbo.mean()
    # the one-sample (recon, kl) terms average to the same -ELBO
    recon, kl = trained_vae.elbo_terms(x, torch.Generator().manual_seed(1))
    assert (kl >= 0).all() and abs((recon + kl).mean() - neg_elbo.mean()) < 0.05 * neg_elbo.mean()


@pytest.mark.parametrize("score", ["elbo", "recon"])
def test_vae_score_flags_anomalies(trained_vae, digits, score):
    model = VAE(VAEConfig.from_dict({**trained_vae.config.to_dict(), "score": score}))
    model.load_state_dict(trained_vae.state_dict())
    normal = digits[:100]
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s_normal, s_noise = model.score(normal), model.score(noise)
    assert s_normal.shape == (100,) and torch.isfinite(s_normal).all()
    assert s_noise.mean() > s_normal.mean() + 3 * s_normal.std()


# --- ONNX -------------------------------------------------------------------------------------
def test_genmodels_import_only_torch():
    code = ("import sys, genmodels.vae, genmodels.dcgan; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not loaded & {"mlflow", "prefect", "onnxruntime", "onnx", "sklearn", "pipelines", "evaluation", "serving"}
