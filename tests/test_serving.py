"""ONNX export (parity, atomic folder) and the ORT batch generator (determinism, resume, bad input).

Tiny real models (8x8 images) keep this file fast: the VAE of genmodels, DCGAN when its module
exists, and a tiny conditional model defined here (no family is conditional yet).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from genmodels.base import GenerativeModel, ModelConfig, OnnxGraph
from genmodels.vae import VAE, VAEConfig
from serving.export import ExportError, export_model
from serving.generator import GenerationError, _locked, cuda_device_works, generate, select_provider

REPO = Path(__file__).resolve().parent.parent
TINY_VAE = dict(image_shape=(1, 8, 8), latent_dim=4, width=4, hidden=16, seed=0)
HAS_DCGAN = importlib.util.find_spec("genmodels.dcgan") is not None


# --- tiny models -----------------------------------------------------------------------------
class _CondNet(nn.Module):
    def __init__(self, latent: int, classes: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        self.fc = nn.Linear(latent, int(np.prod(shape)))
        self.emb = nn.Embedding(classes, int(np.prod(shape)))

    def forward(self, z, labels):
        return torch.sigmoid(self.fc(z) + self.emb(labels)).view(-1, *self.shape)


class _ExportOnly(GenerativeModel):
    """Test doubles that are only exported and served: training and torch sampling are not theirs."""

    def optimizers(self):
        return {}

    def fit_step(self, x, y=None):
        raise NotImplementedError("an export-only test double")

    def sample(self, n, labels=None, generator=None):
        raise NotImplementedError("an export-only test double")


class TinyConditional(_ExportOnly):
    """z ~ U(-1, 1)^4, labels -> 3 x 8 x 8 RGB image: exercises labels, uniform noise, colour previews."""

    family = "tinycond"

    def __init__(self, config: ModelConfig | None = None, latent: int = 4):
        super().__init__(config or ModelConfig(image_shape=(3, 8, 8), num_classes=3))
        torch.manual_seed(0)
        self.latent = latent
        self.net = _CondNet(latent, self.config.num_classes, self.config.image_shape)

    def onnx_graphs(self):
        return [OnnxGraph("generator", self.net.eval(), (torch.zeros(2, self.latent), torch.zeros(2, dtype=torch.long)),
                          ["z", "labels"], ["images"],
                          {"z": {0: "batch"}, "labels": {0: "batch"}, "images": {0: "batch"}})]

    def sampler(self):
        return {"kind": "direct", "graph": "generator", "conditional": True,
                "noise": {"name": "z", "shape": [self.latent], "distribution": "uniform", "low": -1.0, "high": 1.0}}


class _ExportsSomethingElse(nn.Module):
    """A forward that computes something else while being exported: the graph cannot match."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 64)

    def forward(self, z):
        out = torch.sigmoid(self.fc(z)).view(-1, 1, 8, 8)
        return out * 0.5 if torch.onnx.is_in_onnx_export() else out


class _IgnoresLabels(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 64)

    def forward(self, z, labels):
        return torch.sigmoid(self.fc(z)).view(-1, 1, 8, 8)


class TinyModule(_ExportOnly):
    """Wraps any module z (N x 4) [, labels] -> N x 1 x 8 x 8 as a one-graph direct model."""

    family = "tiny"

    def __init__(self, module: nn.Module, with_labels: bool = False):
        super().__init__(ModelConfig(image_shape=(1, 8, 8), num_classes=10))
        self.net, self.with_labels = module, with_labels

    def onnx_graphs(self):
        args, names = (torch.zeros(2, 4),), ["z"]
        if self.with_labels:
            args, names = (*args, torch.zeros(2, dtype=torch.long)), ["z", "labels"]
        return [OnnxGraph("generator", self.net.eval(), args, names, ["images"])]

    def sampler(self):
        return {"kind": "direct", "graph": "generator", "noise": {"name": "z", "shape": [4]},
                "conditional": self.with_labels}


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "vae"
    export_model(VAE(VAEConfig(**TINY_VAE)), out)
    return out


@pytest.fixture(scope="module")
def cond_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "cond"
    export_model(TinyConditional(), out)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# --- export ----------------------------------------------------------------------------------
def test_export_writes_a_servable_folder(vae_dir):
    parity = json.loads((vae_dir / "parity.json").read_text())
    assert parity["passed"] is True and parity["max_abs_error"] <= parity["atol"] == 1e-4
    g = parity["graphs"]["decoder"]
    assert g["passed"] and g["batch_sizes"] == [1, 7] and g["max_abs_error"] <= 1e-4

    spec = json.loads((vae_dir / "sampler.json").read_text())
    assert spec["kind"] == "direct" and spec["graph"] == "decoder" and spec["conditional"] is False
    # the VAE's mixture prior (genmodels/latent_prior.py) draws z from latent_dim + 1 standard normals in the graph
    assert spec["noise"] == {"name": "noise", "shape": [5], "distribution": "normal"}
    assert spec["image_shape"] == [1, 8, 8] and spec["num_classes"] == 10
    entry = spec["graphs"]["decoder"]
    assert entry["file"] == "decoder.onnx" and entry["inputs"] == ["noise"] and entry["outputs"] == ["images"]
    path = vae_dir / "decoder.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]

    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a symbolic (dynamic) batch axis
    assert sorted(p.name for p in vae_dir.iterdir()) == ["decoder.onnx", "parity.json", "sampler.json"]
    assert not [p for p in vae_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.skipif(not HAS_DCGAN, reason="genmodels.dcgan not written yet")
def test_export_dcgan(tmp_path):
    from genmodels.dcgan import DCGAN, DCGANConfig
    fields = {f for f in DCGANConfig.__dataclass_fields__}
    small = {k: v for k, v in dict(image_shape=(1, 8, 8), latent_dim=4, width=4, nz=4, ngf=4, ndf=4).items() if k in fields}
    model = DCGAN(DCGANConfig(**small))
    report = export_model(model, tmp_path / "dcgan")
    assert report["passed"]
    spec = json.loads((tmp_path / "dcgan" / "sampler.json").read_text())
    assert spec["kind"] == "direct" and spec["graph"] == "generator"
    out = generate(tmp_path / "dcgan", 20, 0, tmp_path / "gen", batch_size=8)
    assert sum(s["count"] for s in out["shards"]) == 20


def test_export_parity_failure_leaves_only_a_failed_report(tmp_path, vae_dir):
    out = tmp_path / "model"
    shutil.copytree(vae_dir, out)  # a previous good export is replaced, not mixed with the failure
    with pytest.raises(ExportError, match="parity failed"):
        export_model(TinyModule(_ExportsSomethingElse()), out)  # both exporters tried, both differ
    assert sorted(p.name for p in out.iterdir()) == ["parity.json"]
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] is False and report["max_abs_error"] > report["atol"]
    assert [a["exporter"] for a in report["graphs"]["generator"]["attempts"]] == ["torchscript", "dynamo"]
    with pytest.raises(GenerationError, match="no ONNX graphs.*parity"):
        generate(out, 10, 0, tmp_path / "gen")
    assert not (tmp_path / "gen").exists()


def test_export_refuses_a_graph_that_drops_an_input(tmp_path):
    with pytest.raises(ExportError, match="labels"):
        export_model(TinyModule(_IgnoresLabels(), with_labels=True), tmp_path / "m", exporters=("torchscript",))
    assert not (tmp_path / "m" / "sampler.json").exists()


def test_export_with_the_dynamo_exporter(tmp_path):
    report = export_model(TinyConditional(), tmp_path / "m", exporters=("dynamo",))
    assert report["passed"] and report["graphs"]["generator"]["exporter"] == "dynamo"
    out = generate(tmp_path / "m", 10, 0, tmp_path / "gen", batch_size=4, label=2)
    assert out["complete"]


# --- generation ------------------------------------------------------------------------------
def test_generate_counts_shapes_and_manifest(vae_dir, tmp_path):
    seen = []
    out = generate(vae_dir, 50, 3, tmp_path / "g", batch_size=16, progress=lambda d, t: seen.append((d, t)),
                   model_id={"name": "digits-vae", "version": "3"})
    m = _manifest(tmp_path / "g")
    assert {k: v for k, v in out.items() if k != "run"} == m
    assert m["model"] == {"name": "digits-vae", "version": "3"} and m["sampler"] == "direct"
    assert (m["seed"], m["n"], m["batch_size"], m["label"], m["complete"]) == (3, 50, 16, None, True)
    assert m["provider"] == "CPUExecutionProvider" and m["num_shards"] == 4
    assert [s["count"] for s in m["shards"]] == [16, 16, 16, 2]
    assert [s["file"] for s in m["shards"]] == [f"shards/shard-{k:05d}.npz" for k in range(4)]
    assert seen[0] == (0, 50) and seen[-1] == (50, 50)
    total = 0
    for s in m["shards"]:
        data = (tmp_path / "g" / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        with np.load(tmp_path / "g" / s["file"]) as z:
            assert z["images"].dtype == np.uint8 and z["images"].shape == (s["count"], 1, 8, 8)
            assert z["labels"].dtype == np.int64 and (z["labels"] == -1).all()
            total += len(z["images"])
    assert total == 50
    from PIL import Image
    with Image.open(tmp_path / "g" / "preview.png") as im:
        assert im.size == (8 * 10 + 2, 7 * 10 + 2)  # 50 samples: 8 per row, 7 rows, 2 px gaps


def test_same_seed_gives_the_same_bytes_whatever_the_threads(vae_dir, tmp_path):
    generate(vae_dir, 100, 7, tmp_path / "a", batch_size=32, threads=1)
    generate(vae_dir, 100, 7, tmp_path / "b", batch_size=32, threads=2, spin=True)  # spinning: the same bytes too
    generate(vae_dir, 100, 8, tmp_path / "c", batch_size=32, threads=1)
    a, b, c = (_shard_bytes(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 4
    assert _manifest(tmp_path / "a")["shards"] == _manifest(tmp_path / "b")["shards"]
    assert all(a[k] != c[k] for k in a)  # another seed, other samples
    with np.load(tmp_path / "a" / "shards" / "shard-00000.npz") as z:
        assert len(np.unique(z["images"].reshape(32, -1), axis=0)) == 32  # no repeated noise within a shard


def test_resume_regenerates_exactly_the_damaged_shards(vae_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    generate(vae_dir, 90, 1, ref, batch_size=16)
    generate(vae_dir, 90, 1, out, batch_size=16)
    expected = _files(ref)

    (out / "shards" / "shard-00001.npz").unlink()                       # lost
    torn = out / "shards" / "shard-00003.npz"
    torn.write_bytes(torn.read_bytes()[:100])                             # torn
    m = _manifest(out)
    m["shards"] = m["shards"][:-1]                                        # written, never recorded
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "shards" / ".shard-00002.npz.tmp-99999").write_bytes(b"junk")  # a killed run's temp file

    result = generate(vae_dir, 90, 1, out, batch_size=16)
    assert (result["run"]["generated_shards"], result["run"]["reused_shards"]) == (3, 3)
    assert _files(out) == expected  # byte-identical to the uninterrupted run, no leftovers

    again = generate(vae_dir, 90, 1, out, batch_size=16)  # a complete job: nothing to redo
    assert again["run"]["generated_shards"] == 0 and _files(out) == expected


def test_killed_run_resumes_to_the_same_bytes(vae_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    n, bs = 64 * 40, 64
    generate(vae_dir, n, 5, ref, batch_size=bs)
    code = (f"import time, sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from serving.generator import generate\n"
            f"generate({str(vae_dir)!r}, {n}, 5, {str(out)!r}, batch_size={bs}, "
            "progress=lambda done, total: time.sleep(0.05))\n")  # slow enough to be killed mid-run
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (out / "shards" / "shard-00002.npz").exists():
            assert proc.poll() is None, "the generator exited before it could be killed"
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    m = _manifest(out)
    assert m["complete"] is False and 0 < len(m["shards"]) < 40
    for s in m["shards"]:  # what the manifest lists is there and verified
        assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]

    result = generate(vae_dir, n, 5, out, batch_size=bs)
    assert result["run"]["reused_shards"] >= len(m["shards"]) and result["complete"]
    assert _files(out) == _files(ref)


def test_another_jobs_folder_is_refused_and_untouched(vae_dir, tmp_path):
    out = tmp_path / "g"
    generate(vae_dir, 20, 0, out, batch_size=8)
    before = _files(out)
    for kwargs in (dict(seed=1), dict(batch_size=4), dict(n=21), dict(model_id={"name": "x", "version": "1"})):
        args = dict(n=20, seed=0, batch_size=8) | kwargs
        with pytest.raises(GenerationError, match="another generation job"):
            generate(vae_dir, args.pop("n"), args.pop("seed"), out, **args)
    assert _files(out) == before

    foreign = tmp_path / "foreign"
    (foreign / "shards").mkdir(parents=True)
    (foreign / "shards" / "mine.txt").write_text("not yours")
    with pytest.raises(GenerationError, match="no manifest.json"):
        generate(vae_dir, 20, 0, foreign)
    assert sorted(p.name for p in foreign.rglob("*")) == ["mine.txt", "shards"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be"), (dict(n=-5), "n must be"), (dict(n=2.5), "n must be"),
    (dict(batch_size=0), "batch_size must be"), (dict(seed=-1), "seed must be"),
    (dict(label=1), "unconditional"), (dict(provider="tpu"), "unknown provider"),
    (dict(threads=-1), "threads must be"),
])
def test_bad_arguments_write_nothing(vae_dir, tmp_path, kwargs, match):
    args = dict(n=10, seed=0) | kwargs
    with pytest.raises(GenerationError, match=match):
        generate(vae_dir, args.pop("n"), args.pop("seed"), tmp_path / "g", **args)
    assert not (tmp_path / "g").exists()


def test_bad_model_folders(vae_dir, tmp_path):
    with pytest.raises(GenerationError, match="no sampler.json.*no ONNX graphs"):
        generate(tmp_path, 10, 0, tmp_path / "g1")
    with pytest.raises(GenerationError, match="does not exist"):
        generate(tmp_path / "nope", 10, 0, tmp_path / "g1")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(vae_dir, corrupt)
    (corrupt / "decoder.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(GenerationError, match=r"decoder\.onnx is corrupt"):  # sha256 in sampler.json
        generate(corrupt, 10, 0, tmp_path / "g1")
    spec = json.loads((corrupt / "sampler.json").read_text())
    del spec["graphs"]["decoder"]["sha256"]
    (corrupt / "sampler.json").write_text(json.dumps(spec))
    with pytest.raises(GenerationError, match=r"cannot load ONNX graph .*decoder\.onnx"):  # ORT refuses it
        generate(corrupt, 10, 0, tmp_path / "g1")

    spec["graphs"]["decoder"]["file"] = "../vae/decoder.onnx"
    (corrupt / "sampler.json").write_text(json.dumps(spec))
    with pytest.raises(GenerationError, match="outside"):
        generate(corrupt, 10, 0, tmp_path / "g1")

    spec["graphs"]["decoder"]["file"] = "decoder.onnx"
    spec["kind"] = "teleport"
    (corrupt / "sampler.json").write_text(json.dumps(spec))
    with pytest.raises(GenerationError, match="unknown sampler kind 'teleport'"):
        generate(corrupt, 10, 0, tmp_path / "g1")
    assert not (tmp_path / "g1").exists()


def test_output_paths_stay_inside_out_dir(vae_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(GenerationError, match="is a file"):
        generate(vae_dir, 10, 0, afile)
    assert afile.read_text() == "x"

    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "g"
    out.mkdir()
    (out / "shards").symlink_to(outside, target_is_directory=True)
    with pytest.raises(GenerationError, match="escapes"):
        generate(vae_dir, 10, 0, out)
    assert list(outside.iterdir()) == []


def test_a_second_concurrent_run_is_refused(vae_dir, tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    with _locked(out):
        with pytest.raises(GenerationError, match="another generation run"):
            generate(vae_dir, 10, 0, out)


def test_conditional_labels(cond_dir, tmp_path):
    generate(cond_dir, 10, 0, tmp_path / "k", batch_size=4, label=2)
    labels = np.concatenate([np.load(tmp_path / "k" / "shards" / f"shard-{k:05d}.npz")["labels"] for k in range(3)])
    assert labels.tolist() == [2] * 10
    generate(cond_dir, 10, 0, tmp_path / "all", batch_size=4)
    labels = np.concatenate([np.load(tmp_path / "all" / "shards" / f"shard-{k:05d}.npz")["labels"] for k in range(3)])
    assert labels.tolist() == [i % 3 for i in range(10)]
    with np.load(tmp_path / "all" / "shards" / "shard-00000.npz") as z:
        assert z["images"].shape == (4, 3, 8, 8)
    for bad in (3, -1):
        with pytest.raises(GenerationError, match=r"outside \[0, 3\)"):
            generate(cond_dir, 10, 0, tmp_path / "bad", label=bad)
    assert not (tmp_path / "bad").exists()


def test_png_output_is_bounded(cond_dir, tmp_path):
    out = generate(cond_dir, 12, 0, tmp_path / "g", batch_size=5, png=True)
    assert out["png"] == {"dir": "png", "count": 12}
    assert sorted(p.name for p in (tmp_path / "g" / "png").iterdir()) == [f"{i:07d}.png" for i in range(12)]


def test_select_provider():
    assert select_provider("cpu") == (["CPUExecutionProvider"], "CPUExecutionProvider")
    providers, name = select_provider("auto")
    assert name in providers and providers[-1] == "CPUExecutionProvider"
    with pytest.raises(GenerationError):
        select_provider("tpu")
    if not cuda_device_works():  # a CPU machine, even with onnxruntime-gpu: never CUDA, and "cuda" is an error
        assert name == "CPUExecutionProvider"
        with pytest.raises(GenerationError, match="cuda"):
            select_provider("cuda")


# --- the import rule -------------------------------------------------------------------------
def test_generator_never_imports_torch(vae_dir, tmp_path):
    code = ("import sys\n"
            "import serving.generator as g\n"
            "assert 'torch' not in sys.modules, 'import'\n"
            f"g.generate({str(vae_dir)!r}, 20, 0, {str(tmp_path / 'g')!r}, batch_size=8, png=True)\n"
            "assert 'torch' not in sys.modules, 'generate'\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert _manifest(tmp_path / "g")["complete"]


def test_spin_is_the_sessions_allow_spinning(vae_dir):
    """`genforge generate --spin` lets ORT's intra-op threads busy-wait; off by default (shared CPUs)."""
    from serving.generator import _load_session

    path = next(vae_dir.glob("*.onnx"))
    for spin, value in ((False, "0"), (True, "1")):
        sess = _load_session(path, ["CPUExecutionProvider"], 2, spin)
        assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == value
