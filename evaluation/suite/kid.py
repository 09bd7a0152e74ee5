"""KID (unbiased MMD^2, cubic kernel) of the samples vs the train split, and its real-vs-real floor."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result
from evaluation.suite.fid import FLOOR


class KID(Metric):
    name = "kid"
    modality = "image"
    uses_generation = True
    needs = frozenset({"samples"})
    outputs = ("kid", "kid_real_floor")
    summary = ("kid",)
    # subsets smaller than N, or every subset is the whole set and the std says nothing
    settings = {"kid": {"subsets": 20, "subset_size": 500}}

    def compute(self, ctx: EvalContext) -> Result:
        gen = ctx.generation
        return {"kid": (gen["kid"], {"subsets": gen["kid_subsets"], "subset_size": gen["kid_subset_size"],
                                     "std": gen["kid_std"]}),
                "kid_real_floor": (ctx.floor["kid"], {"compared": FLOOR})}
