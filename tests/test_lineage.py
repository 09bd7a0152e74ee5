"""MLflow lineage and images (pipelines/lineage.py, evaluation/plots.py, pipelines/progress.py): unit tests.

The training run's dataset input, name, experiment tags, stepped images and epoch log lines are checked on a
real tiny training in tests/test_train.py; the version-numbered name of a second run and evaluate's image in
tests/test_registry.py."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from evaluation import plots
from pipelines import lineage, tracking
from pipelines.progress import duration, epoch_line


def test_captioned_grid_upscales_draws_borders_and_a_caption():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    grid = plots.captioned_grid(images, "vae v3 · run 1a2b3c4d · seed 0 · epoch 3/20", nrow=8)
    scale, border = 6, plots.GRID_BORDER  # 8 columns of 8 px: x6 is closest to 384 px
    assert grid.mode == "RGB" and grid.width == border + 8 * (8 * scale + border)
    band = grid.height - (border + 2 * (8 * scale + border))
    assert 14 <= band <= 40
    a = np.asarray(grid)
    caption, tiles = a[:band], a[band:]
    assert (caption.max(axis=2) < 128).sum() > 50 and (caption == 255).all(axis=2).mean() > 0.5  # dark on white
    colour = np.array(plots.GRID_BORDER_COLOUR)
    assert (tiles[:border] == colour).all() and (tiles[:, :border] == colour).all()
    # nearest-neighbour upscaling: tile (row 1, col 2) is image 10, each pixel a 6x6 block, grey in all channels
    top, left = border + 1 * (8 * scale + border), border + 2 * (8 * scale + border)
    tile = tiles[top:top + 8 * scale, left:left + 8 * scale]
    for channel in range(3):
        assert np.array_equal(tile[:, :, channel], images[10, 0].repeat(scale, 0).repeat(scale, 1))
    assert (tiles[top - border:top, left:left + 8 * scale] == colour).all()  # the line above that tile

    # RGB stays RGB; a caption wider than the grid wraps at its separators instead of being cut
    caption = "dcgan v12 · run 0123abcd · seed 7 · epoch 25/25"
    rgb = plots.captioned_grid(rng.random((4, 3, 32, 32)), caption, nrow=4, width=128)
    one_line = plots.captioned_grid(rng.random((4, 3, 32, 32)), "dcgan v12", nrow=4, width=128)
    assert rgb.mode == "RGB" and rgb.width == 2 + 4 * (32 + 2) and rgb.height > one_line.height
    with pytest.raises(ValueError, match="1 or 3 channels"):
        plots.captioned_grid(rng.random((4, 2, 8, 8)), "x")


def test_score_histograms_use_a_log_axis_only_when_scores_span_decades(tmp_path):
    rng = np.random.default_rng(1)
    clean, noisy = rng.lognormal(3, 0.2, 300), rng.lognormal(9, 0.5, 300)  # ~20 vs ~8000: > 2 decades
    assert plots.score_axis_scale(clean, noisy) == "log"
    assert plots.score_axis_scale(clean, clean * 10) == "linear"  # under 1.5 decades
    assert plots.score_axis_scale(rng.normal(size=100), noisy) == "linear"  # zero or below: no log axis
    assert plots.score_axis_scale(np.array([np.nan, np.inf])) == "linear"
    for name, bad in (("log.png", noisy), ("linear.png", clean + 5)):
        path = plots.save_score_histograms(clean, {"noise": bad}, tmp_path / name, threshold=30.0)
        assert path.stat().st_size > 1000


def test_epoch_line_gives_losses_elapsed_time_and_eta():
    line = epoch_line("vae", 3, 20, {"loss": 102.44, "kl": 3.5}, 12.34, 3)
    assert line == "vae epoch 3/20 · loss 102.4 · kl 3.5 · 12.3 s elapsed · ETA 1 min 10 s"
    # resumed at epoch 10: the ETA uses this process's pace (2 epochs in 30 s), not the epochs before the kill
    assert epoch_line("dcgan", 12, 20, {"loss_d": 1.0}, 30.0, 2).endswith("30.0 s elapsed · ETA 2 min 00 s")
    assert epoch_line("vae", 1, 4, {"loss": 1.0}, 3.0, 1).endswith("3.0 s elapsed · ETA 9.0 s")
    assert epoch_line("vae", 20, 20, {"loss": 1.0}, 7300, 20).endswith("2 h 02 min elapsed · done")
    assert duration(59.94) == "59.9 s" and duration(61) == "1 min 01 s"


def test_run_names_carry_family_version_headline_fields_and_epochs():
    assert lineage.run_name("vae v3", {"latent_dim": 16, "width": 8, "beta": 1.0}, 20) == "vae v3 · latent16 · w8 · 20 ep"
    ddpm = {"base_channels": 16, "channel_mult": [1, 2], "timesteps": 1000, "data": {"shape": [1, 8, 8]}}
    assert lineage.run_name("ddpm v1", ddpm, 5) == "ddpm v1 · ch16 · T1000 · 5 ep"
    assert lineage.run_name("vae v1", {"latent_dim": 4, "hidden": 0, "width": 0}, 2) == "vae v1 · latent4 · 2 ep"
    assert lineage.run_name("odd v1", {}, 1) == "odd v1 · 1 ep"
    assert lineage.ui_url("http://127.0.0.1:5000/", "4", "abc", "model-metrics") == \
        "http://127.0.0.1:5000/#/experiments/4/runs/abc/model-metrics?workflowType=machine_learning"
    caption = lineage.grid_caption("vae v3", "0123456789abcdef", 0, 3, 20)
    assert caption == "vae v3 · run 01234567 · seed 0 · epoch 3/20"


def test_next_version_follows_the_registry():
    c = tracking.client()
    assert lineage.next_version(c, "digits-vae") == 1  # no such model yet
    c.create_registered_model("digits-vae")
    for _ in range(2):
        c.create_model_version("digits-vae", source="file:///nowhere")
    assert lineage.next_version(c, "digits-vae") == 3


def test_dataset_input_names_source_digest_and_validation(tmp_path):
    sha = "ab" * 32
    meta = {"name": "toy", "source": "folder:/data/toy", "modality": "image", "shape": [3, 16, 16], "dtype": "uint8",
            "num_classes": 2, "counts": {"train": 120, "test": 30}, "data_sha256": sha}
    ds = SimpleNamespace(name="toy", sha256=sha, meta=meta)
    report = tmp_path / "reports" / "toy" / "validation.json"

    assert lineage.validation_status(tmp_path, "toy", sha) == {"genforge.validation": "missing"}
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"data_sha256": sha, "success": False, "failed": ["min_train_samples"],
                                  "checks": [{}, {}, {}]}))
    assert lineage.validation_status(tmp_path, "toy", sha) == {"genforge.validation": "failed: min_train_samples",
                                                               "genforge.validation_checks": "3"}
    report.write_text(json.dumps({"data_sha256": "cd" * 32, "success": True, "checks": []}))
    assert lineage.validation_status(tmp_path, "toy", sha)["genforge.validation"].startswith("stale")

    c = tracking.client()
    run_id = c.create_run(tracking.experiment_id(c, "toy-vae")).info.run_id
    lineage.log_dataset(c, run_id, tmp_path, ds)
    (logged,) = c.get_run(run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest, logged.dataset.source_type) == ("toy", sha[:12], "genforge")
    assert json.loads(logged.dataset.source) == {"source": "folder:/data/toy", "prepared": "data/prepared/toy"}
    schema = json.loads(logged.dataset.schema)["mlflow_colspec"]  # the UI's schema table: name, type
    assert {"name": "images", "type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 3, 16, 16]}} in schema
    assert json.loads(logged.dataset.profile)["test_samples"] == 30


def test_experiment_description_and_kind_are_set_once():
    c = tracking.client()
    exp = tracking.experiment_id(c, "toy-dcgan")
    lineage.describe_experiment(c, exp, "toy", "dcgan", "digits")
    tags = c.get_experiment(exp).tags
    assert tags[lineage.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert "`toy-dcgan`" in tags[lineage.NOTE_TAG]
    c.set_experiment_tag(exp, lineage.NOTE_TAG, "edited by a person")
    lineage.describe_experiment(c, exp, "toy", "dcgan", "digits")
    assert c.get_experiment(exp).tags[lineage.NOTE_TAG] == "edited by a person"
