"""FID of the samples vs the train split on the domain classifier's features, its real-vs-real floor, and
their ratio (the gate's default primary metric)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result

FLOOR = "test split vs train split, same N"


class FID(Metric):
    name = "fid"
    modality = "image"
    uses_generation = True
    needs = frozenset({"samples"})
    outputs = ("fid", "fid_real_floor", "fid_ratio")

    def compute(self, ctx: EvalContext) -> Result:
        gen, floor = ctx.generation, ctx.floor
        return {"fid": (gen["fid"], {}), "fid_real_floor": (floor["fid"], {"compared": FLOOR}),
                "fid_ratio": (gen["fid"] / max(floor["fid"], 1e-12), {"definition": "fid / fid_real_floor"})}
