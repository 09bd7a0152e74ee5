"""Sampling settings as generate-time options, and the torch/numpy sampling-loop twins.

- The DDIM update and the autoregressive pixel loop exist twice (PyTorch in genmodels, NumPy in
  serving): the same eps / logits and the same noise through both must give the same trajectory.
- DDIM steps/eta are call arguments of DDPM.sample and options of `genforge generate`, recorded in
  sampler.json as defaults, outside the training fingerprint; old config.json files still load.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from contracts.diffusion import alphas_cumprod
from genmodels import build_model
from genmodels.ddim import ddim_sample
from genmodels.ddpm import DDPM
from genmodels.pixelcnn import draw_pixels as draw_pixels_torch
from serving.sampler_autoregressive import draw_pixels as draw_pixels_numpy
from serving.sampler_autoregressive import sample_from_uniforms
from serving.sampler_ddim import ddim_loop
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# DDIM's options (eta): the tests below pin sampler ddim whatever the family's default sampler is
DDPM_TINY = dict(image_shape=(1, 8, 8), base_channels=8, channel_mult=(1, 2), timesteps=50, sample_steps=5,
                 sampler="ddim")


# --- loop twins --------------------------------------------------------------------------------
def _eps(x: np.ndarray, t: int) -> np.ndarray:
    """A stand-in denoiser: any smooth function of (x, t) will do, the same numbers for both loops."""
    return np.tanh(np.float32(0.8) * x + np.float32(0.02 * t)).astype(np.float32)


class _TorchNormals:
    """numpy-rng stand-in whose standard_normal returns torch.randn draws of a generator seeded like the
    torch loop's, so both loops add the same z at every step."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def standard_normal(self, shape, dtype):
        return torch.randn(shape, generator=self.g).numpy().astype(dtype)


@pytest.mark.parametrize("schedule, steps, eta, clip", [("linear", 5, 0.0, True), ("cosine", 7, 0.0, False),
                                                        ("linear", 10, 1.0, True), ("cosine", 3, 0.4, False)])
def test_ddim_torch_and_numpy_loops_agree(schedule, steps, eta, clip):
    acp = alphas_cumprod(schedule, 50)
    x_t = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    seen_torch, seen_numpy = [], []

    def eps_torch(x, t):
        seen_torch.append(x.numpy().copy())
        return torch.from_numpy(_eps(x.numpy(), int(t[0])))

    def eps_numpy(x, t):
        seen_numpy.append(x.copy())
        return _eps(x, t)

    want = ddim_sample(eps_torch, torch.from_numpy(x_t), acp, steps, eta=eta, clip=clip,
                       generator=torch.Generator().manual_seed(5)).numpy()
    got = ddim_loop(eps_numpy, x_t, acp, steps, eta=eta, clip=clip, rng=_TorchNormals(5))
    assert len(seen_torch) == len(seen_numpy) == steps
    for a, b in zip(seen_torch, seen_numpy):  # the whole trajectory, not only the end point
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.abs(want).max() > 0.1


@pytest.mark.parametrize("binary", [True, False])
def test_pixel_draw_rule_twins_agree_exactly(binary):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (64, 2) if binary else (64, 2, 256)).astype(np.float32)
    u = rng.random((64, 2), dtype=np.float32)
    u[:4] = [[0.0, 0.0], [0.5, 0.5], [np.float32(0.99999994)] * 2, [0.25, 0.75]]
    want = draw_pixels_torch(torch.from_numpy(logits), torch.from_numpy(u), binary).numpy()
    assert np.array_equal(draw_pixels_numpy(logits, u, binary), want)


class _StepSession:
    """An ORT-session stand-in that runs one of PixelCNN's torch step modules: the numpy loop, the
    torch network, so only the loops are compared."""

    def __init__(self, module, names):
        self.module, self.names = module, names

    def run(self, _outputs, feeds):
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in self.names))
        return [o.numpy() for o in out]


@pytest.mark.parametrize("pixels", ["binary", "256"])
def test_autoregressive_torch_and_numpy_loops_agree(pixels):
    model = build_model("pixelcnn", dict(image_shape=(1, 6, 5), channels=8, layers=3, head_channels=16,
                                         pixels=pixels)).eval()
    with torch.no_grad():  # an untrained net is nearly uniform: spread the logits so the images vary
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    row, pixel = model._steps()
    sessions = {"row": _StepSession(row, ["x_rows", "v_hist"]), "pixel": _StepSession(pixel, ["cond", "x_left", "h_hist"])}
    u = np.random.default_rng(2).random((3, 1, 6, 5), dtype=np.float32)
    want = model.sample_from_uniforms(torch.from_numpy(u)).numpy()
    got = sample_from_uniforms(model.sampler(), sessions, u, cached=True)
    assert np.array_equal(got, want) and want.std() > 0


# --- DDPM: sampling options are call arguments with model defaults ------------------------------
def _ddpm(**overrides):
    model = build_model("ddpm", {**DDPM_TINY, **overrides})
    with torch.no_grad():  # the output conv is zero-initialised: give the untrained net a non-zero eps
        model.ema.conv_out.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    return model.eval()


def test_ddpm_sample_takes_steps_and_eta_and_defaults_come_from_the_model():
    model = _ddpm()
    default = "ddim"
    assert model.sampling == {"steps": 5, "eta": 0.0, "clip": True, "sampler": default}
    assert "sample_steps" not in model.config.to_dict() and "eta" not in model.config.to_dict()

    def draw(**kw):
        return model.sample(3, generator=torch.Generator().manual_seed(0), **kw)

    base = draw()
    assert torch.equal(base, draw(steps=5, eta=0.0))                      # the defaults, spelt out
    assert not torch.equal(base, draw(steps=2)) and not torch.equal(base, draw(eta=1.0))
    assert model.sampler().sampling_defaults() == {"steps": 5, "eta": 0.0, "clip": True, "sampler": default}
    with pytest.raises(ValueError, match="takes no option 'temperature'"):
        draw(temperature=2.0)
    with pytest.raises(ValueError, match=r"must be an int in \[1, 50\], got 51"):
        draw(steps=51)
    capped = build_model("ddpm", {k: v for k, v in DDPM_TINY.items() if k != "sample_steps"} | {"timesteps": 4})
    assert capped.sampling["steps"] == 4 < DDPM.sampling_options["steps"]  # the family default, capped at T


def test_old_config_json_with_sampling_keys_still_loads(tmp_path):
    from pipelines.train import load_model

    model = _ddpm(eta=0.5, clip=False)
    old = {**model.config.to_dict(), "sample_steps": 4, "eta": 0.5, "clip": False}  # config.json before the split
    (tmp_path / "config.json").write_text(json.dumps({"family": "ddpm", "config": old}))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = load_model(tmp_path)
    # eta > 0 was DDIM's: it keeps sampler ddim whatever the family's default sampler is now
    assert loaded.sampling == {"steps": 4, "eta": 0.5, "clip": False, "sampler": "ddim"} and loaded.config == model.config


def test_fingerprint_ignores_sampling_settings(monkeypatch, tmp_path):
    import pipelines.train as train

    ds = SimpleNamespace(meta={"shape": [1, 8, 8], "num_classes": 10}, sha256="0" * 64)
    monkeypatch.setattr(train, "require_validated", lambda root, path: ds)
    arch = ["model.ddpm.base_channels=8", "model.ddpm.channel_mult=[1, 2]", "model.ddpm.timesteps=50"]
    _, base, _, fp = train.plan_training(tiny_params(*arch), tmp_path, "ddpm")
    _, other, _, fp2 = train.plan_training(tiny_params(*arch, "model.ddpm.sample_steps=7", "model.ddpm.eta=1.0",
                                                       "model.ddpm.clip=false"), tmp_path, "ddpm")
    assert fp == fp2 and other.sampling == {"steps": 7, "eta": 1.0, "clip": False, "sampler": "ddim"} != base.sampling
    _, _, _, fp3 = train.plan_training(tiny_params(*arch, "model.ddpm.base_channels=4"), tmp_path, "ddpm")
    assert fp3 != fp  # the architecture still counts


# --- serving: the generator and `genforge generate` ---------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from serving.export import export_model

    root = tmp_path_factory.mktemp("sampling")
    export_model(_ddpm(), root / "ddpm")
    export_model(build_model("vae", dict(image_shape=(1, 8, 8), latent_dim=4)), root / "vae")
    return root


def _shards(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((out / "shards").iterdir())]


def test_generator_applies_sampling_options_and_records_them(exported, tmp_path):
    from serving.generator import GenerationError, generate

    base = generate(exported / "ddpm", 6, 0, tmp_path / "a", batch_size=4, threads=1)
    spelt = generate(exported / "ddpm", 6, 0, tmp_path / "b", batch_size=4, threads=1, sampling={"steps": 5, "eta": 0})
    fast = generate(exported / "ddpm", 6, 0, tmp_path / "c", batch_size=4, threads=1, sampling={"steps": 2, "eta": 1.0})
    assert base["sampling"] == spelt["sampling"] == {} and fast["sampling"] == {"steps": 2, "eta": 1.0}
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b") != _shards(tmp_path / "c")
    dpm = generate(exported / "ddpm", 6, 0, tmp_path / "d", batch_size=4, threads=1,
                   sampling={"sampler": "dpmpp_2m", "steps": 3})
    assert dpm["sampling"] == {"sampler": "dpmpp_2m", "steps": 3} and _shards(tmp_path / "d") != _shards(tmp_path / "a")
    with pytest.raises(GenerationError, match="eta=1 applies to sampler 'ddim' only"):
        generate(exported / "ddpm", 6, 0, tmp_path / "e", sampling={"sampler": "dpmpp_2m", "eta": 1.0})
    with pytest.raises(GenerationError, match="another generation job .*sampling"):
        generate(exported / "ddpm", 6, 0, tmp_path / "c", batch_size=4, threads=1)
    with pytest.raises(GenerationError) as err:
        generate(exported / "vae", 6, 0, tmp_path / "v", sampling={"steps": 3})
    assert str(err.value) == "sampling options: the direct sampler takes no option 'steps' (its options: none)"
    assert not (tmp_path / "v").exists()


def _register(name: str, folder: Path, tmp_path: Path) -> None:
    from pipelines import tracking

    c = tracking.client()
    exp = c.create_experiment(f"t-{name}", artifact_location=(tmp_path / "artifacts" / name).as_uri())
    run = c.create_run(exp)
    c.log_artifacts(run.info.run_id, str(folder), "genforge_model/onnx")
    c.set_terminated(run.info.run_id)
    c.create_registered_model(name)
    mv = c.create_model_version(name, f"{run.info.artifact_uri}/genforge_model", run_id=run.info.run_id)
    c.set_registered_model_alias(name, "champion", mv.version)


def test_cli_generate_steps_and_eta(exported, project, cli):
    _register("digits-ddpm", exported / "ddpm", project)
    _register("digits-vae", exported / "vae", project)
    out = project / "outputs"
    cli(["generate", "digits-ddpm@champion", "-n", "4", "--out", str(out / "a")], project, check=True)
    cli(["generate", "digits-ddpm@champion", "-n", "4", "--steps", "2", "--eta", "1", "--out", str(out / "b")],
        project, check=True)
    manifest = json.loads((out / "b" / "manifest.json").read_text())
    assert manifest["sampling"] == {"steps": 2, "eta": 1.0} and _shards(out / "a") != _shards(out / "b")
    bad = cli(["generate", "digits-ddpm@champion", "-n", "4", "--sampler", "euler", "--out", str(out / "e")], project)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and not (out / "e").exists()
    assert bad.stderr.strip().splitlines()[-1] == ("error: sampling options: ddim sampler: sampler 'euler' is not "
                                                   "implemented (known: ddim, dpmpp_2m)")
    bad = cli(["generate", "digits-vae@champion", "-n", "4", "--steps", "20", "--out", str(out / "v")], project)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == "error: sampling options: the direct sampler takes no option 'steps' (its options: none)"
