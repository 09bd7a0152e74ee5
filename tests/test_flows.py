"""Prefect's real engine: the retrain flow end to end, caching, failure and resume, the generate flow."""
import json

import pytest

from pipelines import tracking
from pipelines.flows import generate_flow, run_retrain
from pipelines.registry import show
from tests.conftest import LOOSE_GATE, tiny_params



def test_retrain_flow_end_to_end_then_generate(project):
    params = tiny_params(*LOOSE_GATE, "model.families=[vae,dcgan]")
    results = run_retrain(params, project)
    for family in ("vae", "dcgan"):
        for stage in ("train", "evaluate", "export", "register", "promote"):
            assert results[f"{stage}:{family}"]["status"] == "ran", (stage, family)
        assert results[f"promote:{family}"]["result"]["decision"] == "promoted"
    out = project / "outputs" / "digits-dcgan"
    summary = generate_flow("digits-dcgan@champion", 500, 0, str(out), str(project))
    assert summary["model"] == "digits-dcgan/1"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["count"] for s in manifest["shards"]) == 500

    # the same run again: data stages cached, training skipped because the champions match data and params
    again = run_retrain(params, project)
    assert again["prepare"]["status"].startswith("skipped") and again["validate"]["status"].startswith("skipped")
    for family in ("vae", "dcgan"):
        assert again[f"train:{family}"]["status"].startswith("skipped: champion")
    assert [r["version"] for r in show("digits-vae")] == [1]


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
