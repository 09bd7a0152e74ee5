"""Share of classes the domain classifier finds in at least min_share of the samples."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class ClassCoverage(Metric):
    name = "class_coverage"
    modality = "image"
    uses_generation = True
    needs = frozenset({"samples"})
    outputs = ("class_coverage",)

    def compute(self, ctx: EvalContext) -> Result:
        gen = ctx.generation
        return {"class_coverage": (gen["class_coverage"], {"min_share": gen["min_share"]})}
