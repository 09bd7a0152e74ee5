"""Batch-parallel serving (serving/ort_parallel.py): one ONNX Runtime session run on slices of the batch from
several threads gives the very bytes of one call on the whole batch, in the wrapper and through
`generate` for every sampler kind it applies to; the text sampler keeps ONNX Runtime's intra-op threads.
Default run, a few seconds (tiny exported models, real ONNX Runtime sessions)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from genmodels import build_model
from serving import ort_parallel
from serving.export import export_model
from serving.generator import GenerationError, _load_session, generate
from serving.ort_parallel import BatchParallelSession, load_sessions

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = ["CPUExecutionProvider"]


def _spread(model, scale: float = 0.1):
    """Untrained nets have zero-initialised output convs (a constant output would hide a wrong slice): spread
    every weight a little, seeded."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """One tiny exported model per batch-parallel sampler kind: direct (VAE), ddim with classifier-free guidance
    (the denoiser sees the doubled batch), autoregressive (PixelCNN's cached row/pixel steps), flow (RealNVP)."""
    root = tmp_path_factory.mktemp("par")
    export_model(build_model("vae", dict(image_shape=(1, 8, 8), latent_dim=4, width=4, hidden=16, seed=0)).eval(),
                 root / "vae")
    ddpm = build_model("ddpm", dict(image_shape=(1, 8, 8), base_channels=8, channel_mult=(1, 2), timesteps=50,
                                    sample_steps=3, num_classes=10, conditional=True, seed=0))
    export_model(_spread(ddpm), root / "ddpm")
    export_model(_spread(build_model("pixelcnn", dict(image_shape=(1, 4, 4), channels=8, layers=3,
                                                      head_channels=16, seed=0))), root / "pixelcnn")
    export_model(_spread(build_model("realnvp", dict(image_shape=(1, 8, 8), hidden=8, blocks=1, scales=2, seed=0)),
                         0.02), root / "realnvp")
    return root


@pytest.fixture
def always_split(monkeypatch):
    """Split every batch of >= 4 rows into chunks of >= 2 (the timing rule would run these tiny graphs whole) and
    record the chunk bounds of every call."""
    monkeypatch.setattr(ort_parallel, "MIN_SLICE", 2)
    monkeypatch.setattr(ort_parallel, "SPLIT_MIN_S", 0.0)
    seen: list[list[int]] = []
    bounds = BatchParallelSession.bounds

    def spy(self, feed):
        out = bounds(self, feed)
        seen.append(out)
        return out

    monkeypatch.setattr(BatchParallelSession, "bounds", spy)
    return seen


def _digests(out: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").iterdir())]


@pytest.mark.parametrize("family", ["vae", "ddpm", "pixelcnn", "realnvp"])
def test_batch_parallel_generation_gives_the_same_bytes_as_one_thread(models, family, always_split, tmp_path):
    # 11 samples in shards of 7 and 4: chunks of 7 rows 3+2+2, 4 rows 2+2 (ddpm's guided calls: 14 and 8 rows)
    one = generate(models / family, 11, 3, tmp_path / "one", batch_size=7, threads=1)
    assert one["run"]["parallel"] == "batch" and not any(b and len(b) > 2 for b in always_split)  # 1 thread: whole
    par = generate(models / family, 11, 3, tmp_path / "par", batch_size=7, threads=3)
    ops = generate(models / family, 11, 3, tmp_path / "ops", batch_size=7, threads=2, parallel="ops")
    split = [b for b in always_split if b and b[-1] > 2]  # the probe (1 sample, 2 rows guided) aside
    rows = {b[-1] for b in split}  # both shards' calls really chunked (uneven chunks: the wrapper's own test)
    assert len(rows) >= 2 and all(len(b) >= 3 for b in split)
    assert _digests(tmp_path / "one") == _digests(tmp_path / "par") == _digests(tmp_path / "ops")
    assert one["shards"] == par["shards"] == ops["shards"]


def test_wrapper_slices_only_the_batch_and_decides_by_the_time_a_call_takes(models):
    sess = _load_session(models / "vae" / "decoder.onnx", CPU, 1)
    whole = BatchParallelSession(sess, 1)
    par = BatchParallelSession(sess, 2, min_slice=4, split_min_s=0.0)
    name, dim = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[1]  # the VAE's mixture prior: "noise", latent + 1
    z = np.random.default_rng(0).standard_normal((9, dim), dtype=np.float32)
    assert whole.bounds({name: z}) is None and par.bounds({name: z}) == [0, 5, 9]
    chunked = BatchParallelSession(sess, 2, min_slice=1, split_min_s=0.0, chunks_per_worker=3)
    assert chunked.bounds({name: z}) == [0, 2, 4, 6, 7, 8, 9]  # 2 threads x 3 chunks, taken as threads free up
    assert chunked.run(None, {name: z})[0].tobytes() == sess.run(None, {name: z})[0].tobytes()
    assert par.bounds({name: z[:7]}) == [0, 7]                # 7 // 4 = 1 slice: whole (timed)
    assert par.get_inputs()[0].name == name and par.splittable  # the session's own attributes
    ref = sess.run(None, {name: z})[0]
    assert np.array_equal(par.run(None, {name: z})[0], ref) and par.run(None, {name: z})[0].tobytes() == ref.tobytes()
    assert par.row_s is not None and par.row_s > 0           # timed on the calling thread
    slow = BatchParallelSession(sess, 2, min_slice=1, split_min_s=1.0, chunks_per_worker=1)
    slow.row_s = 1.0                                          # 9 rows x 1 s >= 1 s: split
    assert slow.bounds({name: z}) == [0, 5, 9]
    slow.row_s = 1e-6                                         # 9 us < 1 s: whole
    assert slow.bounds({name: z}) == [0, 9]
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):  # a slice's error reaches the caller
        par.run(None, {name: z.astype(np.float64)})
    with pytest.raises(ValueError, match="workers"):
        BatchParallelSession(sess, 0)


def test_graphs_without_a_batch_axis_run_whole(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.zeros(6, 3),), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    sess = BatchParallelSession(_load_session(path, CPU, 1), 2, min_slice=1, split_min_s=0.0)
    x = np.ones((6, 3), np.float32)
    assert not sess.splittable and sess.bounds({"x": x}) is None
    assert sess.run(["y"], {"x": x})[0].shape == (6, 2)


def test_which_sessions_split_the_batch(models):
    files = {"decoder": models / "vae" / "decoder.onnx"}

    def load(path, threads):
        return _load_session(path, CPU, threads)

    assert isinstance(load_sessions(files, load, 2, "batch", "direct", CPU)["decoder"], BatchParallelSession)
    assert isinstance(load_sessions(files, load, None, "batch", "ddim", CPU)["decoder"], BatchParallelSession)
    for threads, parallel, kind, providers in ((2, "ops", "direct", CPU), (1, "batch", "direct", CPU),
                                               (2, "batch", "token_autoregressive", CPU),
                                               (2, "batch", "direct", ["CUDAExecutionProvider", *CPU])):
        sess = load_sessions(files, load, threads, parallel, kind, providers)["decoder"]
        assert isinstance(sess, ort.InferenceSession)  # ONNX Runtime's intra-op threads, as asked
        assert sess.get_session_options().intra_op_num_threads == threads
    with pytest.raises(ValueError, match="parallel"):
        load_sessions(files, load, 2, "rows", "direct", CPU)


def test_parallel_setting_errors(models, tmp_path):
    with pytest.raises(GenerationError, match=r"parallel \(--parallel\) must be one of batch, ops"):
        generate(models / "vae", 4, 0, tmp_path / "a", parallel="rows")
    with pytest.raises(GenerationError, match=r"spin .*needs parallel='ops'"):
        generate(models / "vae", 4, 0, tmp_path / "b", spin=True, parallel="batch")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    spun = generate(models / "vae", 4, 0, tmp_path / "c", threads=2, spin=True)  # --spin alone: intra-op threads
    assert spun["run"]["parallel"] == "ops"


def test_graph_speed_times_the_batch_parallel_session_and_checks_its_bytes(tmp_path):
    from benchmarks.graph_speed import measure_graph

    model = build_model("vae", dict(image_shape=(1, 8, 8), latent_dim=4, width=4, hidden=16, seed=0)).eval()
    export_model(model, tmp_path / "vae")
    rates, _ = measure_graph(model.onnx_graphs()[0], tmp_path / "vae" / "decoder.onnx", 32, 2, 0,
                             methods=("ort", "ort_par"), rounds=1, seconds=0.01, clock="cpu")
    assert rates["ort"] > 0 and rates["ort_par"] > 0 and rates["par_max_diff"] == 0.0
