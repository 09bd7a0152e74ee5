"""Anomaly detection with a tokens model's ``score`` (per-text NLL, higher = more anomalous): corrupted test
texts (characters shuffled, random characters, the text reversed; evaluation.text_metrics.corrupt, each of
the normal texts' lengths, so the score cannot win on length alone) and, with ``train.holdout_classes``,
test texts of the classes left out of training ("samples of another class"), against normal test texts.

The image anomaly protocol (anomaly.py) with its output keys: half of the normal texts set the threshold at
``evaluation.text_anomaly.fpr``, the other half are the normal set the corruptions are made from and scored
against; ``anomaly_<set>_{auroc,aupr,tpr_at_threshold}`` per set, ``anomaly_{auroc,...}`` for all together.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.suite.anomaly import COMBINED, PER_SET
from evaluation.suite.base import EvalContext, Metric, Result

KINDS = ("shuffled", "random", "reversed", "holdout_classes")


class TextAnomaly(Metric):
    name = "text_anomaly"
    modality = "tokens"
    needs = frozenset({"score"})
    outputs = (*(f"anomaly_{kind}_{key}" for kind in KINDS for key in PER_SET),
               *(f"anomaly_{key}" for key in COMBINED))
    summary = ("anomaly_auroc", "anomaly_aupr")
    settings = {"text_anomaly": {"kinds": ["shuffled", "random", "reversed"], "fpr": 0.05, "max_texts": 1000}}
    plots = ("roc.png", "score_histograms.png")

    def check(self, ctx: EvalContext) -> None:
        """Known kinds, some anomaly set, held-out classes present in the test split, 2+ normal texts."""
        from contracts.errors import ConfigError
        from evaluation.text_metrics import CORRUPTIONS

        cfg = ctx.settings["text_anomaly"]
        kinds = list(cfg["kinds"])
        unknown = [k for k in kinds if k not in CORRUPTIONS]
        if unknown:
            raise ConfigError("evaluation.text_anomaly.kinds", f"unknown corruption {unknown[0]!r}; known: "
                                                               f"{', '.join(CORRUPTIONS)}")
        if not kinds and not ctx.holdout:
            raise ConfigError("evaluation.text_anomaly.kinds", "is empty and train.holdout_classes is empty: no "
                                                               "anomaly set to score; list a corruption ("
                              + ", ".join(CORRUPTIONS) + "), hold out a class, or leave text_anomaly out of "
                                                         "evaluation.metrics")
        fpr = cfg["fpr"]
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 <= fpr < 1:
            raise ConfigError("evaluation.text_anomaly.fpr", f"expected a number in [0, 1), got {fpr!r}")
        test_y = np.asarray(ctx.test[1])
        names = list(ctx.model.config.data.class_names)
        for c in ctx.holdout:
            if not (test_y == c).any():
                label = f"{c} ({names[c]!r})" if 0 <= c < len(names) else str(c)
                raise ConfigError("train.holdout_classes", f"class {label} has 0 texts in the test split of "
                                                           f"{ctx.data.name} ({len(test_y)} texts): the held-out-"
                                                           f"class anomaly set would be empty")
        n_normal = min(int((~np.isin(test_y, ctx.holdout)).sum()), int(cfg["max_texts"]))
        if n_normal < 4:
            key = "train.holdout_classes" if ctx.holdout else "evaluation.text_anomaly.max_texts"
            raise ConfigError(key, f"{n_normal} normal test text(s) of {ctx.data.name} to use; text_anomaly needs at "
                                   f"least 4 (half set the threshold, half are scored and corrupted)")

    def compute(self, ctx: EvalContext) -> Result:
        from evaluation import anomaly as anomaly_lib
        from evaluation import plots
        from evaluation import text_metrics as tm
        from evaluation.suite.base import Skip

        cfg = ctx.settings["text_anomaly"]
        fpr, max_texts = float(cfg["fpr"]), int(cfg["max_texts"])
        rng = np.random.default_rng(ctx.seed)
        tok, T = tm.tokenizer_of(ctx), int(ctx.data.shape[0])
        test_x, test_y = ctx.test
        texts = tm.split_texts(ctx, "test")
        normal_idx = np.flatnonzero(~np.isin(test_y, ctx.holdout))[:max_texts]
        calib_idx, held_idx = normal_idx[:len(normal_idx) // 2], normal_idx[len(normal_idx) // 2:]

        def score(ids: np.ndarray) -> np.ndarray:
            return ctx.batched(ctx.model.score, np.asarray(ids).astype(np.int64), 100).astype(np.float64)

        calib_scores, normal_scores = score(test_x[calib_idx]), score(test_x[held_idx])
        sets: dict[str, Any] = {}
        held_texts = [texts[i] for i in held_idx]
        for kind in cfg["kinds"]:
            bad = tm.corrupt(held_texts, kind, rng, tok.chars)
            if bad:
                sets[kind] = tok.encode_batch(bad, T)
        if ctx.holdout:
            sets["holdout_classes"] = test_x[np.isin(test_y, ctx.holdout)][:max_texts]
        if not sets:
            raise Skip("every corruption left every normal test text unchanged (one-character texts or palindromes)")
        out: Result = {}
        per_kind = {}
        for kind, ids in sets.items():
            s = per_kind[kind] = score(ids)
            m = anomaly_lib.anomaly_metrics(normal_scores, s, fpr=fpr, threshold_scores=calib_scores)
            for key in PER_SET:
                out[f"anomaly_{kind}_{key}"] = (m[key], {"anomaly_set": kind, "n_normal": len(held_idx),
                                                         "n_anomalous": len(s), "fpr_target": fpr})
        every = np.concatenate(list(per_kind.values()))
        m = anomaly_lib.anomaly_metrics(normal_scores, every, fpr=fpr, threshold_scores=calib_scores)
        for key in COMBINED:
            out[f"anomaly_{key}"] = (m[key], {"anomaly_set": "+".join(sets), "fpr_target": fpr,
                                              "score": "model.score (per-text NLL, nats)"})
        ctx.curves["roc"] = anomaly_lib.roc_points(normal_scores, every)
        plots.save_roc_curve(normal_scores, per_kind, ctx.plot_path("roc.png"), fpr_target=fpr)
        plots.save_score_histograms(normal_scores, per_kind, ctx.plot_path("score_histograms.png"),
                                    threshold=m["threshold"])
        return out
