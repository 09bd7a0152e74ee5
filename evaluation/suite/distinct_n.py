"""Diversity of generated texts: distinct-1/2/3 over characters (Li et al. 2016, characters as tokens), with
the same statistic of n test texts (a seeded random subset) as the real-data floor (distinct-n falls as a
set grows, so the reference must have the same size)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result

ORDERS = (1, 2, 3)


class DistinctN(Metric):
    name = "distinct_n"
    modality = "tokens"
    needs = frozenset({"samples"})
    outputs = tuple(key for n in ORDERS for key in (f"distinct_{n}", f"distinct_{n}_real_floor"))
    summary = tuple(f"distinct_{n}" for n in ORDERS)

    def check(self, ctx: EvalContext) -> None:
        from evaluation.text_metrics import check_samples

        check_samples(ctx, self.name)

    def compute(self, ctx: EvalContext) -> Result:
        from evaluation import text_metrics as tm

        samples, test = tm.sample_texts(ctx), tm.reference_texts(ctx)
        out: Result = {}
        for n in ORDERS:
            definition = f"distinct character {n}-grams / all character {n}-grams"
            out[f"distinct_{n}"] = (tm.distinct_n(samples, n), {"definition": definition})
            out[f"distinct_{n}_real_floor"] = (tm.distinct_n(test, n), {
                "definition": definition, "compared": "n test texts (seeded random subset)"})
        return out
