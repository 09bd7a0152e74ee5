"""Anomaly detection with the model's score: corrupted test images (and held-out classes) vs normal ones."""
from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.suite.base import EvalContext, Metric, Result, to_model_input

KINDS = ("noise", "inversion", "occlusion", "holdout_classes")  # holdout_classes: train.holdout_classes set
PER_SET = ("auroc", "aupr", "tpr_at_threshold")
COMBINED = ("auroc", "aupr", "tpr_at_threshold", "threshold")


class Anomaly(Metric):
    name = "anomaly"
    modality = "image"
    needs = frozenset({"score"})
    outputs = (*(f"anomaly_{kind}_{key}" for kind in KINDS for key in PER_SET),
               *(f"anomaly_{key}" for key in COMBINED))
    summary = ("anomaly_auroc", "anomaly_aupr")  # all anomaly sets together; per set: metrics.json
    settings = {"anomaly": {"kinds": ["noise", "inversion", "occlusion"], "fpr": 0.05, "max_images": 500}}
    plots = ("roc.png", "score_histograms.png")

    def check(self, ctx: EvalContext) -> None:
        """Every anomaly set non-empty and enough normal test images, before any scoring (ConfigError)."""
        from contracts.errors import ConfigError
        from evaluation.anomaly import CORRUPTIONS

        kinds = list(ctx.settings["anomaly"]["kinds"])
        unknown = [k for k in kinds if k not in CORRUPTIONS]
        if unknown:
            raise ConfigError("evaluation.anomaly.kinds", f"unknown corruption {unknown[0]!r}; known: "
                                                          f"{', '.join(CORRUPTIONS)}")
        if not kinds and not ctx.holdout:
            raise ConfigError("evaluation.anomaly.kinds", "is empty and train.holdout_classes is empty: no anomaly "
                                                          "set to score; list a corruption (" + ", ".join(CORRUPTIONS)
                              + "), hold out a class, or leave anomaly out of evaluation.metrics")
        test_y = np.asarray(ctx.test[1])
        names = list((getattr(ctx.data, "meta", None) or {}).get("class_names") or [])
        for c in ctx.holdout:
            if not (test_y == c).any():
                label = f"{c} ({names[c]!r})" if 0 <= c < len(names) else str(c)
                raise ConfigError("train.holdout_classes", f"class {label} has 0 images in the test split of "
                                                           f"{ctx.data.name} ({len(test_y)} images): the held-out-"
                                                           f"class anomaly set would be empty")
        n_normal = int((~np.isin(test_y, ctx.holdout)).sum())
        if n_normal < 2:
            key = "train.holdout_classes" if ctx.holdout else "evaluation.metrics"
            raise ConfigError(key, f"the test split of {ctx.data.name} has {n_normal} image(s) outside the held-out "
                                   f"classes; anomaly needs at least 2 (half set the threshold, half measure it)")

    def compute(self, ctx: EvalContext) -> Result:
        from evaluation import anomaly as anomaly_lib
        from evaluation import plots

        cfg = ctx.settings["anomaly"]
        fpr, max_images = float(cfg["fpr"]), int(cfg["max_images"])
        rng = np.random.default_rng(ctx.seed)
        test_x, test_y = ctx.test
        normal_mask = ~np.isin(test_y, ctx.holdout)
        normal = to_model_input(test_x[normal_mask][:max_images], ctx.modality)
        # half of the normal images set the threshold (at the chosen FPR), the other half measure it
        calib, held = normal[: len(normal) // 2], normal[len(normal) // 2:]
        score = lambda x: ctx.batched(ctx.model.score, x, 100)  # noqa: E731
        calib_scores, normal_scores = score(calib), score(held)
        sets: dict[str, Any] = {kind: anomaly_lib.corrupt(held, kind, rng) for kind in cfg["kinds"]}
        if ctx.holdout:
            sets["holdout_classes"] = to_model_input(test_x[~normal_mask][:max_images], ctx.modality)
        out: Result = {}
        all_scores = []
        for kind, images in sets.items():
            s = score(images.astype(np.float32))
            all_scores.append(s)
            m = anomaly_lib.anomaly_metrics(normal_scores, s, fpr=fpr, threshold_scores=calib_scores)
            for key in PER_SET:
                out[f"anomaly_{kind}_{key}"] = (m[key], {"anomaly_set": kind, "n_normal": len(held),
                                                         "n_anomalous": len(s), "fpr_target": cfg["fpr"]})
        m = anomaly_lib.anomaly_metrics(normal_scores, np.concatenate(all_scores), fpr=fpr,
                                        threshold_scores=calib_scores)
        for key in COMBINED:
            out[f"anomaly_{key}"] = (m[key], {"anomaly_set": "+".join(sets), "fpr_target": cfg["fpr"],
                                              "score": "model.score"})
        per_kind = dict(zip(sets, all_scores))
        ctx.curves["roc"] = anomaly_lib.roc_points(normal_scores, np.concatenate(all_scores))
        plots.save_roc_curve(normal_scores, per_kind, ctx.plot_path("roc.png"), fpr_target=fpr)
        plots.save_score_histograms(normal_scores, per_kind, ctx.plot_path("score_histograms.png"),
                                    threshold=m["threshold"])
        return out
