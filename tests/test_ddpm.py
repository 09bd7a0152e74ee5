"""Family "ddpm" and sampler kind "ddim": contract, training, resume, export, NumPy/PyTorch DDIM agreement.

Tiny configs (8x8, 8 channels, T = 50, 5 DDIM steps) on scikit-learn's 8x8 digits: seconds on a CPU.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from genmodels import build_model, get_family
from genmodels.ddim import alphas_cumprod, ddim_timesteps
from genmodels.ddpm import DDPM, DDPMConfig
from serving import sampler_ddim
from serving.samplers import SAMPLERS, SamplerSpecError, check_sessions, check_spec, run_sampler

REPO = Path(__file__).resolve().parent.parent
TINY = dict(image_shape=(1, 8, 8), base_channels=8, channel_mult=(1, 2), timesteps=50, sample_steps=5, sampler="ddim",
            warmup_steps=5, lr=3e-3, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits
    x = load_digits().images.astype(np.float32) / 16.0  # 1797 x 8 x 8 in [0, 1]
    return torch.from_numpy(x).unsqueeze(1)


def _tiny(**overrides) -> DDPM:
    return build_model("ddpm", {**TINY, **overrides})


def _train(model: DDPM, x: torch.Tensor, steps: int, seed: int = 0, size: int = 64) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        xb = x[torch.randperm(len(x), generator=g)[:size]]
        out.append(model.fit_step(xb, torch.zeros(len(xb), dtype=torch.long))["loss"])
    return out


@pytest.fixture(scope="module")
def trained(digits) -> DDPM:
    torch.manual_seed(0)
    model = _tiny()
    _train(model, digits, 30)
    return model


def _sessions(folder: Path) -> tuple[dict, dict]:
    spec = json.loads((folder / "sampler.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = {name: ort.InferenceSession(str(folder / g["file"]), opts, providers=["CPUExecutionProvider"])
                for name, g in spec["graphs"].items()}
    return spec, sessions


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    from serving.export import export_model
    folder = tmp_path_factory.mktemp("ddpm") / "model"
    report = export_model(trained, folder)
    assert report["passed"] and report["max_abs_error"] <= 1e-4
    return folder


# --- contract ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_builds_and_samples_in_range(shape):
    model = _tiny(image_shape=shape)
    assert get_family("ddpm") is DDPM and model.family == "ddpm" and model.capabilities == frozenset()
    imgs = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (3, *shape) and imgs.dtype == torch.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0 and imgs.std() > 0
    spec = model.sampler().to_json()
    assert spec["kind"] == "ddim" and spec["graph"] == "denoiser" and spec["conditional"] is False
    assert spec["noise"] == {"name": "x", "shape": list(shape), "distribution": "normal"}
    assert spec["timesteps"] == 50 == len(spec["alphas_cumprod"]) and spec["sample_steps"] == 5
    assert spec["eta"] == 0.0 and spec["clip"] is True
    json.dumps(spec, allow_nan=False)  # sampler.json material
    (g,) = model.onnx_graphs()
    assert g.name == "denoiser" and g.input_names == ["x", "t"] and g.output_names == ["eps"]
    assert g.example_inputs[1].dtype == torch.int64 and g.example_inputs[1].tolist() == [0, 49]
    assert tuple(g.module(*g.example_inputs).shape) == (2, *shape)


def test_default_config_is_mnist_sized_and_config_round_trips():
    model = build_model("ddpm", {})
    cfg = model.config
    assert cfg.image_shape == (1, 28, 28) and cfg.timesteps == 1000
    # the measured default (benchmarks/ddpm_steps.py): DPM-Solver++(2M), 10 steps
    assert model.sampling == {"steps": 10, "eta": 0.0, "clip": True, "sampler": "dpmpp_2m"}
    again = DDPMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.channel_mult, tuple)
    # EMA weights are part of the state dict (so of every checkpoint), and are not trained directly
    keys = model.state_dict().keys()
    assert any(k.startswith("ema.") for k in keys) and "step" in keys
    assert not any(p.requires_grad for p in model.ema.parameters())


@pytest.mark.parametrize("bad", [dict(schedule="quadratic"), dict(sample_steps=0), dict(sample_steps=51),
                                 dict(image_shape=(1, 28, 28), channel_mult=(1, 2, 2, 2)), dict(ema_decay=1.0),
                                 dict(base_channels=0), dict(bogus=1)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        _tiny(**bad)


def test_schedules_and_timesteps():
    for schedule in ("linear", "cosine"):
        acp = np.array(alphas_cumprod(schedule, 1000))
        assert acp.shape == (1000,) and np.all(np.diff(acp) < 0) and 0 < acp[-1] < 1e-3 and acp[0] > 0.99
    assert alphas_cumprod("linear", 1000)[-1] == pytest.approx(4.04e-5, rel=0.01)  # DDPM's schedule
    for T, S in [(1000, 50), (1000, 1000), (50, 5), (50, 7), (10, 1), (1000, 3)]:
        seq = ddim_timesteps(T, S)
        assert seq == sampler_ddim.ddim_timesteps(T, S)  # serving's copy agrees
        assert len(seq) == S and seq[0] == T - 1 and seq[-1] >= 0 and all(a > b for a, b in zip(seq, seq[1:]))
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))


# --- training ---------------------------------------------------------------------------------
def test_fit_step_loss_decreases_and_updates_ema(digits):
    torch.manual_seed(0)
    model = _tiny()
    losses = _train(model, digits, 40)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses
    assert int(model.step) == 40
    diff = max((p - q).abs().max().item() for p, q in zip(model.unet.parameters(), model.ema.parameters()))
    assert diff > 0  # the EMA lags the trained weights


def test_same_seed_same_samples(trained):
    a = trained.sample(4, generator=torch.Generator().manual_seed(1))
    b = trained.sample(4, generator=torch.Generator().manual_seed(1))
    c = trained.sample(4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # construction is seeded too, and never touches the global RNG
    state = torch.get_rng_state()
    m1, m2 = _tiny(), _tiny()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))


# --- export and serving -----------------------------------------------------------------------
def test_export_writes_ddim_sampler_json(exported, trained):
    spec = json.loads((exported / "sampler.json").read_text())
    assert spec["kind"] == "ddim" and spec["family"] == "ddpm" and spec["graphs"]["denoiser"]["inputs"] == ["x", "t"]
    assert spec["alphas_cumprod"] == list(trained.sampler().alphas_cumprod)
    parity = json.loads((exported / "parity.json").read_text())
    assert parity["passed"] and parity["graphs"]["denoiser"]["max_abs_error"] <= 1e-4
    # a dynamic batch: the graph runs at a batch size it was never exported or checked at
    _, sessions = _sessions(exported)
    eps = sessions["denoiser"].run(None, {"x": np.zeros((5, 1, 8, 8), np.float32), "t": np.arange(5)})[0]
    assert eps.shape == (5, 1, 8, 8) and np.abs(eps).max() > 0


@pytest.mark.parametrize("overrides", [{}, {"schedule": "cosine", "clip": False, "sample_steps": 7}])
def test_numpy_ddim_matches_pytorch(exported, trained, tmp_path, overrides):
    if overrides:  # another schedule / clipping / step count: same weights, re-exported
        from serving.export import export_model
        model = _tiny(**overrides)
        model.load_state_dict(trained.state_dict())
        folder = tmp_path / "m"
        export_model(model, folder)
    else:
        model, folder = trained, exported
    spec, sessions = _sessions(folder)
    check_sessions(spec, sessions)
    n = 6
    x_T = np.random.default_rng(3).standard_normal((n, 1, 8, 8), dtype=np.float32)
    got = run_sampler(spec, sessions, n, np.random.default_rng(3))  # draws the same x_T from the same rng
    want = model.denoise_from(torch.from_numpy(x_T)).numpy()
    assert got.shape == want.shape == (n, 1, 8, 8) and got.dtype == np.float32
    assert 0 <= got.min() and got.max() <= 1 and want.std() > 0.05
    assert np.abs(got - want).max() <= 1e-3


def test_numpy_ddim_eta_and_spec_checks(exported):
    spec, sessions = _sessions(exported)
    noisy = {**spec, "eta": 1.0}
    a = run_sampler(noisy, sessions, 3, np.random.default_rng(0))
    b = run_sampler(noisy, sessions, 3, np.random.default_rng(0))
    assert np.array_equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not np.array_equal(a, run_sampler(spec, sessions, 3, np.random.default_rng(0)))
    assert "ddim" in SAMPLERS
    names = set(sessions)
    for bad in ({"sample_steps": 0}, {"sample_steps": 51}, {"alphas_cumprod": []}, {"alphas_cumprod": [0.5, 0.9]},
                {"timesteps": 49}, {"eta": -1}, {"prediction": "v"}, {"timestep_spacing": "leading"},
                {"clip": "yes"}, {"graph": "nope"}):
        with pytest.raises(SamplerSpecError):
            check_spec({**spec, **bad}, names)
    with pytest.raises(SamplerSpecError, match="inputs"):
        check_sessions({**spec, "timestep_input": "time"}, sessions)


def test_generate_from_exported_folder_is_torch_free(exported, tmp_path):
    code = ("import sys, json\n"
            "import serving.generator as g\n"
            "assert 'torch' not in sys.modules, 'import'\n"
            f"m = g.generate({str(exported)!r}, 10, 0, {str(tmp_path / 'g')!r}, batch_size=4, threads=1)\n"
            "assert 'torch' not in sys.modules, 'generate'\n"
            "print(json.dumps({'sampler': m['sampler'], 'complete': m['complete'], 'shards': len(m['shards'])}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"sampler": "ddim", "complete": True, "shards": 3}
    from serving.generator import generate, iter_samples
    images = np.concatenate([im for im, _ in iter_samples(tmp_path / "g")])
    assert images.shape == (10, 1, 8, 8) and images.dtype == np.uint8 and images.std() > 0
    again = generate(exported, 10, 0, tmp_path / "g2", batch_size=4, threads=1)  # same job -> same bytes
    first = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in first["shards"]]
