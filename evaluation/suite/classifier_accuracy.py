"""Test accuracy of the domain classifier every feature-based metric uses (how far to trust them)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class ClassifierAccuracy(Metric):
    uses_classifier = True
    name = "classifier_accuracy"
    modality = "any"
    outputs = ("classifier_test_accuracy",)
    summary = ()  # the classifier's quality, not the model's: it moves only with the data

    def compute(self, ctx: EvalContext) -> Result:
        info = ctx.classifier[1]
        return {"classifier_test_accuracy": (info["test_accuracy"], {"n_test": info.get("n_test")})}
