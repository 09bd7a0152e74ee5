"""Conditional models: does the model draw the class it is asked for? Any modality with a domain classifier
(evaluation.suite.base.CLASSIFIERS): images, and texts through the character CNN.

``conditional_accuracy``: share of samples the classifier assigns to the requested label (labels by
``EvalContext.label_rule``: every class in turn, or in the train split's proportions).
``conditional_accuracy_real_floor``: the same for real data: the classifier's accuracy on the first n test
samples of each class, weighted as the requested labels: what a model drawing exactly the data's classes
gets, since the classifier itself errs (census first names are both female and male)."""
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
        hit = f["fake_logits"].argmax(1) == ctx.requested_labels
        test_y = np.asarray(ctx.test[1][:ctx.n])
        predicted = f["test_logits"].argmax(1)
        # per class: the share of its test samples predicted right, weighted by the share of samples asked for it
        asked = np.bincount(ctx.requested_labels, minlength=ctx.num_classes).astype(np.float64)
        present = [c for c in range(ctx.num_classes) if asked[c] and (test_y == c).any()]
        recall = np.array([(predicted[test_y == c] == c).mean() for c in present])
        floor = float((recall * asked[present]).sum() / asked[present].sum()) if present else float("nan")
        labels = "every class in turn" if ctx.label_rule == "in_turn" else "in the train split's class proportions"
        return {"conditional_accuracy": (float(hit.mean()), {
            "definition": "share of samples the domain classifier assigns to the requested label",
            "labels": labels, "class_names": list(ctx.model.config.data.class_names)}),
            "conditional_accuracy_real_floor": (floor, {
                "definition": "the domain classifier's accuracy per class on the first n test samples, weighted "
                              "as the samples' requested labels", "labels": labels})}
