"""benchmarks/quality_curve.py --checkpoints: the training seconds of each epoch checkpoint, read from the
checkpoints' modification times (no training, no torch)."""
import json
import os

import pytest

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


def test_seconds_come_from_the_gaps_to_the_last_checkpoint(tmp_path):
    # epochs ended at 1,000 + 30, 50, 90, 100 s: the last is train_seconds (100), epoch 1 ends 70 s before it
    folder = _model_dir(tmp_path, [1030.0, 1050.0, 1090.0, 1100.0])
    assert checkpoint_seconds(folder, [1, 3, 4]) == {1: 30.0, 3: 90.0, 4: 100.0}


def test_times_that_do_not_increase_fall_back_to_a_linear_share(tmp_path):
    folder = _model_dir(tmp_path, [500.0, 500.0, 500.0, 500.0], train_seconds=80.0)  # a copy that reset them
    assert checkpoint_seconds(folder, [1, 2, 4]) == {1: 20.0, 2: 40.0, 4: 80.0}


def test_a_missing_checkpoint_is_named(tmp_path):
    folder = _model_dir(tmp_path, [1.0, 2.0])
    with pytest.raises(FileNotFoundError, match="epoch-0005.pt"):
        checkpoint_seconds(folder, [2, 5])
