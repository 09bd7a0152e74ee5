"""The params.yaml schema (pipelines.settings): every section rejects unknown keys with a suggestion, wrong
types and out-of-range values with the dotted key and the value; YAML 1.2 numbers; checked before any stage."""
import copy
import json
import time

import pytest

from pipelines.config import apply_override, load_params, yaml_load
from pipelines.errors import ConfigError
from pipelines.settings import known_metric_outputs, validate_settings
from tests.conftest import REPO, tiny_params
from tests.test_cli_errors import _assert_one_line_error


@pytest.fixture(scope="module")
def base() -> dict:
    return load_params(REPO / "params.yaml")


def _error(base: dict, *sets: str, **kwargs) -> str:
    params = copy.deepcopy(base)
    for item in sets:
        apply_override(params, item)
    with pytest.raises(ConfigError) as info:
        validate_settings(params, **kwargs)
    return str(info.value)


def test_the_shipped_params_and_the_tiny_test_params_are_valid(base):
    settings = validate_settings(base)
    assert settings.model.families == ("vae", "dcgan")
    assert settings.model.configs["vae"] == {"latent_dim": 16, "beta": 1.0, "likelihood": "bernoulli", "width": 16,
                                             "epochs": 20}
    assert settings.registry.for_family("pixelcnn").primary_metric == "bits_per_dim"
    assert settings.registry.for_family("vae").primary_metric == "fid_ratio"
    assert settings.evaluation.classifier.epochs == 8 and settings.evaluation.metrics is None
    validate_settings(tiny_params("train.epochs=3", "train.batch_size=64", "train.device=cuda:0"))
    validate_settings({})  # every section may be left out


def test_defaults_match_what_the_stages_apply():
    from dataclasses import asdict

    from pipelines import evaluate, gate, validate
    from pipelines.settings import EvaluationSettings, RegistrySettings, ValidationSettings

    assert asdict(ValidationSettings()) == validate.DEFAULTS
    ev = asdict(EvaluationSettings())
    ev["anomaly"]["kinds"] = list(ev["anomaly"]["kinds"])
    ev["text_anomaly"]["kinds"] = list(ev["text_anomaly"]["kinds"])
    assert ev == evaluate.DEFAULTS
    defaults = RegistrySettings()
    limits = {c["metric"]: c.get("max", c.get("min")) for c in gate.DEFAULT_CHECKS}
    for key, (metric, _) in gate.SHORTHANDS.items():  # the legacy keys' defaults are the default checks' limits
        value = getattr(defaults, key)
        assert (value is True and limits[metric] == 0) if isinstance(value, bool) else value == limits[metric], key
    assert {k: getattr(defaults, k) for k in gate.DECISION_DEFAULTS} == gate.DECISION_DEFAULTS


@pytest.mark.parametrize("item, expected", [
    ("data.sorce=digits", "data.sorce: unknown setting; did you mean 'source'? (known: background, channels, "
                          "follow_symlinks, image_size, name, resize, seed, source, test_fraction, text)"),
    ("validation.min_train_sample=5", "validation.min_train_sample: unknown setting; did you mean "
                                      "'min_train_samples'?"),
    ("train.epoch=3", "train.epoch: unknown setting; did you mean 'epochs'?"),
    ("model.vea.latent_dim=3", "model.vea: unknown setting; did you mean 'vae'?"),
    ("model.vae.latnet_dim=3", "model.vae.latnet_dim: unknown setting; did you mean 'latent_dim'?"),
    ("evaluation.num_sampels=50", "evaluation.num_sampels: unknown setting; did you mean 'num_samples'?"),
    ("evaluation.kid.subset=5", "evaluation.kid.subset: unknown setting; did you mean 'subsets'?"),
    ("registry.max_fid_ratoi=10", "registry.max_fid_ratoi: unknown setting; did you mean 'max_fid_ratio'? "
                                  "(known: approval, approval_timeout, checks, direction, families, "
                                  "forbid_mode_collapse, margin, max_copy_rate, max_fid_ratio"),
    ("registry.families.pixelcnn.primary_metrc=nll_nats", "registry.families.pixelcnn.primary_metrc: unknown "
                                                          "setting; did you mean 'primary_metric'?"),
    ("evaluaton.num_samples=5", "evaluaton: unknown section; did you mean 'evaluation'?"),
])
def test_unknown_keys_name_the_dotted_key_and_the_closest_known_one(base, item, expected):
    assert _error(base, item).startswith(expected)


@pytest.mark.parametrize("item, expected", [
    ("train.epochs=abc", "train.epochs: expected an integer >= 1, got 'abc'"),
    ("train.epochs=2.5", "train.epochs: expected an integer >= 1, got 2.5"),
    ("train.batch_size=null", "train.batch_size: expected an integer >= 1, got null"),
    ("model.vae.beta=null", "model.vae.beta: expected a number >= 0, got null"),
    ("model.cvae.beta=-1", "model.cvae.beta: expected a number >= 0, got -1"),
    ("model.cvae.prior_components=-1", "model.cvae.prior_components: expected an integer >= 0, got -1"),
    ("model.ddpm.dropout=1", "model.ddpm.dropout: expected a number in [0, 1), got 1"),
    ("model.vae.prior_components=-1", "model.vae.prior_components: expected an integer >= 0, got -1"),
    ("train.seed=abc", "train.seed: expected an integer >= 0, got 'abc'"),
    ("train=5", "train: expected a mapping of settings, got 5"),
    ("train.holdout_classes=3", "train.holdout_classes: expected a list of integers >= 0, got 3"),
    ("train.holdout_classes=[1, x]", "train.holdout_classes[1]: expected an integer >= 0, got 'x'"),
    ("train.device=tpu", "train.device: 'tpu' is not a device"),
    ("data.name=2024", "data.name: expected a string, got 2024 (quote it: '2024')"),
    ("data.name=../up", "data.name: '../up' must be a plain folder name"),
    ("data.test_fraction=abc", "data.test_fraction: expected a number in (0, 1), got 'abc'"),
    ("validation.min_train_samples=abc", "validation.min_train_samples: expected an integer >= 0, got 'abc'"),
    ("validation.pixel_max=x", "validation.pixel_max: expected a number, got 'x'"),
    ("model.vae.lr=abc", "model.vae.lr: expected a number > 0, got 'abc'"),
    ("model.vae.likelihood=1", "model.vae.likelihood: expected a string, got 1"),
    ("model.vae.latent_dim=2.5", "model.vae.latent_dim: expected an integer >= 1, got 2.5"),
    ("model.dcgan.spectral_norm=maybe", "model.dcgan.spectral_norm: expected true or false, got 'maybe'"),
    ("model.dcgan.betas=[0.5]", "model.dcgan.betas: expected a list of 2 numbers, got [0.5]"),
    ("model.ddpm.channel_mult=[1, two]", "model.ddpm.channel_mult[1]: expected an integer, got 'two'"),
    ("evaluation.mode_collapse.min_share=x", "evaluation.mode_collapse.min_share: expected a number in (0, 1], "
                                             "got 'x'"),
    ("evaluation.inception_weights=3", "evaluation.inception_weights: expected a string, got 3"),
    ("registry.forbid_mode_collapse=sometimes", "registry.forbid_mode_collapse: expected true or false, "
                                                "got 'sometimes'"),
    ("registry.direction=minimise", "registry.direction: 'minimise' is not one of 'minimize', 'maximize'; "
                                    "did you mean 'minimize'?"),
    ("registry.families.realnvp.direction=down", "registry.families.realnvp.direction: 'down' is not one of"),
])
def test_wrong_types_name_the_key_and_the_value(base, item, expected):
    assert _error(base, item).startswith(expected)


@pytest.mark.parametrize("item, expected", [
    ("train.epochs=0", "train.epochs: expected an integer >= 1, got 0"),
    ("train.epochs=-1", "train.epochs: expected an integer >= 1, got -1"),
    ("train.batch_size=-1", "train.batch_size: expected an integer >= 1, got -1"),
    ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
    ("train.log_every=0", "train.log_every: expected an integer >= 1, got 0"),
    ("model.vae.epochs=0", "model.vae.epochs: expected an integer >= 1, got 0"),
    ("model.dcgan.batch_size=-4", "model.dcgan.batch_size: expected an integer >= 1, got -4"),
    ("model.dcgan.lr_g=0", "model.dcgan.lr_g: expected a number > 0, got 0"),
    ("model.realnvp.actnorm_lr=-1.0", "model.realnvp.actnorm_lr: expected a number > 0, got -1.0"),
    ("data.test_fraction=1", "data.test_fraction: expected a number in (0, 1), got 1"),
    ("data.seed=-1", "data.seed: expected an integer >= 0, got -1"),
    ("validation.min_class_share=1.5", "validation.min_class_share: expected a number in [0, 1], got 1.5"),
    ("validation.pixel_min=300", "validation.pixel_min: 300 is above validation.pixel_max 255"),
    ("evaluation.num_samples=1", "evaluation.num_samples: expected an integer >= 6, got 1"),
    ("evaluation.num_samples=5", "evaluation.num_samples: expected an integer >= 6, got 5"),
    ("evaluation.anomaly.fpr=0", "evaluation.anomaly.fpr: expected a number in (0, 1), got 0"),
    ("evaluation.classifier.epochs=0", "evaluation.classifier.epochs: expected an integer >= 1, got 0"),
    ("registry.max_parity_error=0", "registry.max_parity_error: expected a number > 0, got 0"),
    ("registry.min_coverage=-0.1", "registry.min_coverage: expected a number in [0, 1], got -0.1"),
    ("registry.margin=-1", "registry.margin: expected a number >= 0, got -1"),
])
def test_values_out_of_range_are_refused(base, item, expected):
    assert _error(base, item) == expected or _error(base, item).startswith(expected)


def test_checks_against_the_prepared_data(base):
    meta = {"num_classes": 10, "counts": {"train": 1437, "test": 360}}
    assert _error(base, "train.holdout_classes=[3, 10]", meta=meta) == \
        "train.holdout_classes: [10] outside the data's classes 0..9"
    assert "nothing left to train on" in _error(base, "train.holdout_classes=[0,1,2,3,4,5,6,7,8,9]", meta=meta)
    small = {"num_classes": 10, "counts": {"train": 50, "test": 4}}
    assert "PRDC (nearest_k = 5) needs at least 6" in _error(base, meta=small)
    params = copy.deepcopy(base)
    apply_override(params, "train.holdout_classes=[3, 10]")
    validate_settings(params)  # without the data the bound is unknown: checked at train


def test_data_checks_read_meta_json_under_root(base, tmp_path):
    prepared = tmp_path / "data" / "prepared" / "few"
    prepared.mkdir(parents=True)
    (prepared / "meta.json").write_text(json.dumps({"num_classes": 3, "counts": {"train": 90, "test": 30}}))
    msg = _error(base, "data.name=few", "train.holdout_classes=[4]", root=tmp_path)
    assert msg == "train.holdout_classes: [4] outside the data's classes 0..2"


def test_model_families_are_checked_against_the_registry(base):
    assert _error(base, "model.families=[vae,dcgn]").startswith(
        "model.families: unknown model family 'dcgn'; did you mean 'dcgan'? (known: bigram, cvae, dcgan, ddpm")
    assert "listed more than once" in _error(base, "model.families=[vae,vae]")
    assert _error(base, "model.families=[]").startswith("model.families: expected a non-empty list")
    assert _error(base, "registry.families.vea.margin=1").startswith(
        "registry.families.vea: unknown model family; did you mean 'vae'?")
    params = copy.deepcopy(base)
    apply_override(params, "model.families=ddpm")  # one name as a string, as families_of accepts
    assert validate_settings(params).model.families == ("ddpm",)


def test_a_family_registered_at_run_time_is_known(base, monkeypatch):
    import genmodels

    monkeypatch.setitem(genmodels.FAMILIES, "nanvae", "tests.nan_family:NaNAfterStepsVAE")
    params = copy.deepcopy(base)
    apply_override(params, "model.families=[nanvae]")
    apply_override(params, "model.nanvae.width=4")
    assert validate_settings(params).model.configs["nanvae"] == {"width": 4}


def test_per_family_sections_take_config_fields_and_training_overrides(base):
    params = copy.deepcopy(base)
    for item in ("model.ddpm.channel_mult=[1, 2]", "model.ddpm.sample_steps=10", "model.ddpm.lr=1e-3",
                 "model.dcgan.betas=[0.5, 0.99]", "model.vae.log_every=5", "model.pixelcnn.pixels='256'",
                 "model.realnvp.actnorm=false", "model.wgan_gp.n_critic=2"):
        apply_override(params, item)
    configs = validate_settings(params).model.configs
    assert configs["ddpm"] == {"channel_mult": (1, 2), "sample_steps": 10, "lr": 0.001}
    assert configs["dcgan"]["betas"] == (0.5, 0.99) and configs["vae"]["log_every"] == 5
    assert _error(base, "model.vae.colour=3").startswith("model.vae.colour: unknown setting (known: batch_size, "
                                                         "beta, epochs,")


def test_gate_checks_are_structurally_validated(base):
    params = copy.deepcopy(base)
    apply_override(params, "registry.checks=[{metric: fid_ratio, max: 500}, {metric: coverage, min: 0.03, "
                           "required: true}]")
    with pytest.raises(ConfigError, match="registry.max_fid_ratio: conflicts with the registry.checks entry"):
        validate_settings(params)  # the shipped file sets the same limit by its shorthand: keep one of them
    for shorthand in ("max_fid_ratio", "min_coverage"):
        del params["registry"][shorthand]
    apply_override(params, "registry.families.pixelcnn.checks=[{metric: bits_per_dim, max: 1.5}]")
    apply_override(params, "evaluation.metrics=[fid, prdc, nll]")
    s = validate_settings(params)
    assert [(c.metric, c.min, c.max, c.required) for c in s.registry.checks] == [
        ("fid_ratio", None, 500, None), ("coverage", 0.03, None, True)]
    assert s.registry.for_family("pixelcnn").checks[0].metric == "bits_per_dim"
    assert s.registry.for_family("vae").checks == s.registry.checks
    assert s.evaluation.metrics == ("fid", "prdc", "nll")
    assert "parity_max_abs_error" in known_metric_outputs() and "anomaly_auroc" in known_metric_outputs()

    bad = {
        "registry.checks=[{metric: fid_ration, max: 3}]":
            "registry.checks[0].metric: unknown metric 'fid_ration'; did you mean 'fid_ratio'?",
        "registry.checks=[{metric: fid_ratio, mxa: 3}]":
            "registry.checks[0].mxa: unknown setting; did you mean 'max'? (known: max, metric, min, required)",
        "registry.checks=[{metric: coverage, mni: 0.1}]": "registry.checks[0].mni: unknown setting; did you mean 'min'?",
        "registry.checks=[{metric: fid_ratio}]": "registry.checks[0]: give exactly one of min or max",
        "registry.checks=[{metric: fid_ratio, min: 1, max: 2}]": "registry.checks[0]: give exactly one of min or max",
        "registry.checks=[{max: 2}]": "registry.checks[0].metric: missing",
        "registry.checks=[{metric: fid_ratio, max: high}]": "registry.checks[0].max: expected a number, got 'high'",
        "registry.checks=[{metric: fid_ratio, max: 1, required: maybe}]":
            "registry.checks[0].required: expected true or false, got 'maybe'",
        "registry.checks={metric: fid_ratio, max: 1}": "registry.checks: expected a list of checks",
        "registry.families.vae.checks=[{metric: coverge, min: 0.1}]":
            "registry.families.vae.checks[0].metric: unknown metric 'coverge'; did you mean 'coverage'?",
        "registry.primary_metric=fid_raito": "registry.primary_metric: unknown primary metric 'fid_raito'; did you "
                                             "mean 'fid_ratio'?",
        "evaluation.metrics=[fid, fidd]": "evaluation.metrics[1]: unknown metric 'fidd'; did you mean 'fid'?",
        "evaluation.metrics=fid": "evaluation.metrics: expected a list of strings, got 'fid'",
    }
    for item, expected in bad.items():
        assert _error(base, item).startswith(expected), item


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1E5", 100000.0), (".5", 0.5), ("-2.5e+3", -2500.0), ("1.0e-4", 1e-4), ("+3e2", 300.0),
    ("5", 5), ("-7", -7), ("0x1f", 31), ("abc", "abc"), ("1e", "1e"), ("e5", "e5"), ("true", True), ("null", None),
    ("idx:/data/mnist", "idx:/data/mnist"), ("12.5.3", "12.5.3"),
])
def test_yaml_12_numbers(text, value):
    assert yaml_load(text) == value and type(yaml_load(text)) is type(value)


def test_params_file_and_set_read_exponents_as_floats(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text() + "\n")
    text = path.read_text().replace("    likelihood: bernoulli\n", "    likelihood: bernoulli\n    lr: 1e-3\n")
    path.write_text(text)
    params = load_params(path, ["model.dcgan.lr_g=2E-4", "registry.max_parity_error=1e-5"])
    assert params["model"]["vae"]["lr"] == 0.001
    assert params["model"]["dcgan"]["lr_g"] == 2e-4 and params["registry"]["max_parity_error"] == 1e-5
    validate_settings(params)


def test_train_refuses_bad_settings_even_when_called_directly(tmp_path):
    """`epochs: 0` never reaches training, whoever calls the stage (here: without the CLI or a flow)."""
    from pipelines.prepare import prepare
    from pipelines.train import train
    from pipelines.validate import validate

    params = tiny_params()
    prepare(params, tmp_path)
    validate(params, tmp_path, tmp_path / "data" / "prepared" / "digits")
    for item, expected in (("train.epochs=0", "train.epochs"), ("train.holdout_classes=[12]", "outside the data")):
        with pytest.raises(ConfigError, match=expected):
            train(tiny_params(item), tmp_path, "vae", progress=False)
    assert not (tmp_path / "models").exists()


def test_a_family_typo_fails_the_main_job_before_anything_runs(cli, project):
    started = time.monotonic()
    proc = cli(["run", "--set", "model.families=[vae,dcgn]"], project, timeout=120)
    elapsed = time.monotonic() - started
    _assert_one_line_error(proc, 1, "model.families: unknown model family 'dcgn'", "did you mean 'dcgan'")
    assert elapsed < 30, elapsed  # ~3 s: loading the family registry, no Prefect, no data
    for folder in ("data", "models", "reports", "outputs", ".prefect"):
        assert not (project / folder).exists(), folder


def test_every_shipped_params_file_passes_the_settings_check():
    """params.yaml and each params-*.yaml load and pass the schema and the gate's resolution as shipped (a
    shorthand and a check of the same metric side by side once made params-names.yaml unusable)."""
    from pipelines.config import load_params
    from pipelines.registry import gate_settings
    from pipelines.settings import validate_settings

    for path in [REPO / "params.yaml", *sorted(REPO.glob("params-*.yaml"))]:
        params = load_params(path)
        validate_settings(params, None)
        for family in params["model"]["families"]:
            assert gate_settings(params, family)["checks"], (path.name, family)
