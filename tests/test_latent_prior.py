"""The VAE's ex-post mixture prior (genmodels/latent_prior.py): the fit recovers a known mixture, draws follow
its weights, the untrained prior is exactly N(0, I), the fitted prior travels in the state dict and the
exported graph (ONNX Runtime gives the same images), and models stored before the field load unchanged; the
cvae's per-class form fits each class's codes, draws from each label's mixture and exports it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genmodels.latent_prior import MixturePrior
from genmodels.vae import VAE, VAEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _two_clusters(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (torch.rand(n, generator=g) < 0.3).long()                       # 30 % in cluster 1
    centres = torch.tensor([[-4.0, 0.0], [5.0, 3.0]])
    scales = torch.tensor([[1.0, 0.5], [0.5, 2.0]])
    return centres[k] + scales[k] * torch.randn(n, 2, generator=g)


def test_fit_recovers_a_known_mixture_and_draws_follow_it():
    prior = MixturePrior(2, 2)
    prior.fit(_two_clusters(), seed=0)
    order = prior.means[:, 0].argsort()
    assert prior.weights[order].tolist() == pytest.approx([0.7, 0.3], abs=0.03)
    assert prior.means[order].flatten().tolist() == pytest.approx([-4.0, 0.0, 5.0, 3.0], abs=0.15)
    noise = torch.randn(20000, prior.noise_dim, generator=torch.Generator().manual_seed(1))
    z = prior(noise)
    assert z.shape == (20000, 2)
    right = z[:, 0] > 0.5                                                 # the clusters are far apart on x
    assert float(right.float().mean()) == pytest.approx(float(prior.weights[order[1]]), abs=0.015)
    assert z[right].std(0).tolist() == pytest.approx([0.5, 2.0], rel=0.06)
    assert z[~right].std(0).tolist() == pytest.approx([1.0, 0.5], rel=0.06)


def test_the_unfitted_prior_is_the_standard_normal():
    noise = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(MixturePrior(3, 5)(noise), noise[:, :-1])


def test_fewer_images_than_components_is_a_clear_error():
    with pytest.raises(ValueError, match="5-component mixture prior needs at least 5 training images, got 3"):
        MixturePrior(5, 2).fit(torch.randn(3, 2), seed=0)
    with pytest.raises(ValueError, match="prior_components must be >= 0"):
        VAEConfig(prior_components=-1)


def _fitted_vae(images, components=4, seed=0):
    model = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=3, width=4, prior_components=components, seed=seed))
    torch.manual_seed(seed)  # the trainer's global RNG: the reparameterisation noise of fit_step
    model.fit_step(images[:64])
    model.end_epoch(images, torch.zeros(len(images), dtype=torch.long), epoch=0)
    return model


def test_end_epoch_fits_the_codes_reproducibly_and_the_state_dict_carries_it():
    images = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a, b = _fitted_vae(images), _fitted_vae(images)
    assert not torch.equal(a.prior.means, torch.zeros_like(a.prior.means))
    assert torch.equal(a.prior.means, b.prior.means) and torch.equal(a.prior.scale_tril, b.prior.scale_tril)
    first = a.prior.means.clone()
    for model in (a, b):  # the next epoch's fit starts from this mixture: still the same in both runs
        torch.manual_seed(1)
        model.fit_step(images[64:128])
        model.end_epoch(images, torch.zeros(len(images), dtype=torch.long), epoch=1)
    assert torch.equal(a.prior.means, b.prior.means) and not torch.equal(a.prior.means, first)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    fresh = VAE(a.config)
    assert not torch.equal(fresh.sample(8, generator=g()), a.sample(8, generator=g()))
    fresh.load_state_dict(a.state_dict())
    assert torch.equal(fresh.sample(8, generator=g()), a.sample(8, generator=g()))
    # sampling draws z from the mixture: the first latent's spread is the mixture's, not N(0, 1)'s
    z = a._latent_draw(4000, torch.Generator().manual_seed(0))
    codes = a.encode(images)
    assert float(z[:, 0].mean()) == pytest.approx(float(codes[:, 0].mean()), abs=0.1 * float(codes[:, 0].std()) + 0.02)


def test_the_exported_decoder_draws_from_the_fitted_mixture(tmp_path):
    import onnxruntime as ort

    from serving.export import export_model

    images = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _fitted_vae(images).eval()
    report = export_model(model, tmp_path / "onnx")
    assert report["passed"] and report["max_abs_error"] <= 1e-4
    spec = json.loads((tmp_path / "onnx" / "sampler.json").read_text())
    assert spec["noise"] == {"name": "noise", "shape": [4], "distribution": "normal"}
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    served = sess.run(None, {"noise": noise})[0]
    with torch.no_grad():
        expected = model.decode(model.prior(torch.from_numpy(noise))).numpy()
        plain = model.decode(torch.from_numpy(noise[:, :-1])).numpy()
    assert np.abs(served - expected).max() <= 1e-4
    assert np.abs(served - plain).max() > 1e-2                           # the mixture, not N(0, I)


def test_a_vae_stored_before_the_mixture_prior_loads_as_it_was_trained(tmp_path):
    from pipelines.train import load_model

    old = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=3, width=4, prior_components=0))
    spec = {"family": "vae", "config": old.config.architecture(),
            "training": {k: v for k, v in old.config.training_settings().items() if k != "prior_components"}}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    torch.save(old.state_dict(), tmp_path / "model.pt")
    loaded = load_model(tmp_path)
    assert loaded.prior is None and loaded.config.prior_components == 0
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(loaded.sample(4, generator=g()), old.sample(4, generator=g()))


def test_more_components_than_training_images_stops_before_training(prepared_digits):
    from contracts.errors import GenforgeError
    from pipelines.train import train
    from tests.conftest import tiny_params

    root, _ = prepared_digits
    params = tiny_params("model.vae.prior_components=5000")
    earlier = root / "models" / "digits" / "vae" / "checkpoints" / "epoch-0001.pt"  # another run's checkpoint
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_bytes(b"an earlier run's checkpoint")
    with pytest.raises(GenforgeError, match=r"model\.vae: prior_components 5000: a 5000-component mixture prior needs "
                                            r"at least 5000 training images, the training split has \d+; lower "
                                            r"model\.vae\.prior_components"):
        train(params, root, "vae", progress=False)
    # checked before anything is written or removed: the earlier run's checkpoint is still there, nothing else is
    assert [p.relative_to(root).as_posix() for p in (root / "models").rglob("*") if p.is_file()] == \
        ["models/digits/vae/checkpoints/epoch-0001.pt"]
    earlier.unlink()


# --- the cvae's per-class mixture (ClassMixturePrior) ---------------------------------------------------------

def test_a_class_mixture_fits_each_class_and_draws_from_the_labels_mixture():
    from genmodels.latent_prior import ClassMixturePrior

    a, b = _two_clusters(seed=0), _two_clusters(seed=1) + torch.tensor([20.0, -20.0])  # class 1 far away
    prior = ClassMixturePrior(2, 2, 2)
    prior.fit(torch.cat([a, b]), seed=0, labels=torch.tensor([0] * len(a) + [1] * len(b)))
    for c, shift in ((0, 0.0), (1, 20.0)):
        order = prior.means[c, :, 0].argsort()
        assert prior.weights[c][order].tolist() == pytest.approx([0.7, 0.3], abs=0.03)
        assert prior.means[c][order, 0].tolist() == pytest.approx([-4.0 + shift, 5.0 + shift], abs=0.15)
    noise = torch.randn(4000, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(4000) % 2
    z = prior(noise, labels)
    assert bool((z[labels == 1, 0] > 10).all()) and bool((z[labels == 0, 0] < 10).all())
    assert float((z[labels == 0, 0] > 0.5).float().mean()) == pytest.approx(0.3, abs=0.04)
    # the same noise and labels give the same z; another class's label moves only its rows
    assert torch.equal(prior(noise, labels), z)
    assert torch.equal(prior(noise, torch.zeros_like(labels))[labels == 0], z[labels == 0])


def test_a_class_mixture_is_the_standard_normal_until_fitted_and_needs_labels():
    from genmodels.latent_prior import ClassMixturePrior

    prior = ClassMixturePrior(10, 3, 4)
    noise = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior(noise, torch.arange(32) % 10), noise[:, :-1])
    with pytest.raises(ValueError, match="needs the labels"):
        prior(noise)
    with pytest.raises(ValueError, match="got no labels"):
        prior.fit(torch.randn(50, 4), seed=0)
    with pytest.raises(ValueError, match="3-component mixture prior per class needs at least 3 training images of "
                                         "each class, class 9 has 2"):
        prior.fit(torch.randn(92, 4), seed=0, labels=torch.tensor([c for c in range(10) for _ in range(10)][:92]))


def _fitted_cvae(images, labels, components=2):
    from genmodels.cvae import CVAE, CVAEConfig

    model = CVAE(CVAEConfig(image_shape=(1, 8, 8), latent_dim=3, width=4, num_classes=3, prior_components=components))
    torch.manual_seed(0)
    model.fit_step(images[:64], labels[:64])
    model.end_epoch(images, labels, epoch=0)
    return model


def test_the_cvae_samples_each_label_from_its_class_mixture_and_exports_it(tmp_path):
    import onnxruntime as ort

    from serving.export import export_model

    images = torch.rand(240, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(240) % 3
    model = _fitted_cvae(images, labels).eval()
    assert model.prior.means.shape == (3, 2, 3) and not torch.equal(model.prior.means[0], model.prior.means[1])
    # the class's mixture sits on that class's codes
    codes = model.encode(images, labels)
    for c in range(3):
        z = model._latent_draw(3000, torch.Generator().manual_seed(c), torch.full((3000,), c))
        assert z.mean(0).tolist() == pytest.approx(codes[labels == c].mean(0).tolist(), abs=0.15)
    report = export_model(model, tmp_path / "onnx")
    assert report["passed"] and report["max_abs_error"] <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    asked = np.arange(256) % 3
    served = sess.run(None, {"noise": noise, "labels": asked.astype(np.int64)})[0]
    with torch.no_grad():
        t_noise, t_labels = torch.from_numpy(noise), torch.from_numpy(asked)
        expected = model.decode(model.prior(t_noise, t_labels), t_labels).numpy()
        one_mixture = model.decode(model.prior(t_noise, torch.zeros_like(t_labels)), t_labels).numpy()
    assert np.abs(served - expected).max() <= 1e-4
    assert np.abs(served - one_mixture)[asked != 0].max() > 1e-3           # each label's own mixture


def test_a_class_with_fewer_images_than_components_stops_the_cvae_before_training(prepared_digits):
    from contracts.errors import GenforgeError
    from pipelines.train import train
    from tests.conftest import tiny_params

    root, _ = prepared_digits
    with pytest.raises(GenforgeError, match=r"model\.cvae: prior_components 500: a 500-component mixture prior per "
                                            r"class needs at least 500 training images of each class, class \d has "
                                            r"\d+; lower model\.cvae\.prior_components"):
        train(tiny_params("model.cvae.prior_components=500"), root, "cvae", progress=False)
    assert not (root / "models" / "digits" / "cvae").exists()
