"""Conditional models: does the model draw the class it is asked for?"""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class ConditionalAccuracy(Metric):
    uses_classifier = True
    name = "conditional_accuracy"
    modality = "image"
    needs = frozenset({"samples", "conditional"})
    outputs = ("conditional_accuracy",)

    def compute(self, ctx: EvalContext) -> Result:
        hit = ctx.features["fake_logits"].argmax(1) == ctx.requested_labels
        return {"conditional_accuracy": (float(hit.mean()), {
            "definition": "share of samples the domain classifier assigns to the requested label",
            "labels": "every class in turn", "class_names": list(ctx.model.config.data.class_names)})}
