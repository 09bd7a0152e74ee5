"""The mode-collapse flag: class coverage, class KL or recall past their thresholds (with the reasons)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class ModeCollapse(Metric):
    name = "mode_collapse"
    modality = "image"
    uses_generation = True
    needs = frozenset({"samples"})
    outputs = ("mode_collapse",)
    settings = {"mode_collapse": {"coverage_threshold": 0.7, "kl_threshold": 0.5, "recall_threshold": 0.2,
                                  "min_share": None}}

    def compute(self, ctx: EvalContext) -> Result:
        gen = ctx.generation
        return {"mode_collapse": (bool(gen["mode_collapse"]), {"reasons": gen["mode_collapse_reasons"],
                                                               **ctx.collapse_thresholds})}
