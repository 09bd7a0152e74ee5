"""Export, register, the promotion gate, review commands and the ORT generator against a real SQLite registry."""
import json
import subprocess
import sys

import pytest

from pipelines import tracking
from pipelines.errors import GenforgeError
from pipelines.evaluate import evaluate
from pipelines.prepare import prepare
from pipelines.registry import export, gate_decision, manual_promote, promote, register, rollback, show
from pipelines.train import train
from pipelines.validate import validate
from tests.conftest import LOOSE_GATE, REPO, tiny_params



def _chain(params, root, family="vae"):
    return {stage: fn(params, root, family) for stage, fn in
            (("train", lambda p, r, f: train(p, r, f, progress=False)), ("evaluate", evaluate), ("export", export),
             ("register", register), ("promote", promote))}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, _mlflow_template):
    """v1: a tiny VAE, promoted; v2: the same family collapsed to one image, registered and rejected."""
    import os
    import shutil

    root = tmp_path_factory.mktemp("registry-project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        # the prior N(0, I): a VAE this short-trained has posterior means bunched near 0, and the mixture prior
        # fitted to them samples less diversely (FID 123x vs the collapsed one's 117x), which this test is not about
        params = tiny_params(*LOOSE_GATE, "model.vae.prior_components=0")
        prepare(params, root)
        validate(params, root, root / "data" / "prepared" / "digits")
        v1 = _chain(params, root)
        import genmodels
        saved = genmodels.FAMILIES["vae"]
        genmodels.FAMILIES["vae"] = "tests.nan_family:CollapsedVAE"
        try:
            v2 = _chain(tiny_params(*LOOSE_GATE, "model.vae.prior_components=0", "model.vae.epochs=1"), root)
        finally:
            genmodels.FAMILIES["vae"] = saved
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return {"root": root, "uri": uri, "params": params, "v1": v1, "v2": v2}


@pytest.fixture
def registry_env(chain, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain["uri"])
    return chain


def test_first_passing_version_becomes_champion_with_full_tags(registry_env):
    root, v1 = registry_env["root"], registry_env["v1"]
    assert v1["register"]["name"] == "digits-vae" and v1["register"]["version"] == "1"
    assert v1["promote"]["decision"] == "promoted"
    c = tracking.client()
    mv = c.get_model_version("digits-vae", "1")
    for tag in ("data_sha256", "git_commit", "params_hash", "parity_max_abs_error", "metric.fid", "metric.fid_ratio",
                "metric.coverage", "metric.mode_collapse", "promotion.decision", "promotion.reasons"):
        assert tag in mv.tags, tag
    assert float(mv.tags["parity_max_abs_error"]) <= 1e-4
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "1"
    promotion = json.loads((root / "reports" / "digits" / "vae" / "promotion.json").read_text())
    assert promotion["version"] == "2"  # the latest decision
    # the source is an MLflow model logged as a LoggedModel of the training run, holding the export folder
    assert mv.source.startswith("models:/m-")
    model_id = mv.source.removeprefix("models:/")
    logged = c.get_logged_model(model_id)
    assert str(logged.status) == "READY" and logged.source_run_id == mv.run_id
    arts = {a.path for a in c.list_logged_model_artifacts(model_id)}
    arts |= {a.path for a in c.list_logged_model_artifacts(model_id, "artifacts/onnx")}
    assert {"MLmodel", "checkpoint", "artifacts/onnx/sampler.json", "artifacts/onnx/decoder.onnx"} <= arts


def test_evaluation_report_has_every_metric_with_its_setting(registry_env):
    out = registry_env["root"] / "reports" / "digits" / "vae"
    report = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "fid_real_floor", "fid_ratio", "kid", "precision", "recall", "density", "coverage",
                "class_coverage", "class_kl", "mode_collapse", "nll_nats", "anomaly_auroc", "anomaly_aupr",
                "anomaly_tpr_at_threshold", "anomaly_noise_auroc"):
        assert key in report["metrics"], key
        assert report["metrics"][key]["setting"]["dataset"] == "digits"
    assert report["metrics"]["fid"]["setting"]["n_samples"] == 200
    assert "domain-classifier" in report["metrics"]["fid"]["setting"]["feature_extractor"]
    assert report["inception"]["computed"] is False and "not set" in report["inception"]["reason"]
    assert 0.0 <= report["summary"]["anomaly_auroc"] <= 1.0
    for png in ("samples.png", "interpolation.png", "roc.png", "score_histograms.png"):
        assert (out / "plots" / png).stat().st_size > 0
    run = tracking.client().get_run(report["run_id"])
    assert "eval/fid" in run.data.metrics


def test_runs_are_named_by_the_version_they_become_and_show_evaluate_s_grid(registry_env):
    c = tracking.client()
    for key, epochs in (("v1", 2), ("v2", 1)):
        run = c.get_run(registry_env[key]["train"]["run_id"])
        version = registry_env[key]["register"]["version"]
        assert run.info.run_name == f"vae v{version} · latent4 · w4 · {epochs} ep"
        assert c.get_model_version("digits-vae", version).run_id == run.info.run_id
        # evaluate's captioned grid: the artifact and the image `eval/samples` at step = epochs trained
        images = [a.path for a in c.list_artifacts(run.info.run_id, "images")]
        assert sum(f"/eval~samples+step+{epochs}+" in p and p.endswith(".png") for p in images) == 1, images
    assert "evaluation/samples.png" in {a.path for a in c.list_artifacts(run.info.run_id, "evaluation")}


def test_collapsed_challenger_is_registered_but_not_promoted(registry_env):
    v2 = registry_env["v2"]
    assert v2["register"]["version"] == "2"
    assert v2["evaluate"]["mode_collapse"] == 1
    assert v2["promote"]["decision"] == "rejected"
    assert any("fid_ratio" in r and "champion" in r for r in v2["promote"]["reasons"])
    c = tracking.client()
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "1"
    assert str(c.get_model_version_by_alias("digits-vae", "challenger").version) == "2"
    assert c.get_model_version("digits-vae", "2").tags["promotion.decision"] == "rejected"


def test_registry_show_lists_versions_side_by_side(registry_env, cli):
    rows = show("digits-vae")
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[0]["aliases"] == "champion" and rows[1]["aliases"] == "challenger"
    assert rows[1]["mode_collapse"] == "yes" and rows[1]["decision"] == "rejected"
    proc = cli(["registry", "show", "digits-vae"], registry_env["root"])
    assert proc.returncode == 0 and "challenger" in proc.stdout and "rejected" in proc.stdout
    proc = cli(["registry", "show", "digits-nope"], registry_env["root"])
    assert proc.returncode == 1 and "no registered model 'digits-nope'" in proc.stderr


def test_registry_show_has_the_columns_of_the_models_own_metrics():
    """A text model's versions show bits/char, the Fréchet text ratio and novelty, and no FID columns; an image
    model's the FID family and no text ones: a column appears when a version of that model has the metric."""
    from pipelines.registry import records

    c = tracking.client()
    for name, tags in (("names-gpt", {"metric.bits_per_char": "3.07", "metric.frechet_text_ratio": "4.2",
                                      "metric.novelty": "0.83"}),
                       ("digits-dcgan", {"metric.fid": "1.5", "metric.fid_ratio": "12.0", "metric.novelty": "nan?"})):
        c.create_registered_model(name)
        c.create_model_version(name, source="file:///nowhere", tags=tags)
    text, image = show("names-gpt")[0], show("digits-dcgan")[0]
    assert {"bits_per_char", "frechet_text_ratio", "novelty"} <= set(text) and not {"fid", "fid_ratio", "coverage"} & set(text)
    assert {"fid", "fid_ratio"} <= set(image) and not {"bits_per_char", "novelty", "recall"} & set(image)
    assert records("names-gpt")[0]["metrics"] == {"bits_per_char": 3.07, "frechet_text_ratio": 4.2, "novelty": 0.83}


def test_gate_hard_thresholds_each_block_promotion():
    good = {"metric.fid_ratio": "2.0", "metric.coverage": "0.8", "metric.class_coverage": "1.0",
            "metric.copy_rate": "0.0", "metric.mode_collapse": "0", "parity_max_abs_error": "1e-6", "validated": "true"}
    gate = {"max_fid_ratio": 5.0, "min_coverage": 0.5, "min_class_coverage": 0.9, "forbid_mode_collapse": True,
            "max_parity_error": 1e-4, "primary_metric": "fid_ratio", "direction": "minimize", "margin": 0.1}
    assert gate_decision(good, None, gate)["promoted"]
    for key, bad in (("metric.fid_ratio", "9"), ("metric.coverage", "0.1"), ("metric.class_coverage", "0.5"),
                     ("metric.mode_collapse", "1"), ("metric.copy_rate", "0.5"), ("parity_max_abs_error", "0.01"),
                     ("validated", "false")):
        decision = gate_decision({**good, key: bad}, None, gate)
        assert not decision["promoted"], key
    # conditional models also answer for drawing the class they are asked for
    gate["min_conditional_accuracy"] = 0.5
    assert gate_decision({**good, "metric.conditional_accuracy": "0.8"}, None, gate)["promoted"]
    decision = gate_decision({**good, "metric.conditional_accuracy": "0.3"}, None, gate)
    assert not decision["promoted"] and any("conditional_accuracy" in r for r in decision["reasons"])
    champion = {**good, "metric.fid_ratio": "2.05"}
    assert not gate_decision(good, champion, gate)["promoted"]  # better, but not by the margin
    assert gate_decision(good, {**good, "metric.fid_ratio": "3.0"}, gate)["promoted"]


def test_manual_promote_and_rollback_record_reasons(registry_env):
    c = tracking.client()
    manual_promote("digits-vae", "2", "reviewer wants to compare in production")
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "2"
    assert c.get_model_version("digits-vae", "2").tags["promotion.decision"] == "manual-promote"
    record = rollback("digits-vae", "collapsed samples in production")
    assert record["champion_after"] == "1"
    assert str(c.get_model_version_by_alias("digits-vae", "champion").version) == "1"
    assert "collapsed samples" in c.get_model_version("digits-vae", "2").tags["promotion.reasons"]
    with pytest.raises(GenforgeError, match="no earlier champion"):
        rollback("digits-vae", "again")


def test_register_refuses_a_model_whose_parity_failed(registry_env):
    root, params = registry_env["root"], registry_env["params"]
    onnx_dir = root / "models" / "digits" / "vae" / "onnx"
    backup = {p.name: p.read_bytes() for p in onnx_dir.iterdir()}
    try:
        parity = json.loads((onnx_dir / "parity.json").read_text())
        (onnx_dir / "parity.json").write_text(json.dumps({**parity, "passed": False, "max_abs_error": 0.5}))
        (onnx_dir / "sampler.json").unlink()
        before = len(show("digits-vae"))
        with pytest.raises(GenforgeError, match="not servable"):
            register(params, root, "vae")
        assert len(show("digits-vae")) == before
    finally:
        for name, data in backup.items():
            (onnx_dir / name).write_bytes(data)


def test_generate_from_the_registry_is_deterministic_and_torch_free(registry_env, tmp_path):
    root = registry_env["root"]
    code = ("import sys; from pipelines.cli import main\n"
            "sys.argv = ['genforge', 'generate', 'digits-vae@champion', '-n', '1000', '--seed', '3', "
            f"'--batch-size', '256', '--out', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TORCH_LOADED', 'torch' in sys.modules)")
    outs = []
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], cwd=root, capture_output=True,
                              text=True, timeout=300, env={**__import__("os").environ})
        assert proc.returncode == 0, proc.stderr
        assert "TORCH_LOADED False" in proc.stdout
        outs.append(tmp_path / name)
    manifest = json.loads((outs[0] / "manifest.json").read_text())
    assert manifest["model"] == {"name": "digits-vae", "version": "1"} and manifest["n"] == 1000
    assert sum(s["count"] for s in manifest["shards"]) == 1000
    for shard in manifest["shards"]:
        assert (outs[0] / shard["file"]).read_bytes() == (outs[1] / shard["file"]).read_bytes()
    assert (outs[0] / "preview.png").exists()


@pytest.mark.parametrize("ref,message", [("digits-nope@champion", "no registered model 'digits-nope'"),
                                         ("digits-vae@gold", "has no alias 'gold'"),
                                         ("digits-vae/99", "has no version 99"),
                                         ("digits vae", "must be <name>@<alias>")])
def test_generate_bad_references(registry_env, cli, tmp_path, ref, message):
    proc = cli(["generate", ref, "-n", "10", "--out", str(tmp_path / "o")], registry_env["root"])
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # ~16 s of CLI processes (the generator refusals stay in the default run, tests/test_concurrency.py): `make test-all`
def test_generate_refuses_another_jobs_folder_and_bad_n(registry_env, cli, tmp_path):
    root, out = registry_env["root"], tmp_path / "o"
    assert cli(["generate", "digits-vae/1", "-n", "300", "--seed", "1", "--out", str(out)], root).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = cli(["generate", "digits-vae/1", "-n", "300", "--seed", "2", "--out", str(out)], root)
    assert proc.returncode == 1 and "error:" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    proc = cli(["generate", "digits-vae/1", "-n", "0", "--out", str(tmp_path / "zero")], root)
    assert proc.returncode == 1 and "n must be" in proc.stderr
    proc = cli(["generate", "digits-vae/1", "-n", "5", "--label", "3", "--out", str(tmp_path / "lab")], root)
    assert proc.returncode == 1 and "error:" in proc.stderr


def test_likelihood_families_compete_on_bits_per_dim_by_default():
    from pipelines.config import load_params
    from pipelines.registry import gate_settings

    params = load_params(REPO / "params.yaml")
    for family in ("pixelcnn", "realnvp"):
        assert gate_settings(params, family)["primary_metric"] == "bits_per_dim"
    assert gate_settings(params, "dcgan")["primary_metric"] == "fid_ratio"
    gate = gate_settings(params, "pixelcnn")
    tags = {"metric.fid_ratio": "100", "metric.coverage": "0.2", "metric.class_coverage": "1.0",
            "metric.copy_rate": "0.0", "metric.mode_collapse": "0", "parity_max_abs_error": "1e-6", "validated": "true"}
    # a worse FID but a better likelihood still wins for a likelihood model
    challenger = {**tags, "metric.fid_ratio": "150", "metric.bits_per_dim": "0.12"}
    assert gate_decision(challenger, {**tags, "metric.bits_per_dim": "0.13"}, gate)["promoted"]
    assert not gate_decision(challenger, {**tags, "metric.bits_per_dim": "0.11"}, gate)["promoted"]


# ---- the model card and the review page (pipelines/card.py, pipelines/review.py) ---------------------
def _card_rows(md):
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")]
                                          for line in md.splitlines() if line.startswith("| "))}


def test_model_card_is_the_description_and_an_artifact(registry_env, tmp_path):
    from pipelines.card import DESCRIPTION_LIMIT, card_artifact

    c = tracking.client()
    v1, v2 = c.get_model_version("digits-vae", "1"), c.get_model_version("digits-vae", "2")
    assert v1.description.startswith("# digits-vae v1: vae on digits")
    assert "**Decision: ✓ promoted**" in v1.description and "no champion to beat" in v1.description
    card = v2.description
    assert card.startswith("# digits-vae v2: vae on digits") and len(card) <= DESCRIPTION_LIMIT
    # the latest decision (the gate's rejection, or the manual promote/rollback of the test above) first,
    # then every check of the gate's record for v2 with observed value, limit, v1's value and status
    assert card.index(f"{v2.tags['promotion.decision']}**") < card.index("| check | observed | limit |")
    gate = json.loads((registry_env["root"] / "reports" / "digits" / "vae" / "promotion.json").read_text())
    assert gate["version"] == "2" and len(gate["checks"]) >= 5
    rows = _card_rows(card)
    for check in gate["checks"]:
        row = rows[check["check"]]
        status = {"passed": "✓ pass", "failed": "✗ fail"}.get(check["status"], check["status"])
        assert row[4].startswith(status), (row, check)
        if isinstance(check["observed"], float):
            assert float(row[1]) == pytest.approx(check["observed"], rel=1e-3)
            assert float(row[3]) == pytest.approx(check["champion"], rel=1e-3)
    assert rows["fid_ratio beats the champion"][4].startswith("✗ fail")
    # metrics against the champion: challenger minus champion, the gate's direction, the real-data floor
    ratio2, ratio1 = float(v2.tags["metric.fid_ratio"]), float(v1.tags["metric.fid_ratio"])
    assert rows["fid_ratio"][3].startswith(f"{ratio2 - ratio1:+.4g} ({'worse' if ratio2 > ratio1 else 'better'})")
    assert float(rows["fid"][4]) == pytest.approx(float(v2.tags["metric.fid_real_floor"]), rel=1e-3)
    # the grid: an image of the run, linked for the MLflow UI; data, training and serving facts
    assert f"(get-artifact?path=evaluation%2Fsamples.png&run_uuid={v2.run_id})" in card
    assert "evaluation/samples.png" in {a.path for a in c.list_artifacts(v2.run_id, "evaluation")}
    assert f"- sha256: `{v2.tags['data_sha256']}`" in card and "- validation: passed (" in card
    assert "sampler: `direct`, modality: `image`" in card and "- epochs: 1, wall time: " in card
    assert f"params hash: `{v2.tags['params_hash']}`" in card and "genforge generate digits-vae/2 -n 16" in card
    logged = c.download_artifacts(v2.run_id, card_artifact("2"), str(tmp_path))
    assert open(logged).read() == card


def test_registry_review_writes_a_self_contained_page(registry_env, cli, tmp_path, monkeypatch):
    import base64
    import io
    import re

    from PIL import Image

    from pipelines import catalog
    from pipelines.review import GENERATOR, write_review
    from serving.generator import generate
    from serving.resolve import fetch_onnx, resolve

    root, out = registry_env["root"], tmp_path / "review"
    proc = cli(["registry", "review", "digits-vae", "--out", str(out)], root)  # @challenger v2 vs champion v1
    assert proc.returncode == 0, proc.stderr
    page = (out / "review.html").read_text()
    assert GENERATOR in page and "digits-vae: v2 vs champion v1" in page
    for external in ("http://", "https://", "<script", "<link", "url("):
        assert external not in page, external
    grids = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert len(grids) == 2 and grids[0] != grids[1]
    assert Image.open(io.BytesIO(grids[0])).size == Image.open(io.BytesIO(grids[1])).size
    monkeypatch.chdir(root)
    c = tracking.client()
    for version, shown in (("2", grids[0]), ("1", grids[1])):  # the ONNX generator's grid for seed 0, n 64
        local = fetch_onnx(resolve(c, f"digits-vae/{version}"), catalog.generator_cache(root))
        generate(local, 64, 0, tmp_path / f"g{version}", provider="cpu")
        assert (tmp_path / f"g{version}" / "preview.png").read_bytes() == shown
    r1, r2 = (float(c.get_model_version("digits-vae", v).tags["metric.fid_ratio"]) for v in ("1", "2"))
    assert re.search(rf'<td>fid_ratio</td>.*?<td class="num [a-z]*">{re.escape(f"{r2 - r1:+.4g}")} \(', page)
    assert "fid_ratio beats the champion" in page and "data validated" in page
    # the champion itself, which replaced no earlier champion: shown alone, and the page says so
    alone = write_review("digits-vae", "1", tmp_path / "alone")
    html1 = (tmp_path / "alone" / "review.html").read_text()
    assert alone["compared_with"] is None and html1.count("data:image/png;base64,") == 1
    assert "replaced no earlier one: shown alone" in html1
    # a page genforge wrote is replaced; a file of the user's never is
    write_review("digits-vae", "1", tmp_path / "alone")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "review.html").write_text("my notes")
    with pytest.raises(GenforgeError, match="not written by genforge"):
        write_review("digits-vae", "2", tmp_path / "mine")
    assert (tmp_path / "mine" / "review.html").read_text() == "my notes"
    with pytest.raises(GenforgeError, match="version 99 no longer exists"):
        write_review("digits-vae", "99", tmp_path / "v99")
    with pytest.raises(GenforgeError, match="must be a version number"):
        write_review("digits-vae", "two", tmp_path / "two")
    assert not (tmp_path / "v99").exists() and not (tmp_path / "two").exists()
    (tmp_path / "afile").write_text("mine")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub"):  # --out a file, or under one
        with pytest.raises(GenforgeError, match="choose another --out"):
            write_review("digits-vae", "2", bad)
    assert (tmp_path / "afile").read_text() == "mine"
    proc = cli(["registry", "review", "digits-nope"], root)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no registered model 'digits-nope'")
    assert "Traceback" not in proc.stderr and not (root / "review").exists()


@pytest.mark.slow  # a browser: `make test-all` (`make browser` installs chromium)
def test_review_page_and_mlflow_version_page_in_headless_chromium(registry_env, tmp_path, monkeypatch):
    import os
    import re
    import urllib.request

    from pipelines.review import write_review
    from tests import browser
    from tests.conftest import BIN, free_port, stop_process_group
    from tests.test_scale_out import _start

    browser.chromium()
    monkeypatch.chdir(registry_env["root"])
    write_review("digits-vae", "2", tmp_path / "review")
    url = (tmp_path / "review" / "review.html").as_uri()
    shot = tmp_path / "review.png"
    browser.run(url, tmp_path / "p1", screenshot=shot)
    variance, inked = browser.not_blank(shot)
    assert variance > 100 and inked > 0.05, (variance, inked)
    dom = browser.run(url, tmp_path / "p2")
    for text in ("digits-vae: v2 vs champion v1", "Gate checks", "fid_ratio beats the champion", "Metrics",
                 "real-data floor", "genforge generate digits-vae/2"):
        assert text in dom, text
    assert dom.count("data:image/png;base64,") == 2

    # the MLflow UI's model version page shows the card first, with the run's sample grid
    port = free_port()
    server = _start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                     "--backend-store-uri", registry_env["uri"]], f"http://127.0.0.1:{port}/health",
                    {**os.environ}, timeout=180)
    try:
        page = f"http://127.0.0.1:{port}/#/models/digits-vae/versions/2"
        dom = browser.run(page, tmp_path / "p3", budget_ms=15000)
        assert "# digits-vae" not in dom and "digits-vae v2: vae on digits" in dom  # rendered, not raw Markdown
        assert dom.index("digits-vae v2: vae on digits") < dom.index("fid_ratio beats the champion") \
            < dom.index("How to serve it") < dom.index(">Tags<")
        src = re.search(r'<img[^>]+src="(get-artifact\?path=evaluation%2Fsamples\.png&amp;run_uuid=[0-9a-f]+)"', dom)
        assert src, "the card's sample grid is not an <img> in the rendered description"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{src.group(1).replace('&amp;', '&')}") as r:
            assert r.status == 200 and r.read(8) == b"\x89PNG\r\n\x1a\n"
        shot = tmp_path / "mlflow.png"
        browser.run(page, tmp_path / "p4", screenshot=shot, budget_ms=15000)
        variance, inked = browser.not_blank(shot)
        assert variance > 100 and inked > 0.05, (variance, inked)
    finally:
        stop_process_group(server)


def _genforge(args, cwd, monkeypatch, capsys):
    """`genforge ARGS` in this process (no interpreter start-up): (exit code, stdout, stderr), not a terminal."""
    from pipelines.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["genforge", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_rejected_promotion_is_a_red_cross_and_registry_show_is_never_cut(registry_env, monkeypatch, capsys):
    from tests.conftest import tiny_args

    root = registry_env["root"]
    code, out, err = _genforge(["stage", "promote", "--family", "vae",
                                *tiny_args(*LOOSE_GATE, "registry.max_fid_ratio=0.5")], root, monkeypatch, capsys)
    assert code == 0, err
    fid_ratio = float(tracking.client().get_model_version("digits-vae", "2").tags["metric.fid_ratio"])
    assert f"✗ rejected: fid_ratio {fid_ratio:.4g} > 0.5" in err and "✓" not in err
    assert json.loads(out)["decision"] == "rejected"

    code, out, err = _genforge(["registry", "show", "digits-vae"], root, monkeypatch, capsys)  # piped
    assert code == 0, err
    assert "…" not in out and "\x1b[" not in out
    lines = out.splitlines()
    v2 = next(line for line in lines if line.startswith("│ 2 "))
    assert "challenger" in v2 and "✗ rejected" in v2 and f"fid_ratio {fid_ratio:.4g} > 0.5" in v2
    assert max(len(line) for line in lines) > 120  # wider than the pipe's 80 columns, and nothing was cut
    git = tracking.client().get_model_version("digits-vae", "1").tags["git_commit"][:8]
    assert git in next(line for line in lines if line.startswith("│ 1 "))

    code, out, err = _genforge(["registry", "show", "digits-vae", "--json"], root, monkeypatch, capsys)
    assert code == 0, err
    rows = json.loads(out)  # typed records: full ids, numbers, lists
    v1 = tracking.client().get_model_version("digits-vae", "1")
    assert [r["version"] for r in rows] == [1, 2] and rows[1]["decision"] == "rejected"
    assert rows[1]["reasons"] == [f"fid_ratio {fid_ratio:.4g} > 0.5"] and rows[1]["primary_metric"] == "fid_ratio"
    assert rows[1]["primary_value"] == pytest.approx(fid_ratio) and rows[1]["metrics"]["fid_ratio"] == pytest.approx(fid_ratio)
    assert rows[0]["git_commit"] == v1.tags["git_commit"] and rows[0]["data_sha256"] == v1.tags["data_sha256"]
    assert "champion" in rows[0]["aliases"] and isinstance(rows[0]["metrics"]["mode_collapse"], bool)
    assert rows[0]["created"].endswith("+00:00") and rows[0]["approval"] is None


def test_generate_prints_a_summary_and_the_manifest_only_with_json(registry_env, tmp_path, monkeypatch, capsys):
    root = registry_env["root"]
    code, out, err = _genforge(["generate", "digits-vae/1", "-n", "30", "--batch-size", "10", "--out",
                                str(tmp_path / "a")], root, monkeypatch, capsys)
    assert code == 0, err
    assert out == ""  # the manifest only with --json
    assert "✓ generated 30 samples from digits-vae/1 (seed 0) into" in err and "samples/s" in err
    assert "CPUExecutionProvider" in err and "━" not in err  # not a terminal: no progress bar
    code, out, err = _genforge(["generate", "digits-vae/1", "-n", "30", "--batch-size", "10", "--seed", "1",
                                "--out", str(tmp_path / "b"), "--json"], root, monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["n"] == 30 and manifest["seed"] == 1 and manifest["shards"] == 3 and manifest["complete"]
    assert manifest["run"]["out_dir"] == str(tmp_path / "b")


# the champion as an MLflow pyfunc model, in a fresh interpreter: `genforge generate`, then the pyfunc model's
# predict on the same seed, then bad requests; torch must stay out of both
_PYFUNC_SCRIPT = r"""
import json, sys
import numpy as np
from pipelines.cli import main
ref, n, seed, batch, out, npy, bad = sys.argv[1:8]
sys.argv = ["genforge", "generate", ref, "-n", n, "--seed", seed, "--batch-size", batch, "--out", out]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
import mlflow.pyfunc
model = mlflow.pyfunc.load_model("models:/" + ref)
np.save(npy, model.predict({"n": int(n), "seed": int(seed), "batch_size": int(batch)}))
errors = {}
for key, request in json.loads(bad).items():
    try:
        model.predict(request)
        errors[key] = None
    except Exception as e:
        errors[key] = {"classes": [c.__name__ for c in type(e).__mro__], "message": str(e)}
print("RESULT", json.dumps({"torch": "torch" in sys.modules, "errors": errors,
                            "inputs": model.metadata.get_input_schema().input_names()}))
"""


def test_pyfunc_model_predicts_what_genforge_generate_writes(registry_env, tmp_path):
    """`mlflow.pyfunc.load_model("models:/digits-vae@champion").predict(...)` returns exactly the samples (dtype
    and values) of `genforge generate` for the same seed and batch size; bad requests are one clear error
    naming the field; neither path imports torch."""
    import numpy as np

    from serving.generator import iter_samples

    bad = {"n": {"n": 0}, "label": {"n": 2, "label": 3}, "temperature": {"n": 2, "temperature": 0.5},
           "seed": {"n": 2, "seed": -1}, "batch_size": {"n": 2, "batch_size": 0}, "missing": {"seed": 1}}
    proc = subprocess.run([sys.executable, "-c", _PYFUNC_SCRIPT, "digits-vae@champion", "300", "5", "128",
                           str(tmp_path / "gen"), str(tmp_path / "pyfunc.npy"), json.dumps(bad)],
                          cwd=registry_env["root"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["torch"] is False
    shards = np.concatenate([x for x, _ in iter_samples(tmp_path / "gen")])
    predicted = np.load(tmp_path / "pyfunc.npy")
    assert predicted.dtype == shards.dtype == np.uint8 and predicted.shape == (300, 1, 8, 8)
    assert np.array_equal(predicted, shards)
    assert {"n", "seed", "label", "batch_size", "steps", "eta", "temperature"} <= set(result["inputs"])
    import inspect

    from serving.generator import generate
    from serving.pyfunc import DEFAULT_BATCH_SIZE
    assert inspect.signature(generate).parameters["batch_size"].default == DEFAULT_BATCH_SIZE  # same default shards
    errors = result["errors"]
    for key, words in {"n": "n must be an integer > 0, got 0", "label": "label=3 given but the model is "
                       "unconditional", "temperature": "takes no option 'temperature'", "seed": "seed must be",
                       "batch_size": "batch_size must be", "missing": "missing inputs ['n']"}.items():
        assert errors[key] is not None, key
        assert "MlflowException" in errors[key]["classes"] and words in errors[key]["message"], errors[key]
        assert "\n" not in errors[key]["message"] or key == "missing"
    for key in ("n", "label", "temperature", "seed", "batch_size"):
        assert "ServingError" in errors[key]["classes"]


SERVE_REQUEST = {"dataframe_records": [{"n": 4, "seed": 7}]}  # the README's POST body


@pytest.mark.slow  # starts `mlflow models serve` (a uvicorn server), ~10-30 s
def test_mlflow_models_serve_answers_a_post_on_loopback(registry_env, tmp_path):
    """`mlflow models serve -m models:/digits-vae@champion --env-manager local` on a free loopback port: POST
    /invocations returns the samples `genforge generate` writes for the same seed; a bad request is a 400
    naming the field."""
    import os
    import time

    import httpx
    import numpy as np

    from serving.generator import generate, iter_samples
    from serving.resolve import fetch_onnx, resolve
    from tests.conftest import BIN, free_port, stop_process_group

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/digits-vae@champion",
                               "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                              cwd=registry_env["root"], env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "mlflow models serve did not answer in 180 s"
            time.sleep(0.5)
        answer = httpx.post(f"{url}/invocations", json=SERVE_REQUEST, timeout=60)
        assert answer.status_code == 200, answer.text
        predicted = np.asarray(answer.json()["predictions"])
        bad = httpx.post(f"{url}/invocations", json={"dataframe_records": [{"n": 0}]}, timeout=60)
        assert bad.status_code == 400 and "n must be an integer > 0, got 0" in bad.json()["message"], bad.text
    finally:
        stop_process_group(server)
        log.close()
    c = tracking.client()
    local = fetch_onnx(resolve(c, "digits-vae@champion"), tmp_path / "cache")
    generate(local, 4, 7, tmp_path / "gen")
    shards = np.concatenate([x for x, _ in iter_samples(tmp_path / "gen")])
    assert predicted.shape == shards.shape == (4, 1, 8, 8) and np.array_equal(predicted, shards)
