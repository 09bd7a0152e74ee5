"""The trainer: checkpoints, exact resume after a real kill, NaN handling, MLflow logging."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipelines.prepare import prepare
from pipelines.train import TrainingDiverged, load_model, train
from pipelines.validate import validate
from tests.conftest import REPO, tiny_args, tiny_params


def _ready(project, *extra):
    params = tiny_params(*extra)
    prepare(params, project)
    validate(params, project, project / "data" / "prepared" / "digits")
    return params


def _weights(project, family="vae"):
    return torch.load(project / "models" / "digits" / family / "model.pt", weights_only=True)


def test_train_writes_checkpoints_grid_and_mlflow_run(project, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="genforge.train")
    from pipelines.train import trained_with_fingerprint

    params = _ready(project)
    assert not trained_with_fingerprint(params, project, "vae")  # nothing trained yet
    result = train(params, project, "vae", progress=False)
    out = project / "models" / "digits" / "vae"
    assert trained_with_fingerprint(params, project, "vae")
    other = json.loads(json.dumps(params))
    other["model"].setdefault("vae", {})["epochs"] = 3  # another training: the stored model is not its result
    assert not trained_with_fingerprint(other, project, "vae")
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["epoch-0001.pt", "epoch-0002.pt"]
    assert (out / "samples" / "epoch-0002.png").exists()
    info = json.loads((out / "train.json").read_text())
    assert info["epochs"] == 2 and len(info["history"]) == 2 and info["train_images_per_s"] > 0
    model = load_model(out)
    assert model.sample(3).shape == (3, 1, 8, 8)

    from pipelines import tracking
    c = tracking.client()
    run = c.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.width"] == "4"
    assert len(c.get_metric_history(result["run_id"], "train/loss")) >= 2
    assert any(a.path == "samples" for a in c.list_artifacts(result["run_id"]))

    # lineage: a descriptive name, the prepared data set as a dataset input, the experiment's view and description
    meta = json.loads((project / "data" / "prepared" / "digits" / "meta.json").read_text())
    assert run.info.run_name == "vae v1 · latent4 · w4 · 2 ep" and info["run_label"] == "vae v1"
    (data_input,) = run.inputs.dataset_inputs
    assert data_input.dataset.name == "digits" and data_input.dataset.digest == meta["data_sha256"][:12]
    tags = {t.key: t.value for t in data_input.tags}
    assert tags["mlflow.data.context"] == "training" and tags["genforge.data_sha256"] == meta["data_sha256"]
    assert tags["genforge.validation"] == "passed" and int(tags["genforge.validation_checks"]) > 10
    import mlflow.data
    source = mlflow.data.get_source(data_input)
    assert (source.setting, source.prepared) == ("digits", "data/prepared/digits")
    assert json.loads(data_input.dataset.profile)["train_samples"] == meta["counts"]["train"]
    assert '"shape": [-1, 1, 8, 8]' in data_input.dataset.schema
    experiment = c.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "**vae**" in experiment.tags["mlflow.note.content"] and "digits" in experiment.tags["mlflow.note.content"]

    # one captioned, upscaled grid per epoch, logged as image `train/samples` with step = epoch (the UI's slider)
    images = [a.path for a in c.list_artifacts(result["run_id"], "images")]
    for epoch in (0, 1, 2):  # step 0: the untrained model (where the UI's slider opens)
        assert sum(f"/train~samples+step+{epoch}+" in p and p.endswith(".png") for p in images) == 1, images
    assert run.data.tags["mlflow.loggedImages"] == "True"
    from PIL import Image
    with Image.open(out / "samples" / "epoch-0002.png") as grid:
        assert grid.width == 2 + 8 * (6 * 8 + 2) and grid.height > grid.width  # 8x8 digits x6, caption band

    # one log line per epoch: losses, elapsed time, ETA (Prefect's flow-run logs show these)
    lines = [r.getMessage() for r in caplog.records if r.name == "genforge.train" and " epoch " in r.getMessage()]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"vae epoch 1/2 · loss [-\d.e+]+( · \w+ [-\d.e+]+)* · [\d.]+ s elapsed · ETA [\d.]+ s", lines[0]), lines[0]
    assert lines[1].startswith("vae epoch 2/2 · loss ") and lines[1].endswith(" elapsed · done"), lines[1]


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, caplog):
    extra = ("model.vae.epochs=3", "model.vae.batch_size=64")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
        (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
        _ready(folder, *extra)
    train(tiny_params(*extra), straight, "vae", progress=False)

    args = ["stage", "train", "--family", "vae", *tiny_args(*extra)]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=killed,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "models" / "digits" / "vae" / "checkpoints" / "epoch-0001.pt"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run ended before its first checkpoint"
    assert not (killed / "models" / "digits" / "vae" / "model.pt").exists(), "killed too late to test resume"

    resumed = train(tiny_params(*extra), killed, "vae", progress=False)
    assert resumed["resumed_from_epoch"] >= 1, caplog.text
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed run's image slider has each epoch once, although the kill may have come after an epoch's image
    from pipelines import tracking
    images = [a.path for a in tracking.client().list_artifacts(resumed["run_id"], "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [0, 1, 2, 3], images


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(project, monkeypatch):
    import genmodels
    monkeypatch.setitem(genmodels.FAMILIES, "nanvae", "tests.nan_family:NaNAfterStepsVAE")
    params = _ready(project, "model.nanvae.width=4", "model.nanvae.latent_dim=2", "model.nanvae.epochs=3",
                    "model.nanvae.batch_size=128")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* epoch 2.*Last good checkpoint: .*epoch-0001\.pt"):
        train(params, project, "nanvae", progress=False)
    ckpts = sorted(p.name for p in (project / "models" / "digits" / "nanvae" / "checkpoints").glob("*.pt"))
    assert ckpts == ["epoch-0001.pt"]
    state = torch.load(project / "models" / "digits" / "nanvae" / "checkpoints" / "epoch-0001.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["training_state"]["model"].values() if v.is_floating_point())
    assert not (project / "models" / "digits" / "nanvae" / "model.pt").exists()


def test_training_refuses_unvalidated_data_and_unknown_family(cli, project):
    proc = cli(["stage", "train", "--family", "vae", *tiny_args()], project)
    assert proc.returncode != 0 and "error:" in proc.stderr and "run `genforge stage prepare` first" in proc.stderr
    _ready(project)
    proc = cli(["stage", "train", "--family", "nosuch", *tiny_args()], project)
    assert proc.returncode != 0 and "unknown model family 'nosuch'" in proc.stderr
    proc = cli(["stage", "train", "--family", "vae", *tiny_args("model.vae.colour=3")], project)
    assert proc.returncode != 0 and "model.vae.colour: unknown setting" in proc.stderr


def test_background_writer_keeps_order_and_raises_failures():
    from pipelines.background import BackgroundWriter, snapshot

    done = []
    with BackgroundWriter() as writer:
        for i in range(20):
            writer.submit(done.append, i)
    assert done == list(range(20))

    def broken():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter() as writer:
            writer.submit(broken)

    # a snapshot does not follow later in-place updates (optimiser steps) of the tensors it copied
    weights = torch.zeros(3)
    state = snapshot({"model": {"w": weights}, "steps": [weights]})
    weights.add_(1.0)
    assert state["model"]["w"].sum().item() == 0.0 and state["steps"][0].sum().item() == 0.0
