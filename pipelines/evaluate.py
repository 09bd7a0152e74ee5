"""Stage `evaluate`: sample quality, mode collapse, likelihood and anomaly scores for one trained family.

Writes `reports/<dataset>/<family>/metrics.json` (each metric with its setting) and PNG plots, and logs
both to the MLflow run that trained the model.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines import catalog
from pipelines.errors import GenforgeError
from pipelines.prepare import prepared_dir
from pipelines.train import load_model, model_dir, select_device
from pipelines.validate import require_validated

DEFAULTS: dict[str, Any] = {
    "num_samples": 1000,          # capped at the test split's size so the real floor uses the same N
    "batch_size": 500,
    "seed": 0,
    "classifier": {"epochs": 8},
    "mode_collapse": {"coverage_threshold": 0.7, "kl_threshold": 0.5, "recall_threshold": 0.2, "min_share": None},
    "anomaly": {"kinds": ["noise", "inversion", "occlusion"], "fpr": 0.05, "max_images": 500},
    "nll_max_images": 500,
    # subsets smaller than N, or every subset is the whole set and the std says nothing
    "kid": {"subsets": 20, "subset_size": 500},
    "inception_weights": None,
}


def report_dir(root: Path, dataset: str, family: str) -> Path:
    """`reports/<dataset>/<family>/` (an alias of `catalog.report_dir`)."""
    return catalog.report_dir(root, dataset, family)


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    ev = json.loads(json.dumps(DEFAULTS))
    for key, value in (params.get("evaluation") or {}).items():
        if isinstance(value, dict) and isinstance(ev.get(key), dict):
            ev[key].update(value)
        else:
            ev[key] = value
    return ev


@torch.no_grad()
def _sample(model, n: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, requested labels or None). Conditional models get every class in turn, as the generator
    gives them without --label, so class coverage measures the model and not the label draw."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    conditional = "conditional" in model.capabilities
    labels = np.arange(n, dtype=np.int64) % model.config.num_classes if conditional else None
    parts = [model.sample(min(batch_size, n - i), generator=gen,
                          labels=None if labels is None else torch.from_numpy(labels[i:i + batch_size]).to(model.device)
                          ).float().cpu().numpy() for i in range(0, n, batch_size)]
    return np.concatenate(parts), labels


@torch.no_grad()
def _latent_traversal(model, x: torch.Tensor, labels: torch.Tensor | None, dims: int = 8, steps: int = 9,
                      span: float = 3.0) -> tuple[np.ndarray, list[int], int]:
    """Rows = the `dims` latent units the encoder uses most (largest variance of posterior means over `x`),
    columns = that unit swept over [-span, span] from the first image's code, the others held.
    For a beta-VAE (beta > 1) each row should change one factor (slant, width, ...). Also returns the number of
    active units (Burda et al. 2016: variance of the posterior mean over the data above 0.01)."""
    mu = model.encode(x, labels)
    variance = mu.var(0)
    order = variance.argsort(descending=True)[:dims].tolist()
    base = mu[0:1].repeat(steps, 1)
    sweep = torch.linspace(-span, span, steps, device=mu.device)
    rows = []
    for d in order:
        z = base.clone()
        z[:, d] = sweep
        rows.append(model.decode(z, None if labels is None else labels[0:1].repeat(steps)).cpu().numpy())
    return np.stack(rows), order, int((variance > 0.01).sum())


@torch.no_grad()
def _batched(fn, x: np.ndarray, batch_size: int, device) -> np.ndarray:
    return np.concatenate([fn(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy()
                           for i in range(0, len(x), batch_size)])


def evaluate(params: dict[str, Any], root: Path, family: str) -> dict[str, Any]:
    from evaluation import anomaly as anomaly_lib
    from evaluation import classifier as clf_lib
    from evaluation import metrics as metric_lib
    from evaluation import plots
    from pipelines import tracking

    started = time.perf_counter()
    ds = require_validated(root, prepared_dir(root, params))
    ev = _settings(params)
    mdir = model_dir(root, ds.name, family)
    paths = catalog.Layout(root, ds.name, family)
    device = select_device(str((params.get("train") or {}).get("device", "auto")))
    model = load_model(mdir, device)
    train_info = json.loads(paths.train_info.read_text()) if paths.train_info.exists() else {}
    if train_info.get("data_sha256") not in (None, ds.sha256):
        raise GenforgeError(f"{mdir}: trained on data {train_info['data_sha256'][:12]}, the prepared data is "
                            f"{ds.sha256[:12]}; rerun `genforge stage train --family {family}`")
    seed = int(ev["seed"])
    train_x, train_y = ds.load("train")
    test_x, test_y = ds.load("test")
    holdout = [int(c) for c in ((params.get("train") or {}).get("holdout_classes") or [])]

    classifier, clf_info = clf_lib.load_or_train_classifier(
        catalog.classifier_cache(root), ds.sha256, train_x, train_y, ds.num_classes,
        test_images=test_x, test_labels=test_y, seed=seed, epochs=int(ev["classifier"]["epochs"]))
    extractor = f"domain-classifier(data {ds.sha256[:12]}, test acc {clf_info['test_accuracy']:.4f})"

    n = min(int(ev["num_samples"]), len(test_x))
    samples, requested = _sample(model, n, int(ev["batch_size"]), seed)
    train_feats, _ = clf_lib.extract(classifier, train_x)
    test_feats, _ = clf_lib.extract(classifier, test_x[:n])
    fake_feats, fake_logits = clf_lib.extract(classifier, samples)
    mc = ev["mode_collapse"]
    thresholds = {k: mc[k] for k in ("coverage_threshold", "kl_threshold", "recall_threshold")}
    kid = {"kid_subsets": int(ev["kid"]["subsets"]), "kid_subset_size": max(2, min(int(ev["kid"]["subset_size"]), n // 2))}
    gen = metric_lib.generation_metrics(
        train_feats, fake_feats, real_labels=train_y, fake_pred_labels=fake_logits.argmax(1),
        num_classes=ds.num_classes, seed=seed, min_share=mc.get("min_share"), extractor=extractor, **thresholds, **kid)
    floor = metric_lib.generation_metrics(train_feats, test_feats, seed=seed, extractor=extractor, **kid)

    setting = {"feature_extractor": extractor, "n_samples": n, "reference": f"{ds.name} train split ({len(train_x)})",
               "dataset": ds.name, "data_sha256": ds.sha256}
    metrics: dict[str, Any] = {}

    def put(name: str, value: Any, **extra: Any) -> None:
        metrics[name] = {"value": value, "setting": {**setting, **extra}}

    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        extra = {"nearest_k": gen["nearest_k"]} if key in ("precision", "recall", "density", "coverage") else {}
        if key == "kid":
            extra = {"subsets": gen["kid_subsets"], "subset_size": gen["kid_subset_size"], "std": gen["kid_std"]}
        put(key, gen[key], **extra)
        put(f"{key}_real_floor", floor[key], compared="test split vs train split, same N")
    put("fid_ratio", gen["fid"] / max(floor["fid"], 1e-12), definition="fid / fid_real_floor")
    put("class_coverage", gen["class_coverage"], min_share=gen["min_share"])
    put("class_kl", gen["class_kl"], definition="KL(sample class histogram || train class histogram)")
    put("mode_collapse", bool(gen["mode_collapse"]), reasons=gen["mode_collapse_reasons"], **thresholds)
    put("classifier_test_accuracy", clf_info["test_accuracy"], n_test=clf_info.get("n_test"))
    if requested is not None:  # does the model draw the class it is asked for?
        put("conditional_accuracy", float((fake_logits.argmax(1) == requested).mean()),
            definition="share of samples the domain classifier assigns to the requested label",
            labels="every class in turn")

    pngs: list[Path] = []
    plot_dir = paths.plots  # one folder, whatever plots the family's capabilities give (a DVC plots out)
    shutil.rmtree(plot_dir, ignore_errors=True)
    plot_dir.mkdir(parents=True, exist_ok=True)
    # conditional models: one column per class (every class in turn), so each column is one label
    nrow = ds.num_classes if requested is not None and ds.num_classes <= 16 else 8
    plots.save_image_grid(samples[:nrow * 8], plot_dir / "samples.png", nrow=nrow)
    pngs.append(plot_dir / "samples.png")

    caps = model.capabilities
    if "nll" in caps:
        k = min(len(test_x), int(ev["nll_max_images"]))
        nll = _batched(model.nll, test_x[:k].astype(np.float32) / 255.0, 100, device)
        dims = int(np.prod(ds.shape))
        put("nll_nats", float(nll.mean()), unit="nats per image", n_images=k, split="test",
            variant=getattr(model, "nll_variant", "model-defined"))
        put("bits_per_dim", float(nll.mean() / (dims * math.log(2))), n_images=k, split="test",
            variant=getattr(model, "nll_variant", "model-defined"))
    if "encode" in caps and "decode" in caps:
        cond = "conditional" in caps
        pair = torch.from_numpy(test_x[:2].astype(np.float32) / 255.0).to(device)
        pair_labels = torch.from_numpy(test_y[:2]).long().to(device) if cond else None
        with torch.no_grad():
            # a conditional model interpolates the style code under the first image's label
            z = model.encode(pair, pair_labels)
            steps = torch.linspace(0, 1, 10, device=device)[:, None]
            mix = z[0:1] * (1 - steps) + z[1:2] * steps
            strip = model.decode(mix, None if pair_labels is None else pair_labels[:1].repeat(10)).cpu().numpy()
        plots.save_interpolation_strip(strip, plot_dir / "interpolation.png")
        pngs.append(plot_dir / "interpolation.png")
        probe = torch.from_numpy(test_x[:500].astype(np.float32) / 255.0).to(device)
        traversal, units, active = _latent_traversal(model, probe, torch.from_numpy(test_y[:500]).long().to(device)
                                             if cond else None)
        plots.save_interpolation_strip(traversal, plot_dir / "latent_traversal.png")
        pngs.append(plot_dir / "latent_traversal.png")
        put("latent_traversal", units, plot="plots/latent_traversal.png", span=[-3.0, 3.0],
            definition="latent units by variance of posterior means on 500 test images, most used first")
        put("active_units", active, latent_dim=int(model.config.latent_dim), n_images=len(probe),
            definition="latent units whose posterior mean varies over the data: Var_x E[z|x] > 0.01")
    if "score" in caps:
        metrics.update(_anomaly(model, ev, test_x, test_y, holdout, device, plot_dir, pngs, setting, anomaly_lib, plots))

    inception = {"computed": False, "reason": "evaluation.inception_weights is not set (never downloaded)"}
    if ev.get("inception_weights"):
        from evaluation.inception import InceptionFeatures

        inc = InceptionFeatures(ev["inception_weights"])
        inc_fid = metric_lib.fid(inc(train_x), inc(samples))
        put("fid_inception", inc_fid, feature_extractor=f"InceptionV3 pool3 ({ev['inception_weights']})")
        inception = {"computed": True, "weights": str(ev["inception_weights"])}

    summary = {k: (float(v["value"]) if not isinstance(v["value"], bool) else int(v["value"]))
               for k, v in metrics.items() if isinstance(v["value"], (int, float, bool))}
    report = {"dataset": ds.name, "family": family, "data_sha256": ds.sha256, "run_id": train_info.get("run_id"),
              "model_params_hash": train_info.get("params_hash"), "summary": summary, "metrics": metrics,
              "inception": inception, "classifier": {k: clf_info.get(k) for k in ("path", "test_accuracy", "cached",
                                                                                  "train_seconds")},
              "seconds": round(time.perf_counter() - started, 2)}
    tmp = paths.metrics.with_name(paths.metrics.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    tmp.replace(paths.metrics)

    if train_info.get("run_id"):
        c = tracking.client()
        tracking.log_metrics(c, train_info["run_id"], {f"eval/{k}": v for k, v in summary.items()}, 0)
        for path in [paths.metrics, *pngs]:
            tracking.log_artifact(c, train_info["run_id"], path, "evaluation")
    return {"family": family, "dataset": ds.name, "metrics": str(paths.metrics), "seconds": report["seconds"],
            **{k: round(v, 4) for k, v in summary.items() if k in ("fid", "fid_real_floor", "fid_ratio", "coverage",
                                                                    "recall", "class_coverage", "mode_collapse",
                                                                    "anomaly_auroc", "nll_nats",
                                                                    "conditional_accuracy")}}


def _anomaly(model, ev, test_x, test_y, holdout, device, out, pngs, setting, anomaly_lib, plots) -> dict[str, Any]:
    cfg = ev["anomaly"]
    rng = np.random.default_rng(int(ev["seed"]))
    normal_mask = ~np.isin(test_y, holdout)
    normal = test_x[normal_mask][: int(cfg["max_images"])].astype(np.float32) / 255.0
    # half of the normal images set the threshold (at the chosen FPR), the other half measure it
    calib, held = normal[: len(normal) // 2], normal[len(normal) // 2:]
    score = lambda x: _batched(model.score, x, 100, device)  # noqa: E731
    calib_scores, normal_scores = score(calib), score(held)
    sets = {kind: anomaly_lib.corrupt(held, kind, rng) for kind in cfg["kinds"]}
    if holdout:
        sets["holdout_classes"] = test_x[~normal_mask][: int(cfg["max_images"])].astype(np.float32) / 255.0
    results: dict[str, Any] = {}
    all_scores = []
    for kind, images in sets.items():
        s = score(images.astype(np.float32))
        all_scores.append(s)
        m = anomaly_lib.anomaly_metrics(normal_scores, s, fpr=float(cfg["fpr"]), threshold_scores=calib_scores)
        for key in ("auroc", "aupr", "tpr_at_threshold"):
            results[f"anomaly_{kind}_{key}"] = {"value": m[key], "setting": {**setting, "anomaly_set": kind,
                                                                             "n_normal": len(held), "n_anomalous": len(s),
                                                                             "fpr_target": cfg["fpr"]}}
    combined = np.concatenate(all_scores)
    m = anomaly_lib.anomaly_metrics(normal_scores, combined, fpr=float(cfg["fpr"]), threshold_scores=calib_scores)
    for key in ("auroc", "aupr", "tpr_at_threshold", "threshold"):
        results[f"anomaly_{key}"] = {"value": m[key], "setting": {**setting, "anomaly_set": "+".join(sets),
                                                                  "fpr_target": cfg["fpr"], "score": "model.score"}}
    per_kind = dict(zip(sets, all_scores))
    plots.save_roc_curve(normal_scores, per_kind, out / "roc.png", fpr_target=float(cfg["fpr"]))
    plots.save_score_histograms(normal_scores, per_kind, out / "score_histograms.png", threshold=m["threshold"])
    pngs += [out / "roc.png", out / "score_histograms.png"]
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
