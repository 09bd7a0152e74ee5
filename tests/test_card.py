"""The model card and the review page as pure functions of a card record (pipelines/card.py, pipelines/review.py).

The registry round trip (the description, model_card.md, `genforge registry review`, Chromium) is in
tests/test_registry.py, on its registered tiny models."""
import base64
import io
import re

import numpy as np
import pytest

from contracts.samplers import SPEC_KINDS
from pipelines import card
from pipelines.gate import gate_decision, resolve_gate
from pipelines.review import GENERATOR, render_review

GATE = resolve_gate({"checks": [{"metric": "fid_ratio", "max": 50}, {"metric": "coverage", "min": 0.2},
                                {"metric": "conditional_accuracy", "min": 0.5, "required": False}],
                     "primary_metric": "fid_ratio", "direction": "minimize", "margin": 0.5})
BASE = {"validated": "true", "parity_max_abs_error": "1e-06", "family": "vae", "dataset": "mnist5k",
        "data_sha256": "ab" * 32, "git_commit": "c0ffee1", "params_hash": "9f" * 32}


def tags(**metrics):
    return {**BASE, **{f"metric.{k}": str(v) for k, v in metrics.items()}}


def record(challenger, champion, *, pending=False, modality="image", sampler="direct", decision=None):
    decision = decision or gate_decision(challenger, champion, GATE)
    if not pending:
        decision = {**decision, "at": "2026-01-02T03:04:05+00:00", "champion_before": "3" if champion else None,
                    "champion_after": "4" if decision["promoted"] else ("3" if champion else None)}
    return {"name": "mnist5k-vae", "version": "4", "run_id": "r" * 32, "tags": {**challenger, "modality": modality},
            "modality": modality, "sampler": sampler, "decision": decision, "pending": pending, "gate": GATE,
            "headline": ["fid", "recall"], "champion": {"version": "3", "tags": champion} if champion else None,
            "grid": {"run_id": "r" * 32, "artifact": "evaluation/samples.png"} if modality == "image" else None,
            "dataset": {"name": "mnist5k", "sha256": "ab" * 32, "validation": "passed (27 checks)"},
            "training": {"epochs": 20.0, "wall_seconds": 95.25}}


CHALLENGER = tags(fid_ratio=12.0, fid=10.8, fid_real_floor=0.9, coverage=0.31, recall=0.4, kid=0.2)
CHAMPION = tags(fid_ratio=20.0, fid=18.0, fid_real_floor=0.9, coverage=0.25, recall=0.5, kid=0.1)


def rows_of(md: str) -> dict[str, list[str]]:
    """{first cell: cells} of every Markdown table row."""
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out.setdefault(cells[0], cells)
    return out


@pytest.mark.parametrize("kind", sorted(SPEC_KINDS))
def test_card_sections_come_in_order_with_every_check_first(kind):
    md = card.render_card(record(CHALLENGER, CHAMPION, sampler=kind))
    order = ["**Decision: ✓ promoted**", "| check | observed | limit | champion v3 | status |", "## Samples",
             "## Metrics against the champion v3", "## Data set", "## Training", "## How to serve it"]
    positions = [md.index(text) for text in order]
    assert positions == sorted(positions), positions
    rows = rows_of(md)
    # every gate check with observed, limit, champion's value and status; data validated and parity included
    assert rows["fid_ratio <= 50"] == ["fid_ratio <= 50", "12", "50", "20", "✓ pass"]
    assert rows["coverage >= 0.2"][1:4] == ["0.31", "0.2", "0.25"] and rows["coverage >= 0.2"][4] == "✓ pass"
    assert rows["conditional_accuracy >= 0.5"][4].startswith("skipped")
    assert rows["parity_max_abs_error <= 0.0001"][4] == "✓ pass" and rows["data validated"][4] == "✓ pass"
    assert rows["fid_ratio beats the champion"][1:3] == ["12", "< 20 − 0.5"]  # the champion's value minus the margin
    assert rows["fid_ratio beats the champion"][4].startswith("✓ pass")
    assert f"sampler: `{kind}`" in md and "epochs: 20, wall time: 95.2 s" in md
    assert "- sha256: `" + "ab" * 32 + "`" in md and "validation: passed (27 checks)" in md
    assert "git commit: `c0ffee1`" in md and "params hash: `" + "9f" * 32 + "`" in md
    assert "genforge generate mnist5k-vae/4 -n 16 --seed 0 --out samples/mnist5k-vae-v4" in md
    assert 'mlflow.pyfunc.load_model("models:/mnist5k-vae/4").predict({"n": 16, "seed": 0})' in md
    # the grid: a link relative to the MLflow UI page (its sanitizer drops data: URIs)
    assert re.search(r"!\[[^\]]+\]\(get-artifact\?path=evaluation%2Fsamples\.png&run_uuid=r{32}\)", md)


def test_metric_deltas_have_the_right_sign_direction_and_floor():
    md = card.render_card(record(CHALLENGER, CHAMPION))
    rows = rows_of(md)
    # challenger minus champion; "better"/"worse" only where the gate gives a direction
    assert rows["fid_ratio"][1:4] == ["12", "20", "-8 (better)"]
    assert rows["coverage"][1:4] == ["0.31", "0.25", "+0.06 (better)"]
    assert rows["recall"][3] == "-0.1" and rows["kid"][3] == "+0.1"
    assert rows["fid"][4] == "0.9"  # the real-data floor beside its metric, not a row of its own
    assert "fid_real_floor" not in rows
    worse = card.render_card(record(CHAMPION, CHALLENGER))
    assert rows_of(worse)["fid_ratio"][3] == "+8 (worse)" and "**Decision: ✗ rejected**" in worse
    assert rows_of(worse)["fid_ratio beats the champion"][4].startswith("✗ fail")


@pytest.mark.parametrize("final", ["awaiting approval", "rejected"])
def test_the_primary_check_shows_the_gates_comparison_not_a_reviewers_decision(final):
    gate = gate_decision(CHALLENGER, CHAMPION, GATE)  # beats the champion: 12 < 20 - 0.5
    reviewed = {**gate, "decision": final, "promoted": False,
                "approval": {"decision": final, "by": "alice", "reason": "blurry 7s"} if final == "rejected" else None}
    md = card.render_card(record(CHALLENGER, CHAMPION, decision=reviewed))
    assert rows_of(md)["fid_ratio beats the champion"][4].startswith("✓ pass")
    assert f"**Decision: {'…' if final == 'awaiting approval' else '✗'} {final}**" in md
    lost = gate_decision(CHAMPION, CHALLENGER, GATE)  # 20 vs 12: the comparison itself fails
    md = card.render_card(record(CHAMPION, CHALLENGER, decision={**lost, "decision": final}))
    assert rows_of(md)["fid_ratio beats the champion"][4].startswith("✗ fail")


def test_pending_card_previews_the_checks_and_a_failing_check_is_not_compared():
    bad = tags(fid_ratio=80.0, coverage=0.1)
    md = card.render_card(record(bad, CHAMPION, pending=True))
    assert md.index("**Decision: pending**") < md.index("| check |")
    rows = rows_of(md)
    assert rows["fid_ratio <= 50"][4] == "would ✗ fail" and rows["data validated"][4] == "would ✓ pass"
    assert rows["fid_ratio beats the champion"][4].startswith("not compared")


def test_first_version_has_no_champion_column_values():
    md = card.render_card(record(CHALLENGER, None))
    assert "## Metrics (no champion to compare with)" in md
    assert rows_of(md)["fid_ratio beats the champion"][4].startswith("✓ pass (no champion to beat")
    assert rows_of(md)["fid_ratio"][2:4] == ["–", "–"]


def test_text_modality_card_has_no_image():
    md = card.render_card(record(CHALLENGER, CHAMPION, modality="tokens", sampler="token_autoregressive"))
    assert "![" not in md and "get-artifact" not in md
    assert "The tokens modality has no image grid" in md


def test_text_card_embeds_the_sample_table_per_class():
    from evaluation.suite.sample_table import markdown_table

    recs = [{"label": i % 3, "class": ("female", "male", "surname")[i % 3], "text": t}
            for i, t in enumerate(["Maya", "Oren", "Castillo", "Li|a", "Tobias", "Nguyen"])]
    text = markdown_table(recs, ["female", "male", "surname"], caption="gpt v2 · seed 0")
    rec = {**record(CHALLENGER, CHAMPION, modality="tokens", sampler="token_autoregressive"),
           "sample_table": {"run_id": "r" * 32, "artifact": "evaluation/samples.md", "text": text}}
    md = card.render_card(rec)
    samples = md[md.index("## Samples"):md.index("## Metrics")]
    assert "| female | male | surname |" in samples and "| Maya | Oren | Castillo |" in samples
    assert "| Li\\|a | Tobias | Nguyen |" in samples  # a | in a sample does not split its cell
    assert "*gpt v2 · seed 0*" in samples and "run artifact `evaluation/samples.md`" in samples
    assert "![" not in md and "no image grid" not in md
    assert len(card.render_card(rec, limit=card.DESCRIPTION_LIMIT)) <= card.DESCRIPTION_LIMIT


def test_description_fits_the_store_limit_and_points_at_the_artifact():
    many = {**CHALLENGER, **{f"metric.extra_metric_{i:03d}": str(i / 7) for i in range(200)}}
    rec = record(many, CHAMPION)
    full = card.render_card(rec)
    short = card.render_card(rec, limit=card.DESCRIPTION_LIMIT)
    assert len(full) > card.DESCRIPTION_LIMIT >= len(short)
    assert "Other metrics:" in full and "Other metrics:" not in short
    assert "*201 other metrics: see the artifact `model_card/v4/model_card.md`.*" in short  # 200 + kid
    assert short.index("| fid_ratio <= 50 |") < short.index("## How to serve it")  # checks and serving kept
    tiny = card.render_card(rec, limit=1500)
    assert len(tiny) <= 1500 and "cut to fit" in tiny and "| fid_ratio <= 50 |" in tiny


def png(seed: int) -> str:
    from PIL import Image

    img = np.random.default_rng(seed).integers(0, 256, (30, 40), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def grid(seed):
    return {"kind": "png", "data": png(seed), "n": 64, "seed": 0, "sampler": "direct", "modality": "image"}


def test_review_page_is_self_contained_with_both_grids_and_signed_deltas():
    page = render_review(record(CHALLENGER, CHAMPION), {"4": grid(1), "3": grid(2)},
                         "challenger v4 against the champion v3", current="3")
    assert page.startswith("<!doctype html>") and GENERATOR in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert images == [png(1), png(2)]  # the challenger's grid first, then the champion's
    for bad in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert bad not in page, bad
    assert "mnist5k-vae: v4 vs champion v3" in page and "Decision on v4" in page
    assert re.search(r'<td class="num better">-8 \(better\)</td>', page)  # fid_ratio
    assert re.search(r'<td>kid</td><td class="num ">0.2</td><td class="num ">0.1</td><td class="num ">\+0.1</td>', page)
    assert "fid_ratio beats the champion" in page and "parity_max_abs_error &lt;= 0.0001" in page


def test_review_page_without_champion_says_so_and_shows_one_grid():
    page = render_review(record(CHALLENGER, None), {"4": grid(1)},
                         "mnist5k-vae has no champion: v4 is shown alone", current=None)
    assert page.count("data:image/png;base64,") == 1
    assert "(no champion to compare)" in page and "has no champion: v4 is shown alone" in page
    assert "delta" not in page


def test_review_page_shows_a_text_preview_escaped():
    text = {"kind": "text", "text": "<b>hello</b>\nworld", "n": 2, "seed": 0, "sampler": "token_autoregressive"}
    page = render_review(record(CHALLENGER, None, modality="tokens"), {"4": text}, "alone", current=None)
    assert "<pre>&lt;b&gt;hello&lt;/b&gt;\nworld</pre>" in page and "data:image" not in page


def test_review_page_shows_text_samples_of_both_versions_side_by_side():
    def text(names):
        return {"kind": "text", "text": "\n".join(names), "n": 3, "seed": 0, "sampler": "token_autoregressive",
                "modality": "tokens"}

    page = render_review(record(CHALLENGER, CHAMPION, modality="tokens"), {"4": text(["Maya", "Oren"]),
                                                                           "3": text(["Mxyq", "Qq"])},
                         "challenger v4 against the champion v3", current="3")
    grids = page[page.index('<div class="grids">'):page.index("<h2>Gate checks</h2>")]
    assert re.findall(r"<pre>(.*?)</pre>", grids, re.S) == ["Maya\nOren", "Mxyq\nQq"]  # this version first
    assert "v4 (this version)" in grids and "v3 (champion)" in grids and "data:image" not in page
