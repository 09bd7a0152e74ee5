"""Precision, recall, density and coverage (Naeem et al. 2020, k nearest neighbours) of the samples vs the
train split, each with its real-vs-real floor."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result
from evaluation.suite.fid import FLOOR

KEYS = ("precision", "recall", "density", "coverage")


class PRDC(Metric):
    name = "prdc"
    modality = "image"
    uses_generation = True
    needs = frozenset({"samples"})
    outputs = tuple(k for key in KEYS for k in (key, f"{key}_real_floor"))
    summary = KEYS  # the floors move only with the data

    def compute(self, ctx: EvalContext) -> Result:
        gen, floor = ctx.generation, ctx.floor
        out: Result = {}
        for key in KEYS:
            out[key] = (gen[key], {"nearest_k": gen["nearest_k"]})
            out[f"{key}_real_floor"] = (floor[key], {"compared": FLOOR})
        return out
