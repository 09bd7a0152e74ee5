"""The trained default ddpm (and its conditional variant) the diffusion benchmarks share, trained once and cached.

``trained(conditional)`` runs the project's own stages (prepare, validate, train) with params.yaml's
defaults, ``model.families: [ddpm]`` (and ``model.ddpm.conditional: true``), in a project folder under
``.genforge/bench/`` (gitignored), once: later calls find ``models/mnist5k/ddpm/model.pt`` there and
return at once, unless its training fingerprint (train.json) is not today's (a default changed): then it is
trained again. ``bench.json`` beside it records how long the training took (wall seconds, torch threads). A variant
(``sets``: more ``--set key=value`` overrides, e.g. ``model.ddpm.epochs=40``) is cached in its own folder,
``ddpm[-conditional]-<hash of the sets>``, and its bench.json records the sets.

    python -m benchmarks._ddpm_cache [--conditional] [--set model.ddpm.epochs=40]   # train now (minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def project(conditional: bool, sets: tuple[str, ...] = ()) -> Path:
    """The cached project folder of the (conditional) default ddpm, or of its variant with ``sets``."""
    name = "ddpm-conditional" if conditional else "ddpm"
    if sets:
        name += "-" + hashlib.sha256("\n".join(sets).encode()).hexdigest()[:8]
    return ROOT / ".genforge" / "bench" / name


def params(conditional: bool, sets: tuple[str, ...] = ()) -> dict:
    """params.yaml with model.families=[ddpm] (conditional: model.ddpm.conditional=true), then ``sets``."""
    from pipelines.config import load_params

    base = ["model.families=[ddpm]"] + (["model.ddpm.conditional=true"] if conditional else [])
    return load_params(ROOT / "params.yaml", base + list(sets))


def trained(conditional: bool = False, log=print, sets: tuple[str, ...] = ()) -> Path:
    """models/mnist5k/ddpm of the cached project, training it first when absent. Returns the model folder."""
    root = project(conditional, sets)
    folder = root / "models" / "mnist5k" / "ddpm"
    p = params(conditional, sets)
    if (folder / "model.pt").exists() and (root / "bench.json").exists():
        from pipelines.train import trained_with_fingerprint

        if trained_with_fingerprint(p, root, "ddpm"):  # today's defaults: a cache made before a change retrains
            return folder
    import torch

    from pipelines.prepare import prepare
    from pipelines.train import train
    from pipelines.validate import validate

    root.mkdir(parents=True, exist_ok=True)
    prepare(p, root)
    validate(p, root, root / "data" / "prepared" / "mnist5k")
    log(f"training the default {'conditional ' if conditional else ''}ddpm on mnist5k in {root} ...")
    start = time.perf_counter()
    summary = train(p, root, "ddpm", progress=False)
    seconds = time.perf_counter() - start
    (root / "bench.json").write_text(json.dumps({"train_seconds": round(seconds, 1), "torch_threads":
                                                 torch.get_num_threads(), "epochs": summary.get("epochs"),
                                                 "sets": list(sets)}))
    log(f"trained in {seconds:.0f} s ({torch.get_num_threads()} torch threads)")
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conditional", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="a params override (repeatable): a variant")
    a = ap.parse_args()
    print(trained(a.conditional, sets=tuple(a.set)))


class Scorer:
    """The evaluate stage's FID ratio and conditional accuracy for arrays of samples, on the cached project.

    The domain classifier is the project's (``catalog.classifier_cache``, trained once per data version),
    N = ``evaluation.num_samples`` capped at the test split (1,000 on mnist5k), the floor is the first N test
    images vs the train split, as ``evaluation.suite.base.EvalContext`` computes them.
    """

    def __init__(self, conditional: bool = False, sets: tuple[str, ...] = (), root: Path | None = None):
        """``root``: another project folder (its prepared mnist5k and classifier cache) instead of the cached one."""
        from evaluation import classifier as clf_lib
        from evaluation.metrics import fid
        from pipelines import catalog
        from pipelines.validate import require_validated

        root = Path(root) if root is not None else project(conditional, sets)
        ev = params(conditional, sets)["evaluation"]
        self.ds = require_validated(root, root / "data" / "prepared" / "mnist5k")
        (train_x, train_y), (test_x, test_y) = self.ds.load("train"), self.ds.load("test")
        self.n = min(int(ev["num_samples"]), len(test_x))
        self.seed = int(ev["seed"])
        self.clf, info = clf_lib.load_or_train_classifier(
            catalog.classifier_cache(root), self.ds.sha256, train_x, train_y, int(self.ds.num_classes),
            test_images=test_x, test_labels=test_y, seed=self.seed, epochs=int(ev["classifier"]["epochs"]))
        self.classifier_accuracy = float(info["test_accuracy"])
        self.train_feats, _ = clf_lib.extract(self.clf, train_x)
        test_feats, _ = clf_lib.extract(self.clf, test_x[:self.n])
        self.floor = fid(self.train_feats, test_feats)
        self._extract, self._fid = clf_lib.extract, fid

    def accuracy(self, images, labels) -> float:
        """The domain classifier's share of ``images`` (float [0, 1]) assigned to ``labels``."""
        _, logits = self._extract(self.clf, images)
        return float((logits.argmax(1) == labels).mean())

    def score(self, images, labels=None) -> dict:
        """{fid, fid_ratio[, conditional_accuracy]} of float [0, 1] N x C x H x W samples (N = self.n)."""
        feats, logits = self._extract(self.clf, images)
        value = self._fid(self.train_feats, feats)
        out = {"fid": value, "fid_ratio": value / max(self.floor, 1e-12)}
        if labels is not None:
            out["conditional_accuracy"] = float((logits.argmax(1) == labels).mean())
        return out


def onnx_model(conditional: bool, out_dir: Path, sets: tuple[str, ...] = ()):
    """(the trained model, its exported folder under out_dir, sessions as the generator loads them)."""
    from pipelines.train import load_model
    from serving.export import export_model

    model = load_model(trained(conditional, sets=sets)).eval()
    folder = Path(out_dir) / project(conditional, sets).name
    if not (folder / "sampler.json").exists():
        export_model(model, folder)
    return model, folder


def sessions(folder: Path, threads: int | None):
    """(typed spec, {graph: session}) with serving.generator's own session options."""
    from contracts.samplers import as_spec
    from serving.generator import _load_session

    raw = json.loads((folder / "sampler.json").read_text())
    return as_spec(raw), {g: _load_session(folder / f["file"], ["CPUExecutionProvider"], threads)
                          for g, f in raw["graphs"].items()}


def generate(spec, sess, n: int, *, seed: int = 0, batch_size: int = 256, label=None, num_classes: int = 10):
    """(float32 n x C x H x W in [0, 1], labels, wall seconds) the way ``genforge generate`` draws them
    (serving.generator.shard_samples per batch of batch_size)."""
    import numpy as np

    from serving.generator import shard_samples

    start = time.perf_counter()
    parts = [shard_samples(spec, sess, k, min(batch_size, n - k * batch_size), seed=seed, batch_size=batch_size,
                           label=label, num_classes=num_classes, image_shape=tuple(spec.noise.shape))
             for k in range(-(-n // batch_size))]
    seconds = time.perf_counter() - start
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), seconds
