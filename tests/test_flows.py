"""Prefect's real engine: the retrain flow end to end, caching, failure and resume, the generate flow."""
import json

import pytest

from pipelines import tracking
from pipelines.flows import generate_flow, run_retrain
from pipelines.registry import show
from tests.conftest import LOOSE_GATE, tiny_params



def _api(path: str, body: dict) -> list[dict]:
    """Prefect's REST API, through its client (3.8.8's read_artifacts sends nulls its own server refuses)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        reply = client.request("POST", path, json={"offset": 0, "limit": 200, **body})
        reply.raise_for_status()
        return reply.json()


def _latest_run(flow: str) -> tuple[dict[str, dict], dict[str, str]]:
    """The latest run of `flow`: its task runs by name ({"state", "message"}) and its artifacts (key -> data)."""
    run = _api("/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_DESC", "limit": 1})[0]
    tasks = _api("/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})
    arts = _api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}, "sort": "CREATED_DESC"})
    return ({t["name"]: {"state": t["state"]["name"], "message": t["state"]["message"] or ""} for t in tasks},
            {a["key"]: a["data"] for a in arts})


def test_retrain_flow_end_to_end_then_generate(project, caplog, capfd):
    params = tiny_params(*LOOSE_GATE, "model.families=[vae,dcgan]")
    results = run_retrain(params, project)
    for family in ("vae", "dcgan"):
        for stage in ("train", "evaluate", "export", "register", "promote"):
            assert results[f"{stage}:{family}"]["status"] == "ran", (stage, family)
        assert results[f"promote:{family}"]["result"]["decision"] == "promoted"
    # what an operator sees in Prefect's UI: task names with the data set or family, one artifact per family
    tasks, artifacts = _latest_run("retrain")
    assert list(tasks) == ["source-digits", "prepare-digits", "validate-digits",
                           *[f"{s}-{f}" for f in ("vae", "dcgan")
                             for s in ("train", "evaluate", "export", "register", "promote")]]
    assert set(artifacts) == {"digits-vae-decision", "digits-dcgan-decision"}
    card = artifacts["digits-vae-decision"]
    assert "# digits-vae: ✓ promoted" in card and "**fid_ratio** (primary)" in card
    assert "#/models/digits-vae/versions/1" in card
    assert "mlflow ui --backend-store-uri" in card and "reports/digits/vae/plots/samples.png" in card
    assert not any("docs site" in r.getMessage() for r in caplog.records)  # GX's temp docs folder is not made

    out = project / "outputs" / "digits-dcgan"
    capfd.readouterr()
    summary = generate_flow("digits-dcgan@champion", 500, 0, str(out), str(project))
    assert "Downloading artifacts" not in capfd.readouterr().err  # no MLflow tqdm bar in the job's output
    assert summary["model"] == "digits-dcgan/1" and summary["samples_per_s"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["count"] for s in manifest["shards"]) == 500
    table = json.loads(_latest_run("generate")[1]["digits-dcgan-generation"])
    assert table[0]["model"] == "digits-dcgan/1" and table[0]["n"] == 500 and table[0]["out_dir"] == str(out)

    # the same run again: data stages cached, training skipped because the champions match data and params
    again = run_retrain(params, project)
    assert again["prepare"]["status"].startswith("skipped") and again["validate"]["status"].startswith("skipped")
    for family in ("vae", "dcgan"):
        assert again[f"train:{family}"]["status"].startswith("skipped: champion")
    assert [r["version"] for r in show("digits-vae")] == [1]
    tasks, artifacts = _latest_run("retrain")
    assert tasks["prepare-digits"]["state"] == "Cached"
    assert tasks["train-vae"]["state"] == "Skipped" and "nothing new to train" in tasks["train-vae"]["message"]
    assert "# digits-vae: – skipped" in artifacts["digits-vae-decision"]


def test_a_failing_stage_stops_the_flow_and_a_fixed_rerun_resumes_there(project):
    # a setting only the evaluate stage can find wrong (the weights file is looked for when evaluate starts)
    broken = tiny_params(*LOOSE_GATE, "model.families=[vae]", f"evaluation.inception_weights={project / 'nope.pt'}")
    with pytest.raises(Exception, match="evaluation.inception_weights: .*nope.pt: no such file"):
        run_retrain(broken, project)
    c = tracking.client()
    assert c.search_registered_models() == []  # nothing reached the registry
    assert (project / "models" / "digits" / "vae" / "model.pt").exists()

    fixed = tiny_params(*LOOSE_GATE, "model.families=[vae]")
    results = run_retrain(fixed, project)
    assert results["train:vae"]["status"].startswith("skipped (cached")
    assert results["evaluate:vae"]["status"] == "ran"
    assert results["promote:vae"]["result"]["decision"] == "promoted"
