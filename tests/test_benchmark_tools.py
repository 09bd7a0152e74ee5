"""Helpers of the quality benchmarks, without training or evaluating anything: benchmarks/quality_curve.py
--checkpoints (the training seconds of each epoch checkpoint, from the checkpoints' modification times) and
benchmarks/gate_ladder.py's verdict (which rows are decided wrongly) and benchmarks/family_table.py (the
rows it reads from `genforge run` projects)."""
import json
import os

import pytest

from benchmarks.gate_ladder import wrong_decisions
from benchmarks.quality_curve import checkpoint_seconds


def _model_dir(tmp_path, stamps, train_seconds=100.0):
    """A model folder with train.json and checkpoints/epoch-NNNN.pt whose mtimes are ``stamps`` (epoch 1..)."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "train.json").write_text(json.dumps({"train_seconds": train_seconds, "epochs": len(stamps)}))
    for k, stamp in enumerate(stamps, start=1):
        path = tmp_path / "checkpoints" / f"epoch-{k:04d}.pt"
        path.write_bytes(b"")
        os.utime(path, (stamp, stamp))
    return tmp_path


def test_train_seconds_are_shared_by_the_gaps_between_checkpoints(tmp_path):
    # gaps 20, 40, 10 s (epoch 1 taken as long as epoch 2: 20): wall ends 20, 40, 80, 90 of 90 -> of 45 s
    folder = _model_dir(tmp_path, [1030.0, 1050.0, 1090.0, 1100.0], train_seconds=45.0)
    assert checkpoint_seconds(folder, [1, 3, 4]) == pytest.approx({1: 10.0, 3: 40.0, 4: 45.0})


def test_times_that_do_not_increase_fall_back_to_a_linear_share(tmp_path):
    folder = _model_dir(tmp_path, [500.0, 500.0, 500.0, 500.0], train_seconds=80.0)  # a copy that reset them
    assert checkpoint_seconds(folder, [1, 2, 4]) == pytest.approx({1: 20.0, 2: 40.0, 4: 80.0})


def test_one_checkpoint_holds_the_whole_run(tmp_path):
    assert checkpoint_seconds(_model_dir(tmp_path, [7.0], train_seconds=12.5), [1]) == {1: 12.5}


def test_a_missing_checkpoint_is_named(tmp_path):
    folder = _model_dir(tmp_path, [1.0, 2.0])
    with pytest.raises(FileNotFoundError, match="epoch-0005.pt"):
        checkpoint_seconds(folder, [2, 5])


def _row(rung, decision, failed="-"):
    on_checks = "rejected" if [f for f in failed.split(", ") if f != "-" and not f.startswith("no ")] else "promoted"
    return {"family": "pixelcnn", "seed": "0", "rung": rung, "decision": decision, "failed checks": failed,
            "on checks": on_checks}


def test_a_sample_set_rejected_only_for_its_missing_bits_per_dim_counts_as_promoted():
    rows = [_row("good (data)", "rejected", "no bits_per_dim"),            # right: its checks pass
            _row("noise (data)", "rejected", "coverage, no bits_per_dim"),  # right: a check rejects it
            _row("blurred_model", "rejected", "no bits_per_dim"),         # wrong: only the missing metric
            _row("epoch1", "promoted"),                                    # wrong: a model, gate promoted it
            _row("default", "rejected", "no bits_per_dim")]                # wrong: a model must have it
    assert wrong_decisions(rows) == [("pixelcnn", "0", "blurred_model"), ("pixelcnn", "0", "epoch1"),
                                     ("pixelcnn", "0", "default")]


def test_rows_without_on_checks_are_judged_by_the_decision():
    rows = [{"family": "vae", "seed": "1", "rung": r, "decision": d} for r, d in
            [("good (data)", "promoted"), ("replay (data)", "promoted"), ("default", "promoted")]]
    assert wrong_decisions(rows) == [("vae", "1", "replay (data)")]


def test_on_checks_leaves_out_only_the_missing_primary_metric():
    from benchmarks.gate_ladder import _decide
    from pipelines.config import load_params
    from tests.conftest import REPO

    check = "registry.families.pixelcnn.checks=[{metric: bits_per_dim, max: 0.14}]"
    params = load_params(REPO / "params.yaml", [check])
    good = {"fid_ratio": 1.0, "coverage": 0.68, "class_coverage": 1.0, "mode_collapse": False, "copy_rate": 0.01}
    sample_set = _decide({k: {"value": v} for k, v in good.items()}, params, "pixelcnn")
    assert sample_set["decision"] == "rejected" and sample_set["on_checks"] == "promoted"
    assert "no bits_per_dim" in sample_set["failed"]
    model = _decide({k: {"value": v} for k, v in {**good, "bits_per_dim": 0.15}.items()}, params, "pixelcnn")
    assert model["decision"] == model["on_checks"] == "rejected" and model["failed"] == ["bits_per_dim"]
    blurred = _decide({k: {"value": v} for k, v in {**good, "coverage": 0.01}.items()}, params, "pixelcnn")
    assert blurred["on_checks"] == "rejected" and "coverage" in blurred["failed"]


def _ladder_row(family, seed, rung, fid_ratio, coverage, decision="promoted"):
    metrics = {"fid_ratio": {"value": fid_ratio}, "coverage": {"value": coverage}, "class_coverage": {"value": 1.0},
               "mode_collapse": {"value": False}, "copy_rate": {"value": 0.0}}
    return {"family": family, "seed": str(seed), "rung": rung, "epochs": "10", "train_s": str(100 + seed),
            "fid_ratio": str(fid_ratio), "coverage": str(coverage), "recall": "0.9", "class_coverage": "1.0",
            "copy_rate": "0.0", "conditional_accuracy": "-", "bits_per_dim": "-", "decision": decision,
            "failed checks": "-", "on checks": decision, "metrics": metrics}


def test_report_decides_stored_rows_again_with_a_new_limit():
    # a threshold change replayed on stored rows: min_coverage 0.05 rejects the 0.04 model, keeps the 0.06 one
    from benchmarks.gate_ladder import redecide, wrong_decisions

    rows = [_ladder_row("vae", 0, "epoch1", 240.0, 0.04), _ladder_row("vae", 0, "default", 168.0, 0.06)]
    assert wrong_decisions(redecide(rows, ["registry.min_coverage=0.03"])) == [("vae", "0", "epoch1")]
    again = redecide(rows, ["registry.min_coverage=0.05"])
    assert [r["decision"] for r in again] == ["rejected", "promoted"] and again[0]["failed checks"] == "coverage"
    assert wrong_decisions(again) == []
    old = {k: v for k, v in rows[0].items() if k != "metrics"}  # a file written before rows kept their metrics
    assert redecide([old], ["registry.min_coverage=0.05"])[0]["decision"] == "promoted"  # its stored decision


def test_family_table_gives_median_and_range_over_seeds():
    from benchmarks.gate_ladder import family_table

    rows = [_ladder_row("dcgan", s, "default", r, c) for s, r, c in ((0, 108.0, 0.19), (1, 121.0, 0.15),
                                                                     (2, 110.0, 0.2))]
    rows.append(_ladder_row("dcgan", 0, "epoch1", 1500.0, 0.01, "rejected"))
    (line,) = family_table(rows, ["dcgan", "vae"])
    assert line["fid_ratio"] == "110x (108x-121x)" and line["coverage"] == "0.190 (0.150-0.200)"
    assert line["train s"] == "101 (100-102)" and line["decision"] == "3/3 promoted" and line["seeds"] == "0,1,2"
    assert line["bits_per_dim"] == "-"


def _run_project(root, family, seed, fid_ratio, decision, conditional=False):
    """The four files `genforge run` leaves for one family (only the keys family_table.py reads)."""
    model, report = root / "models" / "mnist5k" / family, root / "reports" / "mnist5k" / family
    model.mkdir(parents=True)
    report.mkdir(parents=True)
    (model / "train.json").write_text(json.dumps({"epochs": 25, "train_seconds": 130.4}))
    (model / "config.json").write_text(json.dumps({"family": family,
                                                   "config": {"seed": seed, "conditional": conditional}}))
    (report / "metrics.json").write_text(json.dumps({"metrics": {"fid_ratio": {"value": fid_ratio},
                                                                 "coverage": {"value": 0.2}}}))
    checks = [{"metric": "fid_ratio", "status": "failed" if decision == "rejected" else "passed"}]
    (report / "promotion.json").write_text(json.dumps({"decision": decision, "checks": checks}))


def test_family_table_reads_the_runs_seed_variant_and_gate_decision(tmp_path):
    from benchmarks.family_table import project_rows
    from benchmarks.gate_ladder import family_table

    for seed, ratio in ((0, 108.0), (1, 121.0)):
        _run_project(tmp_path / f"s{seed}", "dcgan", seed, ratio, "promoted")
    _run_project(tmp_path / "c0", "dcgan", 0, 49.0, "promoted", conditional=True)
    _run_project(tmp_path / "s0", "realnvp", 0, 471.0, "rejected")
    rows = [r for p in ("s0", "s1", "c0") for r in project_rows(tmp_path / p)]
    assert sorted((r["family"], r["seed"], r["decision"]) for r in rows) == [
        ("dcgan", "0", "promoted"), ("dcgan", "1", "promoted"), ("dcgan_cond", "0", "promoted"),
        ("realnvp", "0", "rejected")]
    realnvp = next(r for r in rows if r["family"] == "realnvp")
    assert realnvp["failed checks"] == "fid_ratio" and realnvp["rung"] == "default" and realnvp["train_s"] == "130"
    lines = {line["family"]: line for line in family_table(rows, ["dcgan", "dcgan_cond", "realnvp"])}
    assert lines["dcgan"]["fid_ratio"] == "114x (108x-121x)" and lines["dcgan"]["decision"] == "2/2 promoted"
    assert lines["realnvp"]["decision"] == "0/1 promoted"


def test_family_table_names_a_missing_file(tmp_path):
    from benchmarks.family_table import project_rows

    with pytest.raises(FileNotFoundError, match="no models"):
        project_rows(tmp_path)
    _run_project(tmp_path, "vae", 0, 58.0, "promoted")
    (tmp_path / "reports" / "mnist5k" / "vae" / "promotion.json").unlink()
    with pytest.raises(ValueError, match="promotion.json"):
        project_rows(tmp_path)


def test_family_table_says_which_rows_are_not_todays_default(tmp_path):
    import json

    from benchmarks.family_table import project_rows

    _run_project(tmp_path / "a", "dcgan", 0, 108.0, "promoted")
    ((row,),) = [project_rows(tmp_path / "a")]
    assert row["settings"] == "default"
    config = tmp_path / "b" / "models" / "mnist5k" / "dcgan" / "config.json"
    _run_project(tmp_path / "b", "dcgan", 0, 108.0, "promoted")
    config.write_text(json.dumps({"config": {"seed": 0}, "training": {"epochs": 3, "lr_g": 1e-3}}))
    from genmodels.dcgan import DCGANConfig

    shipped = DCGANConfig()  # params.yaml sets neither field for the dcgan
    assert project_rows(tmp_path / "b")[0]["settings"] == \
        f"lr_g=0.001 (default {shipped.lr_g}), epochs=3 (default {shipped.epochs})"
    config.write_text(json.dumps({"config": {"seed": 0}, "training": {"ema_decay": 1.5}}))
    assert project_rows(tmp_path / "b")[0]["settings"].startswith("not valid today: ema_decay must be in [0, 1)")
