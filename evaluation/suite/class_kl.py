"""KL divergence of the samples' predicted-class histogram from the train split's."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class ClassKL(Metric):
    name = "class_kl"
    modality = "image"
    uses_generation = True
    needs = frozenset({"samples"})
    outputs = ("class_kl",)

    def compute(self, ctx: EvalContext) -> Result:
        return {"class_kl": (ctx.generation["class_kl"],
                             {"definition": "KL(sample class histogram || train class histogram)"})}
