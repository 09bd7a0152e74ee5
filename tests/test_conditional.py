"""cvae, wgan_gp and conditional dcgan: labels in and out, the gradient penalty against closed forms,
n_critic, exact resume, ONNX parity and the ORT sampler matching PyTorch for the same noise.

Tiny configs on scikit-learn's 8x8 digits; the file runs in well under a minute on a CPU.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from genmodels import build_model
from genmodels.cvae import CVAE, CVAEConfig
from genmodels.wgan_gp import WGANGP, WGANGPConfig
from serving.samplers import run_sampler
from tests.conftest import LOOSE_GATE, tiny_params

GAN = dict(image_shape=(1, 8, 8), num_classes=10, latent_dim=8, ngf=8, ndf=8, seed=0)
TINY = {
    "cvae": dict(image_shape=(1, 8, 8), num_classes=10, latent_dim=4, width=8, iwae_k=8, seed=0),
    "cdcgan": ("dcgan", dict(GAN, conditional=True)),
    "wgan_gp": ("wgan_gp", GAN),
    "cwgan_gp": ("wgan_gp", dict(GAN, conditional=True)),
}
CONDITIONAL = ["cvae", "cdcgan", "cwgan_gp"]


def _tiny(name: str, **overrides):
    family, config = TINY[name] if isinstance(TINY[name], tuple) else (name, TINY[name])
    return build_model(family, {**config, **overrides})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1), torch.from_numpy(d.target).long()


def _batches(digits, n: int, size: int = 64, seed: int = 0):
    x, y = digits
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randperm(len(x), generator=g)[:size]
        yield x[idx], y[idx]


# --- contract ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_models_sample_by_label(name):
    model = _tiny(name)
    assert "conditional" in model.capabilities and model.sampler().conditional is True
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    threes = model.sample(4, labels=torch.full((4,), 3), generator=g())
    assert threes.shape == (4, 1, 8, 8) and 0 <= threes.min() and threes.max() <= 1
    sevens = model.sample(4, labels=torch.full((4,), 7), generator=g())
    assert not torch.equal(threes, sevens)  # same noise, other label: other images
    # without labels: every class in turn, as the ORT generator does
    default = model.sample(10, generator=g())
    assert torch.equal(default, model.sample(10, labels=torch.arange(10), generator=g()))
    for bad in (torch.full((4,), 10), torch.full((4,), -1), torch.zeros(3, dtype=torch.long)):
        with pytest.raises(ValueError, match="labels"):
            model.sample(4, labels=bad, generator=g())
    graph = model.onnx_graphs()[0]
    noise = "noise" if getattr(model, "prior", None) is not None else "z"  # the cvae's per-class mixture prior
    assert graph.input_names == [noise, "labels"] and graph.example_inputs[1].dtype == torch.long
    assert model.sampler().noise.name == noise


def test_unconditional_gans_refuse_labels():
    vae = build_model("vae", {"image_shape": (1, 8, 8), "latent_dim": 4, "width": 4})
    with pytest.raises(ValueError, match="unconditional"):
        vae.sample(2, labels=torch.zeros(2, dtype=torch.long))
    for model in (_tiny("wgan_gp"), build_model("dcgan", GAN)):
        assert "conditional" not in model.capabilities and model.sampler().conditional is False
        with pytest.raises(ValueError, match="unconditional"):
            model.sample(2, labels=torch.zeros(2, dtype=torch.long))
    assert WGANGP.capabilities == {"latent"} and CVAE.capabilities >= {"conditional", "nll", "score", "encode"}


@pytest.mark.parametrize("bad", [{"n_critic": 0}, {"gp_weight": -1.0}, {"critic_norm": "batch"},
                                 {"spectral_norm": True}])
def test_wgan_gp_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        WGANGPConfig.from_dict(bad)


def test_conditional_needs_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("dcgan", dict(GAN, conditional=True, num_classes=0))
    with pytest.raises(ValueError, match="num_classes"):
        CVAE(CVAEConfig(num_classes=0))
    with pytest.raises(ValueError, match="labels"):
        _tiny("cvae").fit_step(torch.rand(2, 1, 8, 8), None)


# --- WGAN-GP ------------------------------------------------------------------------------------
class _LinearCritic(nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x, labels=None):
        return x.flatten(1) @ self.w


@pytest.mark.parametrize("norm, expected", [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25), (4.0, 9.0)])
def test_gradient_penalty_matches_the_closed_form(norm, expected):
    model = _tiny("wgan_gp")
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    model.discriminator = _LinearCritic(w / w.norm() * norm)
    real, fake = torch.rand(16, 1, 8, 8), torch.rand(16, 1, 8, 8)
    assert model.gradient_penalty(real, fake, None).item() == pytest.approx(expected, abs=1e-5)


def test_generator_updates_once_every_n_critic_steps(digits):
    torch.manual_seed(0)
    model = _tiny("wgan_gp", n_critic=3)
    # parameters, not buffers: batch-norm statistics of G move with every forward in train mode
    g0 = {k: v.clone() for k, v in model.generator.named_parameters()}
    d0 = {k: v.clone() for k, v in model.discriminator.named_parameters()}
    changed = lambda before, module: any(not torch.equal(v, dict(module.named_parameters())[k])  # noqa: E731
                                         for k, v in before.items())
    batches = list(_batches(digits, 3, 32))
    for x, y in batches[:2]:
        losses = model.fit_step(x, y)
    assert changed(d0, model.discriminator) and not changed(g0, model.generator)
    assert losses["loss_g"] == 0.0 and losses["gp"] >= 0 and int(model.critic_steps) == 2
    losses = model.fit_step(*batches[2])
    assert changed(g0, model.generator) and losses["loss_g"] != 0.0 and int(model.critic_steps) == 3


def test_wgan_gp_critic_learns_to_separate(digits):
    """Critic steps raise the Wasserstein estimate E[D(real)] - E[D(fake)] while the penalty pulls the
    critic's gradient norm towards 1 (from ~0.2 at PyTorch's init)."""
    torch.manual_seed(0)
    model = _tiny("wgan_gp", lr_d=1e-3)
    logs = [model.fit_step(x, y) for x, y in _batches(digits, 60, 64)]
    first, last = logs[:5], logs[-5:]
    assert np.mean([l["wasserstein"] for l in last]) > np.mean([l["wasserstein"] for l in first]) + 0.3
    assert np.mean([l["gp"] for l in last]) < 0.5 * np.mean([l["gp"] for l in first])
    assert all(np.isfinite(list(l.values())).all() for l in logs)


# --- CVAE ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_cvae(digits):
    torch.manual_seed(0)
    model = _tiny("cvae", lr=3e-3)
    for x, y in _batches(digits, 150, 64):
        model.fit_step(x, y)
    return model


def test_cvae_draws_the_requested_digit(trained_cvae, digits):
    """A nearest-class-mean classifier on the real 8x8 digits recognises most samples as the asked class."""
    x, y = digits
    means = torch.stack([x[y == k].flatten(1).mean(0) for k in range(10)])  # 10 x 64
    labels = torch.arange(200) % 10
    samples = trained_cvae.sample(200, labels=labels, generator=torch.Generator().manual_seed(1))
    predicted = torch.cdist(samples.flatten(1), means).argmin(1)
    assert (predicted == labels).float().mean() > 0.7  # chance is 0.1


def test_cvae_label_free_likelihood_and_score(trained_cvae, digits):
    x, y = digits[0][:100], digits[1][:100]
    given_true = trained_cvae.nll(x, labels=y)
    marginal = trained_cvae.nll(x)
    assert torch.equal(marginal, trained_cvae.nll(x))  # seeded: reproducible
    # p(x) = 1/K sum_y p(x|y) >= p(x|y_true)/K, so -log p(x) <= -log p(x|y_true) + log K; both sides are
    # IWAE estimates with their own noise, so it holds on average, not image by image
    assert marginal.mean() <= given_true.mean() + np.log(10)
    assert marginal.mean() > given_true.mean()  # the other labels explain x worse
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s_normal, s_noise = trained_cvae.score(x), trained_cvae.score(noise)
    assert s_noise.mean() > s_normal.mean() + 3 * s_normal.std()
    z = trained_cvae.encode(x[:5], y[:5])
    assert z.shape == (5, 4) and trained_cvae.decode(z, y[:5]).shape == (5, 1, 8, 8)


# --- resume, export, serving ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cvae", "cdcgan", "wgan_gp", "cwgan_gp"])
def test_ort_sampler_reproduces_pytorch_for_the_same_noise(tmp_path, digits, name):
    from serving.export import export_model

    torch.manual_seed(0)
    model = _tiny(name)
    for x, y in _batches(digits, 3, 32):  # trained batch-norm statistics, not the identity ones
        model.fit_step(x, y)
    report = export_model(model, tmp_path / "model")
    assert report["passed"] and report["max_abs_error"] <= 1e-4
    spec = json.loads((tmp_path / "model" / "sampler.json").read_text())
    sessions = {g: ort.InferenceSession(str(tmp_path / "model" / f["file"]), providers=["CPUExecutionProvider"])
                for g, f in spec["graphs"].items()}
    n = 7
    labels = np.arange(n, dtype=np.int64) % 10 if "conditional" in model.capabilities else None
    got = run_sampler(spec, sessions, n, np.random.default_rng(5), labels)
    prior = getattr(model, "prior", None)  # the cvae's per-class mixture: noise of latent_dim + 1 values
    dim = prior.noise_dim if prior is not None else model.config.latent_dim
    z = torch.from_numpy(np.random.default_rng(5).standard_normal((n, dim), dtype=np.float32))
    t_labels = None if labels is None else torch.from_numpy(labels)
    if name == "cvae":
        want = model.decode(prior(z, t_labels) if prior is not None else z, t_labels)
    else:
        want = model.from_noise(z, t_labels)
    assert got.shape == (n, 1, 8, 8)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


# --- through the stages ---------------------------------------------------------------------------


def test_cvae_through_the_stages_and_served_by_label(project, cli):
    """train -> evaluate (conditional accuracy, latent traversal) -> export -> register -> promote, then
    `genforge generate --label` from the registry."""
    from pipelines.evaluate import evaluate
    from pipelines.prepare import prepare
    from pipelines.registry import export, promote, register
    from pipelines.train import train
    from pipelines.validate import validate

    params = tiny_params(*LOOSE_GATE)
    prepare(params, project)
    validate(params, project, project / "data" / "prepared" / "digits")
    train(params, project, "cvae", progress=False)
    evaluate(params, project, "cvae")
    report = json.loads((project / "reports" / "digits" / "cvae" / "metrics.json").read_text())
    assert 0.0 <= report["summary"]["conditional_accuracy"] <= 1.0
    assert report["metrics"]["conditional_accuracy"]["setting"]["labels"] == "every class in turn"
    units = report["metrics"]["latent_traversal"]["value"]
    assert sorted(units) == list(range(4))  # latent 4: every unit, most used first
    assert 0 <= report["summary"]["active_units"] <= 4
    assert (project / "reports" / "digits" / "cvae" / "plots" / "latent_traversal.png").stat().st_size > 0
    assert "nll_nats" in report["summary"] and "anomaly_auroc" in report["summary"]
    export(params, project, "cvae")
    register(params, project, "cvae")
    assert promote(params, project, "cvae")["decision"] == "promoted"

    out = project / "outputs" / "sevens"
    proc = cli(["generate", "digits-cvae@champion", "-n", "12", "--label", "7", "--out", str(out)], project)
    assert proc.returncode == 0, proc.stderr
    shards = sorted((out / "shards").glob("shard-*.npz"))
    labels = np.concatenate([np.load(p)["labels"] for p in shards])
    assert labels.tolist() == [7] * 12
    bad = cli(["generate", "digits-cvae@champion", "-n", "5", "--label", "10", "--out", str(project / "outputs" / "x")],
              project)
    assert bad.returncode != 0 and "outside [0, 10)" in bad.stderr + bad.stdout
    assert not (project / "outputs" / "x").exists()


def test_wgan_gp_trains_and_resumes_its_critic_counter_through_the_trainer(project):
    from pipelines.prepare import prepare
    from pipelines.train import train
    from pipelines.validate import validate

    params = tiny_params()
    prepare(params, project)
    validate(params, project, project / "data" / "prepared" / "digits")
    summary = train(params, project, "wgan_gp", progress=False)
    assert summary["epochs"] == 2 and set(summary["final"]) >= {"loss_d", "loss_g", "gp", "wasserstein"}
    ckpt = torch.load(project / "models" / "digits" / "wgan_gp" / "checkpoints" / "epoch-0001.pt", weights_only=True)
    n_train = json.loads((project / "data" / "prepared" / "digits" / "meta.json").read_text())["counts"]["train"]
    # the critic-step counter is saved with the weights: one per batch of the first epoch
    assert int(ckpt["training_state"]["model"]["critic_steps"]) == -(-n_train // 128)
