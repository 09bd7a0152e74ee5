"""Conditional ddpm (``model.ddpm.conditional: true``) with classifier-free guidance.

Label dropout to the null class in training, the exported (x, t, labels) denoiser's parity, the ORT
guided loop (one call of 2N) against the PyTorch one for DDIM and DPM-Solver++, user errors, and (slow)
the whole chain: train, evaluate with conditional accuracy, gate, export, register, promote, then
`genforge generate --label 7 --guidance-scale 3`. Tiny configs on scikit-learn's 8x8 digits.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from genmodels import build_model
from genmodels.ddpm import DDPM
from serving.samplers import check_sessions, run_sampler
from tests.conftest import LOOSE_GATE, tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(image_shape=(1, 8, 8), base_channels=8, channel_mult=(1, 2), timesteps=50, sample_steps=4,
            num_classes=10, conditional=True, seed=0)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1), torch.from_numpy(d.target).long()


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = build_model("ddpm", TINY)
    x, y = digits
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        idx = torch.randperm(len(x), generator=g)[:64]
        model.fit_step(x[idx], y[idx])
    with torch.no_grad():  # zero-initialised convs hide the label after a few steps: spread the EMA weights
        for i, p in enumerate(model.ema.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.1)
    return model.eval()


def test_conditional_ddpm_contract_and_label_dropout():
    model = build_model("ddpm", {**TINY, "label_dropout": 0.3})
    assert "conditional" in model.capabilities and model.sampling["guidance_scale"] == model.DEFAULT_GUIDANCE
    spec = model.sampler()
    assert spec.conditional and spec.labels_input == "labels" and spec.null_label == 10
    assert spec.to_json()["guidance_scale"] == model.DEFAULT_GUIDANCE
    assert spec.to_json()["guidance_min_t"] == int(model.DEFAULT_GUIDANCE_MIN_T * 50) == 10
    assert build_model("ddpm", {k: v for k, v in TINY.items() if k != "conditional"}).sampler().to_json().keys() \
        .isdisjoint({"labels_input", "null_label", "guidance_scale", "guidance_min_t"})
    # a conditional version saved before the guidance interval (no guidance_min_t) guides every step, as it did
    old = DDPM.from_config({k: v for k, v in TINY.items() if k != "sample_steps"},
                           {"steps": 4, "eta": 0.0, "clip": True, "sampler": "dpmpp_2m", "guidance_scale": 5.0})
    assert old.sampling["guidance_min_t"] == 0 and old.sampler().guidance_min_t == 0
    torch.manual_seed(0)
    y = torch.arange(4000) % 10
    dropped = model._train_labels(y, 4000)
    null = dropped == 10
    assert 0.27 < null.float().mean() < 0.33  # ~label_dropout of the labels become the null class
    assert torch.equal(dropped[~null], y[~null])
    (g,) = model.onnx_graphs()
    assert g.input_names == ["x", "t", "labels"] and g.example_inputs[2].tolist() == [0, 10]  # null included
    with pytest.raises(ValueError, match="labelled data"):
        model.fit_step(torch.rand(2, 1, 8, 8), None)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("ddpm", {**TINY, "num_classes": 0})
    with pytest.raises(ValueError, match="guidance_scale must be a number >= 0"):
        model.sample(2, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="unconditional"):
        build_model("ddpm", {k: v for k, v in TINY.items() if k != "conditional"}).sample(
            2, labels=torch.zeros(2, dtype=torch.long))


def test_guidance_changes_samples_and_labels_default_to_every_class(trained):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    threes = trained.sample(4, labels=torch.full((4,), 3), generator=g())
    assert not torch.equal(threes, trained.sample(4, labels=torch.full((4,), 7), generator=g()))
    assert not torch.equal(threes, trained.sample(4, labels=torch.full((4,), 3), generator=g(), guidance_scale=1.0))
    assert torch.equal(trained.sample(10, generator=g()), trained.sample(10, labels=torch.arange(10), generator=g()))
    # w = 0 is the unconditional model: the label no longer matters
    assert torch.allclose(trained.sample(4, labels=torch.full((4,), 3), generator=g(), guidance_scale=0.0),
                          trained.sample(4, labels=torch.full((4,), 7), generator=g(), guidance_scale=0.0))


@pytest.mark.parametrize("sampler, scale", [("ddim", 3.0), ("dpmpp_2m", 2.0)])
def test_exported_conditional_graph_and_ort_guided_loop_match_pytorch(trained, tmp_path, sampler, scale):
    from serving.export import export_model

    report = export_model(trained, tmp_path / "m")
    assert report["passed"] and report["max_abs_error"] <= 1e-4
    raw = json.loads((tmp_path / "m" / "sampler.json").read_text())
    assert raw["conditional"] is True and raw["graphs"]["denoiser"]["inputs"] == ["x", "t", "labels"]
    sessions = {"denoiser": ort.InferenceSession(str(tmp_path / "m" / raw["graphs"]["denoiser"]["file"]),
                                                 providers=["CPUExecutionProvider"])}
    spec = check_sessions(raw, sessions).with_sampling(sampler=sampler, guidance_scale=scale)
    n = 6
    labels = np.array([7, 1, 3, 7, 0, 9], dtype=np.int64)
    got = run_sampler(spec, sessions, n, np.random.default_rng(4), labels)
    x_T = np.random.default_rng(4).standard_normal((n, 1, 8, 8), dtype=np.float32)
    want = trained.denoise_from(torch.from_numpy(x_T), labels=torch.from_numpy(labels), sampler=sampler,
                                guidance_scale=scale).numpy()
    assert want.std() > 0.05
    np.testing.assert_allclose(got, want, atol=1e-3)  # as the unconditional ORT-vs-PyTorch check (w amplifies)


@pytest.mark.slow
def test_conditional_ddpm_through_the_stages_and_guided_generate(project, cli):
    """train -> evaluate (conditional accuracy) -> gate on it -> export -> register -> promote, then
    `genforge generate --label 7 --guidance-scale 3 --sampler dpmpp_2m` from the registry."""
    from pipelines.evaluate import evaluate
    from pipelines.prepare import prepare
    from pipelines.registry import export, promote, register
    from pipelines.validate import validate
    from pipelines.train import train

    sets = ["model.families=[ddpm]", "model.ddpm.conditional=true", "model.ddpm.epochs=2",
            "model.ddpm.batch_size=128", "model.ddpm.base_channels=8", "model.ddpm.channel_mult=[1, 2]",
            "model.ddpm.timesteps=100", "model.ddpm.steps=5"]
    params = tiny_params(*LOOSE_GATE, *sets)
    prepare(params, project)
    validate(params, project, project / "data" / "prepared" / "digits")
    train(params, project, "ddpm", progress=False)
    evaluate(params, project, "ddpm")
    report = json.loads((project / "reports" / "digits" / "ddpm" / "metrics.json").read_text())
    assert 0.0 <= report["summary"]["conditional_accuracy"] <= 1.0
    export(params, project, "ddpm")
    register(params, project, "ddpm")
    decision = promote(params, project, "ddpm")
    assert decision["decision"] == "promoted"
    checks = {c["metric"]: c for c in decision.get("checks", [])}
    assert not checks or "conditional_accuracy" in checks  # gated like the other conditional families

    out = project / "outputs" / "sevens"
    proc = cli(["generate", "digits-ddpm@champion", "-n", "12", "--label", "7", "--guidance-scale", "3",
                "--guidance-min-t", "50", "--sampler", "dpmpp_2m", "--steps", "4", "--out", str(out)], project)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    # the manifest records the options that differ from the model's defaults
    assert manifest["sampling"].get("guidance_scale", DDPM.DEFAULT_GUIDANCE) == 3.0 and manifest["label"] == 7
    assert manifest["sampling"]["guidance_min_t"] == 50  # the default is int(0.2 T) = 20
    labels = np.concatenate([np.load(p)["labels"] for p in sorted((out / "shards").glob("shard-*.npz"))])
    assert labels.tolist() == [7] * 12
    bad = cli(["generate", "digits-ddpm@champion", "-n", "2", "--guidance-scale", "-1", "--out",
               str(project / "outputs" / "x")], project)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: sampling options: ddim sampler: guidance_scale")
    assert not (project / "outputs" / "x").exists()
    bad = cli(["generate", "digits-ddpm@champion", "-n", "2", "--guidance-min-t", "100", "--out",
               str(project / "outputs" / "x")], project)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        "error: sampling options: ddim sampler: guidance_min_t must be an int in [0, 99] (guided at timesteps "
        "t >= it; 0: every step), got 100")
    assert not (project / "outputs" / "x").exists()
