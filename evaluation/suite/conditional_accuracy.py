"""Conditional models: does the model draw the class it is asked for? Any modality with a domain classifier
(evaluation.suite.base.CLASSIFIERS): images, and texts through the character CNN.

``conditional_accuracy``: for each requested class, the share of its samples the classifier assigns to it,
averaged over the classes (labels by ``EvalContext.label_rule``: every class in turn, where this is the plain
share of hits when n is a multiple of the class count; or in the train split's proportions, where a plain
share would reward a model that ignores the label and draws the majority class: census names are 94%
surnames). ``conditional_accuracy_real_floor``: the same for real data, the classifier's balanced accuracy on
the whole test split (not its first n: a split may keep its samples grouped by class and, within a class, by
frequency): what a model drawing exactly the data's classes gets, since the classifier itself errs (census
first names are both female and male)."""
from __future__ import annotations

import numpy as np

from evaluation.suite.base import EvalContext, Metric, Result


class ConditionalAccuracy(Metric):
    uses_classifier = True
    name = "conditional_accuracy"
    modality = "any"
    needs = frozenset({"samples", "conditional"})
    outputs = ("conditional_accuracy", "conditional_accuracy_real_floor")

    def compute(self, ctx: EvalContext) -> Result:
        f = ctx.features
        asked = np.asarray(ctx.requested_labels)
        value = per_class_mean(f["fake_logits"].argmax(1), asked)
        test_x, test_y = ctx.test
        logits = ctx.shared("classifier:test_logits",
                            lambda: ctx.classifier_module.extract(ctx.classifier[0], test_x)[1])
        floor = per_class_mean(logits.argmax(1), np.asarray(test_y), classes=np.unique(asked))
        labels = "every class in turn" if ctx.label_rule == "in_turn" else "in the train split's class proportions"
        return {"conditional_accuracy": (value, {
            "definition": "mean over the requested classes of the share of their samples the domain classifier "
                          "assigns to them", "labels": labels,
            "class_names": list(ctx.model.config.data.class_names)}),
            "conditional_accuracy_real_floor": (floor, {
                "definition": "the domain classifier's balanced accuracy on the test split (the requested "
                              "classes present there)", "n_test": int(len(test_y)), "labels": labels})}


def per_class_mean(predicted: np.ndarray, wanted: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean over ``classes`` (default: those in ``wanted``) present in ``wanted`` of the share of their rows
    where ``predicted`` equals the class; nan when none is present."""
    classes = np.unique(wanted) if classes is None else classes
    shares = [(predicted[wanted == c] == c).mean() for c in classes if (wanted == c).any()]
    return float(np.mean(shares)) if shares else float("nan")
