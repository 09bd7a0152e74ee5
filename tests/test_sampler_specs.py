"""Typed sampler specs (contracts/samplers.py): JSON round trips, every validation error per kind as
one exact message, and sampler.json files exported before the specs were typed (tests/fixtures/
sampler_specs/: the export of each family at commit e6f24ad). Loop twins and sampling options at
generate time: tests/test_sampling_options.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.errors import GenforgeError, ServingError
from contracts.samplers import (EXPORT_KEYS, SPEC_KINDS, AutoregressiveSpec, DDIMSpec, DirectSpec, FlowSpec,
                                SamplerSpec, SamplerSpecError)
from genmodels import build_model

FIXTURES = Path(__file__).parent / "fixtures" / "sampler_specs"
KIND_OF = {"vae": DirectSpec, "cvae": DirectSpec, "dcgan_conditional": DirectSpec, "ddpm": DDIMSpec,
           "pixelcnn": AutoregressiveSpec, "realnvp": FlowSpec}
TINY = {"vae": ("vae", dict(image_shape=(1, 8, 8), latent_dim=4, prior_components=0)),  # the fixture's N(0, I) form
        "cvae": ("cvae", dict(image_shape=(1, 8, 8), latent_dim=4, prior_components=0)),  # the same
        "dcgan_conditional": ("dcgan", dict(image_shape=(1, 8, 8), conditional=True, latent_dim=4)),
        "ddpm": ("ddpm", dict(image_shape=(1, 8, 8), base_channels=8, channel_mult=(1, 2), timesteps=20,
                              sample_steps=5, eta=0.5)),
        "pixelcnn": ("pixelcnn", dict(image_shape=(1, 8, 8), channels=8, layers=3, head_channels=16)),
        "realnvp": ("realnvp", dict(image_shape=(1, 8, 8), hidden=8, blocks=1, scales=2))}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _body(name: str) -> dict:
    return {k: v for k, v in _fixture(name).items() if k not in EXPORT_KEYS}


# --- old files, round trips, the families' own specs ------------------------------------------
@pytest.mark.parametrize("name", sorted(KIND_OF))
def test_old_sampler_json_loads_and_round_trips(name):
    """sampler.json as exported before the specs were typed (fixtures) reads back; to_json gives the
    same keys, values and key order, so a re-export writes the same bytes."""
    spec = SamplerSpec.from_json(_fixture(name))
    assert type(spec) is KIND_OF[name] and spec.kind == _fixture(name)["kind"]
    assert json.dumps(spec.to_json()) == json.dumps(_body(name))
    assert SamplerSpec.from_json(spec.to_json()) == spec
    spec.check_graphs(_fixture(name)["graphs"])


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_family_returns_its_typed_spec_in_todays_format(name):
    family, config = TINY[name]
    spec = build_model(family, config).sampler()
    assert isinstance(spec, KIND_OF[name])
    assert json.dumps(spec.to_json()) == json.dumps(_body(name))


def test_sampling_defaults_are_recorded_in_the_spec():
    assert SamplerSpec.from_json(_fixture("ddpm")).sampling_defaults() == {"steps": 5, "eta": 0.5, "clip": True,
                                                                                "sampler": "ddim"}  # no key: ddim
    assert SamplerSpec.from_json(_fixture("realnvp")).sampling_defaults() == {"temperature": 1.0}
    assert SamplerSpec.from_json(_fixture("vae")).sampling_defaults() == {}
    hot = SamplerSpec.from_json(_fixture("realnvp")).with_sampling(temperature=0.7)
    assert hot.to_json()["temperature"] == 0.7 and SamplerSpec.from_json(hot.to_json()) == hot
    ddim = SamplerSpec.from_json(_fixture("ddpm")).with_sampling(steps=3, eta=0, clip=None)
    assert ddim.sampling_defaults() == {"steps": 3, "eta": 0.0, "clip": True, "sampler": "ddim"}
    assert ddim.to_json()["sample_steps"] == 3


def test_every_error_is_one_serving_error_and_a_value_error():
    assert issubclass(SamplerSpecError, ServingError) and issubclass(SamplerSpecError, ValueError)
    from serving.export import ExportError
    from serving.generator import GenerationError
    from serving.resolve import ResolveError
    for cls in (ExportError, GenerationError, ResolveError, SamplerSpecError):
        assert issubclass(cls, ServingError) and issubclass(cls, GenforgeError)
    assert set(SPEC_KINDS) == {"direct", "ddim", "autoregressive", "flow", "token_autoregressive"}


# --- validation: every error, every kind -------------------------------------------------------
def _without(name: str, key: str) -> dict:
    return {k: v for k, v in _fixture(name).items() if k != key}


def _with(name: str, **change) -> dict:
    return {**_fixture(name), **change}


BAD = [
    # (spec, the exact message)
    ([], "sampler spec has no 'kind'"),
    ({"graph": "decoder"}, "sampler spec has no 'kind'"),
    (_with("vae", kind="teleport"), "unknown sampler kind 'teleport'; known: autoregressive, ddim, direct, flow, "
                                    "token_autoregressive"),
    (_with("vae", kind="dpmpp"), "unknown sampler kind 'dpmpp' (reserved by the model contract, not implemented "
                                 "yet); known: autoregressive, ddim, direct, flow, token_autoregressive"),
    # direct
    (_without("vae", "graph"), "direct sampler: spec is missing 'graph'"),
    (_without("vae", "noise"), "direct sampler: spec is missing 'noise'"),
    (_with("vae", bogus=1), "direct sampler: spec has unknown key(s) 'bogus' (known: graph, noise, conditional, "
                            "labels_input, output)"),
    (_with("vae", graph=3), "direct sampler: graph must be a non-empty string, got 3"),
    (_with("vae", conditional="yes"), "direct sampler: conditional must be true or false, got 'yes'"),
    (_with("vae", output=""), "direct sampler: output must be a non-empty string or null, got ''"),
    (_with("cvae", labels_input=7), "direct sampler: labels_input must be a non-empty string, got 7"),
    (_with("vae", noise=[4]), "direct sampler: noise must be a JSON object, got [4]"),
    (_with("vae", noise={"name": "z"}), "direct sampler: noise is missing 'shape'"),
    (_with("vae", noise={"name": "z", "shape": [4], "sigma": 1}), "direct sampler: noise has unknown key(s) "
                                                                   "'sigma' (known: name, shape, distribution, low, high)"),
    (_with("vae", noise={"name": "z", "shape": [0]}), "direct sampler: noise.shape must be a list of positive "
                                                      "ints, got [0]"),
    (_with("vae", noise={"name": "z", "shape": "4"}), "direct sampler: noise.shape must be a list of positive "
                                                      "ints, got '4'"),
    (_with("vae", noise={"name": "", "shape": [4]}), "direct sampler: noise.name must be a non-empty string, got ''"),
    (_with("vae", noise={"name": "z", "shape": [4], "distribution": "cauchy"}),
     "direct sampler: noise distribution 'cauchy' is not implemented (known: normal, uniform)"),
    (_with("vae", noise={"name": "z", "shape": [4], "low": -1}),
     "direct sampler: noise.low must be a number, and only with distribution 'uniform', got -1"),
    # ddim
    (_without("ddpm", "sample_steps"), "ddim sampler: spec is missing 'sample_steps'"),
    (_without("ddpm", "alphas_cumprod"), "ddim sampler: spec is missing 'alphas_cumprod'"),
    (_with("ddpm", guidance=2.0), "ddim sampler: spec has unknown key(s) 'guidance' (known: graph, noise, "
                                  "timestep_input, output, conditional, prediction, timesteps, sample_steps, "
                                  "timestep_spacing, eta, clip, schedule, alphas_cumprod, sampler, labels_input, "
                                  "null_label, guidance_scale, guidance_min_t)"),
    (_with("ddpm", sample_steps=0), "ddim sampler: sample_steps (option steps) must be an int in [1, 20], got 0"),
    (_with("ddpm", sample_steps=21), "ddim sampler: sample_steps (option steps) must be an int in [1, 20], got 21"),
    (_with("ddpm", sample_steps=2.5), "ddim sampler: sample_steps (option steps) must be an int in [1, 20], got 2.5"),
    (_with("ddpm", eta=-1), "ddim sampler: eta must be a number >= 0, got -1"),
    (_with("ddpm", eta="0"), "ddim sampler: eta must be a number >= 0, got '0'"),
    (_with("ddpm", clip="yes"), "ddim sampler: clip must be true or false, got 'yes'"),
    (_with("ddpm", timesteps=19), "ddim sampler: timesteps=19 but alphas_cumprod has 20 entries"),
    (_with("ddpm", alphas_cumprod=[]), "ddim sampler: alphas_cumprod must be a non-empty list of floats in (0, 1)"),
    (_with("ddpm", alphas_cumprod=[0.5, 0.9]), "ddim sampler: alphas_cumprod must be non-increasing"),
    (_with("ddpm", prediction="v"), "ddim sampler: prediction 'v' is not implemented (known: epsilon)"),
    (_with("ddpm", timestep_spacing="leading"), "ddim sampler: timestep_spacing 'leading' is not implemented "
                                                "(known: trailing)"),
    (_with("ddpm", conditional=True), "ddim sampler: labels_input must be a non-empty string, got None"),
    (_with("ddpm", conditional=True, labels_input="labels", null_label=10, guidance_scale=-1),
     "ddim sampler: guidance_scale must be a number >= 0 (0 unconditional, 1 conditional), got -1"),
    (_with("ddpm", conditional=True, labels_input="labels", null_label=0, guidance_scale=1),
     "ddim sampler: null_label must be a positive int (the class count), got 0"),
    (_with("ddpm", guidance_scale=3), "ddim sampler: guidance_scale applies to conditional models only "
                                      "(this one is unconditional)"),
    (_with("ddpm", guidance_min_t=200), "ddim sampler: guidance_min_t applies to conditional models only "
                                        "(this one is unconditional)"),
    (_with("ddpm", conditional=True, labels_input="labels", null_label=10, guidance_scale=3, guidance_min_t=20),
     "ddim sampler: guidance_min_t must be an int in [0, 19] (guided at timesteps t >= it; 0: every step), got 20"),
    (_with("ddpm", conditional=True, labels_input="labels", null_label=10, guidance_scale=3, guidance_min_t=2.5),
     "ddim sampler: guidance_min_t must be an int in [0, 19] (guided at timesteps t >= it; 0: every step), got 2.5"),
    (_with("ddpm", sampler="euler"), "ddim sampler: sampler 'euler' is not implemented (known: ddim, dpmpp_2m)"),
    (_with("ddpm", sampler="dpmpp_2m"), "ddim sampler: eta=0.5 applies to sampler 'ddim' only (dpmpp_2m is "
                                        "deterministic): choose sampler ddim (--sampler ddim) or eta 0"),
    (_with("ddpm", noise={"name": "x", "shape": [64]}), "ddim sampler: noise must be normal with shape [C, H, W], "
     "got Noise(name='x', shape=(64,), distribution='normal', low=None, high=None)"),
    # autoregressive
    (_without("pixelcnn", "uniforms"), "autoregressive sampler: spec is missing 'uniforms'"),
    (_with("pixelcnn", pixels="gray"), "autoregressive sampler: pixels must be 'binary' or '256', got 'gray'"),
    (_with("pixelcnn", categories=256), "autoregressive sampler: categories must be 2 for pixels 'binary', got 256"),
    (_with("pixelcnn", uniforms={"shape": [1, 8]}), "autoregressive sampler: uniforms.shape must be [C, H, W] of "
                                                    "positive ints, got [1, 8]"),
    (_with("pixelcnn", uniforms={"shape": [1, 8, 8], "dtype": "float64"}),
     "autoregressive sampler: uniforms.dtype 'float64' is not implemented (known: float32)"),
    (_with("pixelcnn", cache={**_fixture("pixelcnn")["cache"], "layers": "3"}),
     "autoregressive sampler: cache.layers must be a positive int, got '3'"),
    (_with("pixelcnn", cache={**_fixture("pixelcnn")["cache"], "row_window": 9}),
     "autoregressive sampler: cache needs row_window = left_window + 1, layers >= 2"),
    (_with("pixelcnn", conditional=True), "autoregressive sampler: conditional models are not supported"),
    # flow
    (_with("realnvp", temperature=0), "flow sampler: temperature must be a number > 0, got 0"),
    (_with("realnvp", temperature="hot"), "flow sampler: temperature must be a number > 0, got 'hot'"),
    (_with("realnvp", noise={"name": "z", "shape": [1, 8, 8], "distribution": "uniform"}),
     "flow sampler: noise must be normal with shape [C, H, W], got Noise(name='z', shape=(1, 8, 8), "
     "distribution='uniform', low=None, high=None)"),
    (_with("realnvp", conditional=True), "flow sampler: conditional models are not supported"),
    (_with("realnvp", steps=3), "flow sampler: spec has unknown key(s) 'steps' (known: graph, output, noise, "
                                "temperature, conditional)"),
]


@pytest.mark.parametrize("spec, message", BAD, ids=[m[:60] for _, m in BAD])
def test_bad_spec_is_one_exact_error(spec, message):
    with pytest.raises(SamplerSpecError) as err:
        SamplerSpec.from_json(spec)
    assert str(err.value) == message


@pytest.mark.parametrize("name, graphs, message", [
    ("vae", {"generator"}, "direct sampler names graph 'decoder', the model has ['generator']"),
    ("ddpm", set(), "ddim sampler names graph 'denoiser', the model has []"),
    ("pixelcnn", {"logits", "row"}, "autoregressive sampler names graph 'pixel', the model has ['logits', 'row']"),
    ("realnvp", {"forward"}, "flow sampler names graph 'inverse', the model has ['forward']"),
])
def test_graph_names_are_checked_against_the_model_folder(name, graphs, message):
    with pytest.raises(SamplerSpecError) as err:
        SamplerSpec.from_json(_fixture(name)).check_graphs(graphs)
    assert str(err.value) == message


@pytest.mark.parametrize("name, options, message", [
    ("vae", {"steps": 20}, "the direct sampler takes no option 'steps' (its options: none)"),
    ("pixelcnn", {"eta": 0.0}, "the autoregressive sampler takes no option 'eta' (its options: none)"),
    ("ddpm", {"temperature": 2.0}, "the ddim sampler takes no option 'temperature' (its options: steps, eta, clip, sampler, "
     "guidance_scale, guidance_min_t)"),
    ("ddpm", {"steps": 0}, "ddim sampler: sample_steps (option steps) must be an int in [1, 20], got 0"),
    ("ddpm", {"eta": -0.5}, "ddim sampler: eta must be a number >= 0, got -0.5"),
    ("realnvp", {"temperature": -1}, "flow sampler: temperature must be a number > 0, got -1"),
])
def test_bad_sampling_options(name, options, message):
    with pytest.raises(SamplerSpecError) as err:
        SamplerSpec.from_json(_fixture(name)).with_sampling(**options)
    assert str(err.value) == message
