"""The known-bad ladder, full: every rung of issue #14 for every sampler family, evaluated by the project's
metric suite and decided by the real promotion gate (``pipelines.gate``) with the per-family thresholds of
params.yaml. Prints one table per family (rung x metrics x decision, and the checks that rejected it) and a
summary (rung x family: the decision).

Rungs of each family:
- ``untrained``: the family's model with fresh weights (the training seed);
- ``1 epoch``: the default training's epoch-1 checkpoint (the model after one epoch of that run);
- ``blurred model``: the default model's samples blurred (Gaussian, sigma 1.5 px at 28 px);
- ``default``: the family's default-trained model (``genforge stage train`` with params.yaml);
and the family-independent rungs, built from the data once (``evaluation/ladder.py``) and decided with each
family's gate: ``noise``, ``one_class``, ``ten_prototypes``, ``replay``, ``blurred`` (blurred test images)
and ``good`` (held-out test images, which a family's gate must accept too).

Trained models are cached under ``.genforge/gate_ladder/<dataset>/<variant>-s<seed>/`` (gitignored): the real
trainer (``pipelines.train.train``, MLflow in ``.genforge/gate_ladder/mlflow.db``), retrained only when the
training fingerprint changes, so a rerun after a threshold change only evaluates (after a change to a family's
code, which the fingerprint does not cover, pass --retrain).

The metrics are the ones the gate reads (fid, prdc, class coverage and KL, mode collapse, copy_rate,
conditional accuracy; nll for likelihood families, whose primary metric is bits/dim) plus the sample grid;
``anomaly``, ``kid`` and the latent plots do not enter the gate and are not run.

Each row of ``--json`` keeps the full metrics the gate read, so ``--report FILE [FILE ...]`` decides the stored
rows again with the current params.yaml (and ``--set``) without training or evaluating: a threshold change is
replayed on every measured rung and seed in seconds (when two files hold a row for the same family, seed and rung,
the later file's wins: ``benchmarks/family_table.py --json`` gives the default rows of measured ``genforge run``
projects). Both print the **family table**: each family's default model over its seeds (median and range of the
gate's metrics, training epochs and seconds, the decisions).

Usage: python benchmarks/gate_ladder.py [--families vae,dcgan,...] [--quick] [--seeds 0,1,2]
       [--set key=value ...] [--retrain] [--json FILE]
       python benchmarks/gate_ladder.py --report FILE [FILE ...] [--set key=value ...]
  families: vae, cvae, dcgan, dcgan_cond (dcgan with conditional: true), wgan_gp, ddpm, pixelcnn, realnvp
  --quick: the 8x8 digits (evaluation N = 200) instead of mnist5k (N = 1,000)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL_FAMILIES = ("vae", "cvae", "dcgan", "dcgan_cond", "wgan_gp", "ddpm", "pixelcnn", "realnvp")
VARIANTS = {"dcgan_cond": ("dcgan", ["model.dcgan.conditional=true"])}  # variant -> (family, extra sets)
GATE_METRICS = ["fid", "prdc", "class_coverage", "class_kl", "mode_collapse", "copy_rate", "conditional_accuracy",
                "sample_grid", "nll"]
QUICK_SETS = ["data.source=digits", "data.name=digits", "validation.min_train_samples=100",
              "evaluation.num_samples=200", "evaluation.nll_max_images=100"]
SHOWN = ("fid_ratio", "coverage", "recall", "precision", "class_coverage", "mode_collapse", "copy_rate",
         "conditional_accuracy", "bits_per_dim")
SYNTHETIC = ("good", "noise", "one_class", "ten_prototypes", "replay", "blurred")
SAMPLE_SETS = ("blurred_model", *(f"{r} (data)" for r in SYNTHETIC))  # rungs that are samples, not a model
MODEL_RUNGS = ("untrained", "epoch1", "blurred_model", "default")
CACHE = ROOT / ".genforge" / "gate_ladder"


def _params(sets: list[str]) -> dict[str, Any]:
    from pipelines.config import load_params

    return load_params(ROOT / "params.yaml", sets)


def _prepared(params: dict[str, Any], base: Path):
    """Prepare + validate the data once under ``base`` (skipped when done): the opened data set."""
    from pipelines.dataset import open_prepared
    from pipelines.prepare import prepare, prepared_dir
    from pipelines.validate import validate

    from pipelines.catalog import validation_report

    pdir = prepared_dir(base, params)
    if not validation_report(base, params["data"]["name"]).exists():
        prepare(params, base)
        validate(params, base, pdir)
    return open_prepared(pdir)


PEER_METRICS = ["fid", "prdc", "class_coverage", "class_kl", "mode_collapse", "copy_rate", "sample_grid"]


def peer_setup() -> tuple[Any, dict[str, Any], Path]:
    """What a peer benchmark (``dcgan_reference.py``, ``ddpm_reference.py``) trains on and is scored by: the data
    set params.yaml names, prepared and validated once under the ladder's cache, the evaluation settings with the
    gate's sample metrics (``PEER_METRICS``), and that cache folder."""
    from pipelines.evaluate import _settings

    params = _params([])
    base = CACHE / params["data"]["name"]
    base.mkdir(parents=True, exist_ok=True)
    ds = _prepared(params, base)
    ev = _settings(params)
    ev["metrics"] = list(PEER_METRICS)
    return ds, ev, base


def _root_for(base: Path, variant: str, seed: int) -> Path:
    """A project root per (variant, seed) whose data/ and reports/ (the validation report) are the shared
    prepared data's (symlinks)."""
    root = base / f"{variant}-s{seed}"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("data", "reports"):
        link = root / name
        if link.is_symlink() and not link.exists():  # dangling: a cached folder copied from elsewhere
            link.unlink()
        if not link.exists():
            link.symlink_to(base / name, target_is_directory=True)
    return root


def _trained(params: dict[str, Any], root: Path, family: str, retrain: bool) -> tuple[Path, float | None]:
    """Train ``family`` under ``root`` unless its committed training has this fingerprint: (model dir,
    training seconds of this call or None when cached)."""
    from pipelines import catalog
    from pipelines.train import trained_with_fingerprint, train

    model_dir = catalog.model_dir(root, params["data"]["name"], family)
    if trained_with_fingerprint(params, root, family) and not retrain:
        return model_dir, None
    start = time.perf_counter()
    train(params, root, family, progress=False)
    return model_dir, time.perf_counter() - start


def _evaluate_model(model: Any, ds: Any, ev: dict[str, Any], workdir: Path, classifier_dir: Path) -> dict[str, Any]:
    from evaluation.suite import EvalContext
    from pipelines.evaluate import run_metrics

    workdir.mkdir(parents=True, exist_ok=True)
    names = [m for m in GATE_METRICS if m in (ev.get("metrics") or GATE_METRICS)]
    ctx = EvalContext(model, ds, ev, "cpu", workdir, classifier_dir)
    return run_metrics(ctx, names)[0]


def _decide(metrics: dict[str, Any], params: dict[str, Any], family: str) -> dict[str, Any]:
    """The gate's decision with no champion, the checks it failed (a missing primary metric named too) and
    ``on_checks``: the decision on the checks alone, as if the primary metric were there. A set of samples
    has no bits/dim, so a likelihood family's gate (primary bits_per_dim) rejects every sample-set rung, the
    good one too, for that alone; ``on_checks`` says whether its checks would reject the rung (a check on the
    missing primary metric itself, e.g. a family's bits_per_dim max, is left out of it too)."""
    from evaluation.ladder import gate_tags
    from pipelines.gate import gate_decision, resolve_gate

    decision = gate_decision(gate_tags(metrics), None, resolve_gate(params["registry"], family))
    failed = [c["metric"] for c in decision["checks"] if c["status"] == "failed"]
    primary_missing = decision["value"] is None
    on_checks = "rejected" if [m for m in failed if not (primary_missing and m == decision["primary_metric"])] \
        else "promoted"
    if decision["value"] is None:
        failed.append(f"no {decision['primary_metric']}")
    return {"decision": decision["decision"], "failed": failed, "on_checks": on_checks}


def _row(rung: str, metrics: dict[str, Any], verdict: dict[str, Any], seconds: float) -> dict[str, str]:
    row = {"rung": rung}
    for key in SHOWN:
        value = metrics.get(key, {}).get("value")
        row[key] = "-" if value is None else (f"{float(value):.4g}" if not isinstance(value, bool) else str(int(value)))
    row["decision"] = verdict["decision"]
    row["failed checks"] = ", ".join(verdict["failed"]) or "-"
    row["on checks"] = verdict["on_checks"]
    row["s"] = f"{seconds:.0f}"
    row["metrics"] = _plain(metrics)
    return row


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` as JSON values (numpy scalars to Python numbers, anything else not JSON-able to str)."""
    return json.loads(json.dumps(metrics, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def redecide(rows: list[dict[str, Any]], sets: list[str]) -> list[dict[str, Any]]:
    """The stored rows (``--json`` output) decided again by the gate of params.yaml with ``sets``: decision,
    failed checks and ``on checks`` replaced for every row that kept its metrics (older files did not: their
    stored decision stays, marked in ``failed checks``)."""
    out = []
    for row in rows:
        row = dict(row)
        if "metrics" in row:
            family, extra = VARIANTS.get(row["family"], (row["family"], []))
            verdict = _decide(row["metrics"], _params([*sets, *extra]), family)
            row.update(decision=verdict["decision"], **{"failed checks": ", ".join(verdict["failed"]) or "-",
                                                        "on checks": verdict["on_checks"]})
        else:
            row["failed checks"] = f"{row.get('failed checks', '-')} (stored decision)"
        out.append(row)
    return out


def _spread(values: list[float], fmt: str) -> str:
    """"median (min-max)" of ``values``; one value alone; "-" for none."""
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def family_table(rows: list[dict[str, Any]], variants: list[str]) -> list[dict[str, str]]:
    """One line per family from its ``default`` rows: seeds, epochs, training seconds, the gate's metrics as
    median (min-max) over the seeds, and the decisions ("3/3 promoted")."""
    table = []
    for variant in variants:
        mine = [r for r in rows if r["family"] == variant and r["rung"] == "default"]
        if not mine:
            continue
        line = {"family": variant, "seeds": ",".join(sorted({r["seed"] for r in mine})),
                "epochs": "/".join(sorted({r.get("epochs", "?") for r in mine})),
                "train s": _spread([float(r["train_s"]) for r in mine if r.get("train_s")], "{:.0f}")}
        for key, fmt in (("fid_ratio", "{:.0f}x"), ("coverage", "{:.3f}"), ("recall", "{:.2f}"),
                         ("class_coverage", "{:.1f}"), ("conditional_accuracy", "{:.3f}"),
                         ("bits_per_dim", "{:.3f}"), ("copy_rate", "{:.3f}")):
            line[key] = _spread([float(r[key]) for r in mine if r.get(key, "-") != "-"], fmt)
        promoted = sum(r["decision"] == "promoted" for r in mine)
        line["decision"] = f"{promoted}/{len(mine)} promoted"
        table.append(line)
    return table


def run_family(variant: str, seed: int, sets: list[str], base: Path, ds: Any, ev: dict[str, Any],
               retrain: bool, synthetic: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    import numpy as np
    import torch

    from evaluation.ladder import FixedSamples, blur
    from pipelines.train import load_model, plan_training

    family, extra = VARIANTS.get(variant, (variant, []))
    params = _params([*sets, *extra, f"train.seed={seed}"])
    root = _root_for(base, variant, seed)
    classifier_dir = base / "classifier"
    n = min(int(ev["num_samples"]), len(ds.load("test")[0]))
    rows = []

    t0 = time.perf_counter()
    model_dir, train_s = _trained(params, root, family, retrain)
    print(f"[{variant} seed {seed}] trained: " + (f"{train_s:.0f} s" if train_s else "cached"), flush=True)
    default = load_model(model_dir, "cpu")
    info = json.loads((model_dir / "train.json").read_text())

    # untrained: fresh weights; epoch 1: the default run's first checkpoint
    untrained = plan_training(params, root, family)[1]
    ckpt = torch.load(model_dir / "checkpoints" / "epoch-0001.pt", weights_only=True)
    epoch1 = plan_training(params, root, family)[1]
    epoch1.load_training_state(ckpt["training_state"])
    models = {"untrained": untrained, "epoch1": epoch1, "default": default}
    results: dict[str, dict[str, Any]] = {}
    for rung in ("untrained", "epoch1", "default"):
        start = time.perf_counter()
        models[rung].eval()
        results[rung] = _evaluate_model(models[rung], ds, ev, root / "ladder" / rung, classifier_dir)
        rows.append(_row(rung, results[rung], _decide(results[rung], params, family), time.perf_counter() - start))
        print(f"[{variant} seed {seed}] {rung}: {rows[-1]['fid_ratio']}x {rows[-1]['decision']} "
              f"({rows[-1]['failed checks']})", flush=True)
    start = time.perf_counter()
    with torch.no_grad():
        samples = default.sample(n, generator=torch.Generator().manual_seed(int(ev["seed"]))).cpu().numpy()
    blurred = blur(np.asarray(samples, dtype=np.float32))
    fixed = FixedSamples(blurred, int(ds.num_classes), ds.spec.modality)
    metrics = _evaluate_model(fixed, ds, ev, root / "ladder" / "blurred_model", classifier_dir)
    rows.insert(2, _row("blurred_model", metrics, _decide(metrics, params, family), time.perf_counter() - start))
    print(f"[{variant} seed {seed}] blurred_model: {rows[2]['fid_ratio']}x {rows[2]['decision']} "
          f"({rows[2]['failed checks']})", flush=True)
    for rung, metrics in synthetic.items():
        rows.append(_row(f"{rung} (data)", metrics, _decide(metrics, params, family), 0.0))
    for row in rows:
        row.update(family=variant, seed=str(seed), epochs=str(info.get("epochs")),
                   train_s=f"{info.get('train_seconds', 0):.0f}")
    print(f"[{variant} seed {seed}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def judged(row: dict[str, str]) -> str:
    """The decision a ladder row is judged by: the gate's for a model, the checks' alone (``on checks``) for a
    set of samples (``SAMPLE_SETS``), which has no bits/dim for a likelihood family's primary metric."""
    return row.get("on checks", row["decision"]) if row["rung"] in SAMPLE_SETS else row["decision"]


def wrong_decisions(rows: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """(family, seed, rung) of every row judged wrongly: a bad rung promoted, or the default or the held-out
    test images (good) rejected."""
    return [(r["family"], r["seed"], r["rung"]) for r in rows
            if (judged(r) == "promoted") != (r["rung"] in ("default", "good (data)"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(ALL_FAMILIES))
    ap.add_argument("--quick", action="store_true", help="the 8x8 digits instead of mnist5k")
    ap.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="params override key=value")
    ap.add_argument("--retrain", action="store_true", help="train again even when the cache matches")
    ap.add_argument("--json", type=Path, help="write every row here too")
    ap.add_argument("--report", type=Path, nargs="+", metavar="FILE",
                    help="decide the rows of these --json files again with params.yaml and --set; no training")
    args = ap.parse_args()
    if args.report:
        rows = []
        for path in args.report:
            try:
                rows += json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                ap.error(f"--report {path}: {exc}")
        latest = {(r["family"], r["seed"], r["rung"]): r for r in rows}  # a later file's row replaces an earlier one
        rows = redecide(list(latest.values()), args.sets)
        report(rows, [v for v in ALL_FAMILIES if any(r["family"] == v for r in rows)])
        return
    variants = [v.strip() for v in args.families.split(",") if v.strip()]
    bad = [v for v in variants if v not in ALL_FAMILIES]
    if bad:
        ap.error(f"unknown families {bad}; known: {', '.join(ALL_FAMILIES)}")

    import torch

    from evaluation.ladder import build_rungs, evaluate_samples
    from pipelines.env import apply_defaults
    from pipelines.evaluate import _settings

    sets = [*(QUICK_SETS if args.quick else []), *args.sets]
    params = _params(sets)
    base = CACHE / params["data"]["name"]
    base.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{CACHE / 'mlflow.db'}"
    apply_defaults(base)
    import logging
    logging.getLogger("genforge.train").setLevel(logging.WARNING)
    ds = _prepared(params, base)
    ev = _settings(params)
    ev["metrics"] = GATE_METRICS
    n = min(int(ev["num_samples"]), len(ds.load("test")[0]))

    started = time.perf_counter()
    # the synthetic rungs depend on the data and the evaluation settings only: evaluated once, kept as JSON
    from contracts.io import atomic_write_text
    from pipelines.config import params_hash

    cached = base / f"synthetic-{params_hash({'data': ds.sha256, 'n': n, 'evaluation': ev})[:16]}.json"
    if cached.exists():
        synthetic = json.loads(cached.read_text())
    else:
        synthetic = {}
        for rung, images in build_rungs(ds.load("train"), ds.load("test"), n, seed=0).items():
            synthetic[rung] = evaluate_samples(images, ds, ev, base / "ladder" / rung, base / "classifier")[0]
        plain = json.dumps(synthetic, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        atomic_write_text(cached, plain + "\n")
    print(f"synthetic rungs: {time.perf_counter() - started:.0f} s (N = {n}, {cached.name})", flush=True)

    rows = []
    for variant in variants:
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows += run_family(variant, seed, sets, base, ds, ev, args.retrain, synthetic)
    print(f"\ndata {params['data']['name']}, N = {n}, torch threads {torch.get_num_threads()}, "
          f"{time.perf_counter() - started:.0f} s")
    report(rows, variants)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def report(rows: list[dict[str, Any]], variants: list[str]) -> None:
    """Print the per-family tables, the rung x family summary, the family table and the wrong decisions."""
    from benchmarks._common import print_table

    columns = ["family", "seed", "rung", *SHOWN, "decision", "failed checks", "on checks"]
    for variant in variants:
        print()
        print_table([r for r in rows if r["family"] == variant], columns)
    # the summary: rung x family, the decision (median fid_ratio over seeds)
    rungs = [*MODEL_RUNGS[:3], *(f"{r} (data)" for r in SYNTHETIC[1:]), "good (data)", "default"]
    summary = []
    for rung in rungs:
        line = {"rung": rung}
        for variant in variants:
            mine = [r for r in rows if r["family"] == variant and r["rung"] == rung]
            decisions = {judged(r) for r in mine}
            ratios = [float(r["fid_ratio"]) for r in mine if r["fid_ratio"] != "-"]
            median = statistics.median(ratios) if ratios else None
            line[variant] = ("" if median is None else f"{median:.0f}x " if median >= 100 else f"{median:.3g}x ") \
                + "/".join(sorted(decisions))
        summary.append(line)
    print("\nsummary: median fid_ratio over seeds and the gate's decisions (every bad rung must be rejected, "
          "good and default promoted; a sample-set rung is judged on the checks alone, since it has no bits/dim)")
    print_table(summary, ["rung", *variants])
    wrong = wrong_decisions(rows)
    print("every bad rung rejected and every default promoted" if not wrong else f"WRONG decisions: {wrong}")
    print("\nfamily table: each family's default model over its seeds, median (min-max)")
    print_table(family_table(rows, variants), ["family", "seeds", "epochs", "train s", "fid_ratio", "coverage",
                                               "recall", "class_coverage", "conditional_accuracy", "bits_per_dim",
                                               "copy_rate", "decision"])


if __name__ == "__main__":
    main()
