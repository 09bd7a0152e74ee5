"""The trained default ddpm (and its conditional variant) the diffusion benchmarks share, trained once and cached.

``trained(conditional)`` runs the project's own stages (prepare, validate, train) with params.yaml's
defaults, ``model.families: [ddpm]`` (and ``model.ddpm.conditional: true``), in a project folder under
``.genforge/bench/`` (gitignored), once: later calls find ``models/mnist5k/ddpm/model.pt`` there and
return at once. ``bench.json`` beside it records how long the training took (wall seconds, torch threads).

    python -m benchmarks._ddpm_cache [--conditional]     # train now (minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def project(conditional: bool) -> Path:
    """The cached project folder of the (conditional) default ddpm."""
    return ROOT / ".genforge" / "bench" / ("ddpm-conditional" if conditional else "ddpm")


def params(conditional: bool) -> dict:
    from pipelines.config import load_params

    sets = ["model.families=[ddpm]"] + (["model.ddpm.conditional=true"] if conditional else [])
    return load_params(ROOT / "params.yaml", sets)


def trained(conditional: bool = False, log=print) -> Path:
    """models/mnist5k/ddpm of the cached project, training it first when absent. Returns the model folder."""
    root = project(conditional)
    folder = root / "models" / "mnist5k" / "ddpm"
    if (folder / "model.pt").exists() and (root / "bench.json").exists():
        return folder
    import torch

    from pipelines.prepare import prepare
    from pipelines.train import train
    from pipelines.validate import validate

    root.mkdir(parents=True, exist_ok=True)
    p = params(conditional)
    prepare(p, root)
    validate(p, root, root / "data" / "prepared" / "mnist5k")
    log(f"training the default {'conditional ' if conditional else ''}ddpm on mnist5k in {root} ...")
    start = time.perf_counter()
    summary = train(p, root, "ddpm", progress=False)
    seconds = time.perf_counter() - start
    (root / "bench.json").write_text(json.dumps({"train_seconds": round(seconds, 1), "torch_threads":
                                                 torch.get_num_threads(), "epochs": summary.get("epochs")}))
    log(f"trained in {seconds:.0f} s ({torch.get_num_threads()} torch threads)")
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conditional", action="store_true")
    print(trained(ap.parse_args().conditional))
