"""Conditional models: does the model draw the class it is asked for? Any modality with a domain classifier
(evaluation.suite.base.CLASSIFIERS): images, and texts through the character CNN.

``conditional_accuracy``: share of samples the classifier assigns to the requested label (every class in
turn). ``conditional_accuracy_real_floor``: the same for real data, the classifier's balanced accuracy on the
first n test samples (mean over classes of the share predicted right): what a model drawing exactly the
data's classes gets, since the classifier itself errs (census first names are both female and male)."""
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
        floor = float(np.mean([(predicted[test_y == c] == c).mean() for c in np.unique(test_y)]))
        return {"conditional_accuracy": (float(hit.mean()), {
            "definition": "share of samples the domain classifier assigns to the requested label",
            "labels": "every class in turn", "class_names": list(ctx.model.config.data.class_names)}),
            "conditional_accuracy_real_floor": (floor, {
                "definition": "the domain classifier's balanced accuracy on the first n test samples"})}
