"""The model contract, one suite for every family (diffusers' ``SchedulerCommonTest`` pattern).

``FamilyContract`` holds the tests every family must pass; each family subclasses it with a tiny config.
Family test files keep only their own math. A toy family defined here, registered with one line, passes
the same suite and runs through `genforge run` on the 8x8 digits: the proof that the contracts are enough
to add a family without touching any stage, flow, registry or serving code.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from genmodels import FAMILIES, GenerativeModel, ModelConfig, OnnxGraph, build_model, get_family
from genmodels.base import training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- a toy family, defined here ------------------------------------------------------------------
@dataclass
class ToyGaussianConfig(ModelConfig):
    lr: float = training(0.05)
    epochs: int = training(2)
    batch_size: int = training(64)


class _ToyGenerator(nn.Module):
    def __init__(self, mu: nn.Parameter, log_sigma: nn.Parameter):
        super().__init__()
        self.mu, self.log_sigma = mu, log_sigma

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # N x C x H x W noise -> images in [0, 1]
        return (self.mu + self.log_sigma.exp() * z).clamp(0.0, 1.0)


class ToyGaussian(GenerativeModel):
    """A diagonal Gaussian over pixels: x ~ N(mu, diag(sigma^2)), clipped to [0, 1]. Exact NLL (nats, of
    the unclipped continuous density), a one-graph direct sampler."""

    family: ClassVar[str] = "toy"
    config_class: ClassVar[type[ModelConfig]] = ToyGaussianConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"nll", "score"})

    def __init__(self, config: ToyGaussianConfig):
        super().__init__(config)
        g = torch.Generator().manual_seed(config.seed)
        shape = config.data.shape
        self.mu = nn.Parameter(0.5 + 0.01 * torch.randn(shape, generator=g))
        self.log_sigma = nn.Parameter(torch.full(shape, -1.0))
        self._opt = torch.optim.Adam(self.parameters(), lr=config.lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self._opt}

    def nll(self, x: torch.Tensor) -> torch.Tensor:  # N nats
        var = (2 * self.log_sigma).exp()
        per = 0.5 * ((x - self.mu) ** 2 / var + 2 * self.log_sigma + np.log(2 * np.pi))
        return per.flatten(1).sum(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.nll(x)

    def fit_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        self.train()
        loss = self.nll(x.to(self.mu.device)).mean()
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None):
        if labels is not None:
            raise ValueError("toy is unconditional: labels are not taken")
        z = torch.randn((n, *self.config.data.shape), generator=generator, device=self.mu.device)
        return _ToyGenerator(self.mu, self.log_sigma)(z)

    def onnx_graphs(self) -> list[OnnxGraph]:
        gen = _ToyGenerator(self.mu, self.log_sigma).eval()
        return [OnnxGraph("generator", gen, (torch.zeros(2, *self.config.data.shape),), ["z"], ["images"],
                          {"z": {0: "batch"}, "images": {0: "batch"}})]

    def sampler(self) -> dict[str, Any]:
        return {"kind": "direct", "graph": "generator", "conditional": False,
                "noise": {"name": "z", "shape": list(self.config.data.shape), "distribution": "normal"}}


TOY = "tests.test_family_contract:ToyGaussian"  # what genmodels.FAMILIES gets: the one line that registers it


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", TOY)
    yield "toy"


# --- the contract ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32) / 16.0  # 1797 x 8 x 8 in [0, 1]
    return torch.from_numpy(x).unsqueeze(1)


def _batches(x: torch.Tensor, n: int, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [x[torch.randperm(len(x), generator=g)[:size]] for _ in range(n)]


class FamilyContract:
    """Every family: subclass with ``family`` and a tiny ``config`` for 1 x 8 x 8 images, 10 classes."""

    family: ClassVar[str]
    config: ClassVar[dict[str, Any]]
    module_path: ClassVar[str | None] = None  # for families registered by the test itself
    pyfunc_round_trip: ClassVar[bool] = False  # one family per sampler kind: registered and loaded as MLflow pyfunc

    @pytest.fixture(autouse=True, scope="class")
    def _registered(self):
        if self.module_path:
            FAMILIES[self.family] = self.module_path
        yield
        if self.module_path:
            FAMILIES.pop(self.family, None)

    def build(self, **overrides) -> GenerativeModel:
        return build_model(self.family, {"image_shape": (1, 8, 8), "num_classes": 10, "seed": 0,
                                         **self.config, **overrides})

    def labels(self, model, n: int) -> torch.Tensor | None:
        return torch.arange(n) % 10 if "conditional" in model.capabilities else None

    def fit(self, model, xs) -> list[dict[str, float]]:
        return [model.fit_step(x, torch.arange(len(x)) % 10) for x in xs]

    # builds and declares what it is
    def test_builds_for_the_data_spec(self):
        model = self.build()
        assert model.family == self.family and get_family(self.family) is type(model)
        assert model.config.data.shape == (1, 8, 8) and model.config.num_classes == 10
        assert "image" in model.modalities
        assert model.capabilities <= {"conditional", "score", "nll", "encode", "decode", "latent"}

    def test_refuses_data_of_another_modality(self):
        from contracts.data import DataSpec

        tokens = DataSpec(modality="tokens", shape=(16,), dtype="int32", value_range=(0, 9), num_classes=2,
                          vocab=tuple("abcdefghij"))
        if "tokens" in get_family(self.family).modalities:
            pytest.skip("this family models tokens")
        with pytest.raises(ValueError, match="tokens"):
            build_model(self.family, {**self.config, "data": tokens})

    def test_samples_have_the_shape_and_range_and_follow_the_seed(self):
        model = self.build().eval()
        n = 6
        a = model.sample(n, labels=self.labels(model, n), generator=torch.Generator().manual_seed(1))
        b = model.sample(n, labels=self.labels(model, n), generator=torch.Generator().manual_seed(1))
        assert a.shape == (n, 1, 8, 8) and a.dtype == torch.float32
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        assert torch.equal(a, b)

    def test_config_round_trips_through_json(self):
        model = self.build()
        again = type(model.config).from_dict(json.loads(json.dumps(model.config.to_dict())))
        assert again == model.config
        # evaluation fields never enter the training fingerprint; architecture and training ones do
        assert set(model.config.fingerprint_fields()).isdisjoint(model.config.evaluation_settings())

    def test_fit_step_returns_finite_losses_and_changes_the_weights(self, digits):
        torch.manual_seed(0)
        model = self.build()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        losses = self.fit(model, _batches(digits, 2))
        assert all(np.isfinite(v) for step in losses for v in step.values())
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    def test_checkpoint_round_trip_and_bit_identical_resume(self, digits):
        xs = _batches(digits, 3)
        torch.manual_seed(1234)
        straight = self.build()
        self.fit(straight, xs)

        torch.manual_seed(1234)
        first = self.build()
        self.fit(first, xs[:1])
        buf = io.BytesIO()
        torch.save({"state": first.training_state(), "rng": torch.get_rng_state()}, buf)
        buf.seek(0)
        saved = torch.load(buf, weights_only=True)  # plain tensors and types only

        torch.manual_seed(999)
        resumed = self.build(seed=77)  # weights and RNG must come from the checkpoint
        resumed.load_training_state(saved["state"])
        torch.set_rng_state(saved["rng"])
        self.fit(resumed, xs[1:])
        a, b = straight.state_dict(), resumed.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k

    @pytest.fixture(scope="class")
    def exported(self, tmp_path_factory, digits):
        from serving.export import export_model

        torch.manual_seed(0)
        model = self.build()
        self.fit(model, _batches(digits, 2))
        out = tmp_path_factory.mktemp(f"export-{self.family}") / "onnx"
        report = export_model(model.eval(), out)
        return model, out, report

    def test_onnx_export_passes_parity(self, exported):
        _, out, report = exported
        assert report["passed"] and report["max_abs_error"] <= 1e-4
        spec = json.loads((out / "sampler.json").read_text())
        assert spec["kind"] and spec["graphs"]

    def test_serving_from_the_registry(self, exported, tmp_path, monkeypatch):
        """The export registered as register does it (an MLflow model, logged as a LoggedModel): `genforge
        generate`'s path serves it, and its pyfunc predicts the same samples; the families that stand for a
        sampler kind (``pyfunc_round_trip``) go through ``mlflow.pyfunc.load_model("models:/...@champion")``,
        the others through the same wrapper on the fetched folder."""
        import sys

        from pipelines import tracking
        from pipelines.mlmodel import log_model
        from serving.generator import generate, iter_samples
        from serving.pyfunc import OnnxSampler
        from serving.resolve import fetch_onnx, resolve

        _, out, _ = exported
        c = tracking.client()
        name = f"contract-{self.family}"
        run_id = c.create_run(c.create_experiment(name, (tmp_path / "artifacts").as_uri())).info.run_id
        if self.pyfunc_round_trip:
            model_id = log_model(c, run_id, name, out, [], "contract", {"family": self.family}, {})
            source = f"models:/{model_id}"
        else:  # the layout every version had before MLmodel sources: a folder holding onnx/
            source = str(out.parent)
        c.create_registered_model(name)
        mv = c.create_model_version(name, source=source, run_id=run_id, tags={"family": self.family})
        c.set_registered_model_alias(name, "champion", mv.version)
        resolved = resolve(c, f"{name}@champion")
        local = fetch_onnx(resolved, tmp_path / "cache")
        generate(local, 10, 0, tmp_path / "gen", batch_size=4)
        images = np.concatenate([x for x, _ in iter_samples(tmp_path / "gen")])
        assert images.shape == (10, 1, 8, 8) and images.dtype == np.uint8
        request = {"n": 10, "seed": 0, "batch_size": 4}
        if self.pyfunc_round_trip:
            import mlflow.pyfunc

            monkeypatch.setattr(sys, "path", list(sys.path))  # load_model puts the model's code/ first
            predicted = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(request)
        else:
            predicted = OnnxSampler(local).predict(request)
        assert predicted.dtype == np.uint8 and np.array_equal(predicted, images)

    def test_a_bad_sampler_spec_is_refused_before_anything_is_written(self, exported, tmp_path):
        import shutil

        from serving.generator import GenerationError, generate

        _, out, _ = exported
        broken = tmp_path / "broken"
        shutil.copytree(out, broken)
        spec = json.loads((broken / "sampler.json").read_text())
        spec["graph" if "graph" in spec else "kind"] = "no-such-graph"
        (broken / "sampler.json").write_text(json.dumps(spec))
        with pytest.raises(GenerationError):
            generate(broken, 4, 0, tmp_path / "gen", batch_size=4)
        assert not (tmp_path / "gen" / "manifest.json").exists()


# --- every registered family ---------------------------------------------------------------------
class TestVAE(FamilyContract):
    family, config = "vae", dict(latent_dim=4, width=4, iwae_k=4, score_samples=2)


class TestVAEGaussian(FamilyContract):
    family, config = "vae", dict(latent_dim=4, width=4, iwae_k=4, score_samples=2, likelihood="gaussian")


class TestCVAE(FamilyContract):
    family, config = "cvae", dict(latent_dim=4, width=4, iwae_k=4, score_samples=2)
    pyfunc_round_trip = True  # direct (conditional)


class TestDCGAN(FamilyContract):
    family, config = "dcgan", dict(latent_dim=8, ngf=8, ndf=8)


class TestDCGANSpectralNorm(FamilyContract):
    family, config = "dcgan", dict(latent_dim=8, ngf=8, ndf=8, spectral_norm=True)


class TestConditionalDCGAN(FamilyContract):
    family, config = "dcgan", dict(latent_dim=8, ngf=8, ndf=8, conditional=True)


class TestWGANGP(FamilyContract):
    family, config = "wgan_gp", dict(latent_dim=8, ngf=8, ndf=8, n_critic=2)


class TestConditionalWGANGP(FamilyContract):
    family, config = "wgan_gp", dict(latent_dim=8, ngf=8, ndf=8, n_critic=2, conditional=True)


class TestDDPM(FamilyContract):
    family, config = "ddpm", dict(base_channels=8, channel_mult=(1, 2), timesteps=20, steps=4)
    pyfunc_round_trip = True  # ddim


class TestPixelCNN(FamilyContract):
    family, config = "pixelcnn", dict(channels=8, layers=3, head_channels=16)
    pyfunc_round_trip = True  # autoregressive


class TestPixelCNN256(FamilyContract):
    family, config = "pixelcnn", dict(channels=8, layers=3, head_channels=16, pixels="256")


class TestRealNVP(FamilyContract):
    family, config = "realnvp", dict(hidden=8, blocks=1, scales=2)
    pyfunc_round_trip = True  # flow


class TestToyFamily(FamilyContract):
    family, config, module_path = "toy", {}, TOY


# --- the text families (tokens modality) -----------------------------------------------------------
class TokenContract(FamilyContract):
    """The same suite on token data (tests/text_helpers.py: census names, 3 classes, T = 12): samples are
    int64 ids N x T in the stored layout, and the family refuses images."""

    def build(self, **overrides) -> GenerativeModel:
        from tests.text_helpers import names_tokens

        return build_model(self.family, {"data": names_tokens()[0], "seed": 0, **self.config, **overrides})

    @pytest.fixture(scope="class")
    def digits(self) -> torch.Tensor:  # the training batches of this suite: token ids
        from tests.text_helpers import names_tokens

        return torch.from_numpy(names_tokens()[1])

    def labels(self, model, n: int) -> torch.Tensor | None:
        return torch.arange(n) % 3

    def fit(self, model, xs) -> list[dict[str, float]]:
        return [model.fit_step(x, torch.arange(len(x)) % 3) for x in xs]

    def test_builds_for_the_data_spec(self):
        model = self.build()
        assert model.family == self.family and get_family(self.family) is type(model)
        assert model.config.data.modality == "tokens" and model.config.data.shape == (12,)
        assert model.capabilities >= {"nll", "score", "conditional"}

    def test_refuses_data_of_another_modality(self):
        with pytest.raises(ValueError, match="image"):
            build_model(self.family, {**self.config, "image_shape": (1, 8, 8), "num_classes": 10})

    def test_samples_have_the_shape_and_range_and_follow_the_seed(self):
        from contracts.modalities.tokens import BOS, EOS, PAD

        model = self.build().eval()
        n = 6
        a = model.sample(n, labels=self.labels(model, n), generator=torch.Generator().manual_seed(1))
        b = model.sample(n, labels=self.labels(model, n), generator=torch.Generator().manual_seed(1))
        assert a.shape == (n, 12) and a.dtype == torch.int64 and torch.equal(a, b)
        assert (a[:, 0] == BOS).all() and int(a.min()) >= 0 and int(a.max()) < model.vocab_size
        for row in a.tolist():  # <bos>, tokens, one <eos> (forced at max_len at the latest), then <pad>
            end = row.index(EOS)
            assert BOS not in row[1:] and PAD not in row[:end] and set(row[end + 1:]) <= {PAD}

    def _modality_registered(self):
        from contracts.modalities import MODALITIES

        if "tokens" not in MODALITIES:
            pytest.skip("the tokens modality is not registered yet (shards and previews: the tdata work)")

    def test_serving_from_the_registry(self, exported, tmp_path, monkeypatch):
        self._modality_registered()
        from serving.generator import generate

        _, out, _ = exported
        manifest = generate(out, 10, 0, tmp_path / "gen", batch_size=4)
        assert sum(s["count"] for s in manifest["shards"]) == 10

    def test_a_bad_sampler_spec_is_refused_before_anything_is_written(self, exported, tmp_path):
        self._modality_registered()
        super().test_a_bad_sampler_spec_is_refused_before_anything_is_written(exported, tmp_path)


class TestGPT(TokenContract):
    family, config = "gpt", dict(layers=2, heads=2, embed=16, warmup_steps=1)


class TestLSTM(TokenContract):
    family, config = "lstm", dict(layers=2, hidden=16, embed=8)


class TestBigram(TokenContract):
    family, config = "bigram", dict(alpha=0.5)


def _contract_classes(cls=FamilyContract):
    for sub in cls.__subclasses__():
        yield sub
        yield from _contract_classes(sub)


def test_every_registered_family_has_a_contract_test():
    covered = {cls.family for cls in _contract_classes() if hasattr(cls, "family")}
    assert set(FAMILIES) - {"toy"} <= covered


def test_an_incomplete_family_fails_when_it_is_built():
    class NoSample(GenerativeModel):
        family = "nosample"

        def optimizers(self):
            return {}

        def fit_step(self, x, y=None):
            return {}

        def onnx_graphs(self):
            return []

        def sampler(self):
            return {"kind": "direct"}

    with pytest.raises(TypeError, match="sample"):
        NoSample(ModelConfig())


def test_the_toy_family_runs_through_genforge_run_on_digits(project, toy_registered, monkeypatch, capsys):
    """`genforge run` (in this process, so the one-line registration holds) on the 8x8 digits: prepare,
    validate, train, evaluate, export, register, promote and generate, with no code outside this file."""
    import sys

    from pipelines import cli, tracking
    from tests.conftest import LOOSE_GATE, tiny_args

    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["genforge", "run", *tiny_args(*LOOSE_GATE, "model.families=[toy]"),
                                      "--samples", "50"])
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (None, 0), capsys.readouterr().err
    champion = tracking.client().get_model_version_by_alias("digits-toy", "champion")
    assert champion.tags["family"] == "toy"
    metrics = json.loads((project / "reports" / "digits" / "toy" / "metrics.json").read_text())["summary"]
    assert "fid" in metrics and "nll_nats" in metrics
    manifest = json.loads((project / "outputs" / "digits-toy" / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["count"] for s in manifest["shards"]) == 50
