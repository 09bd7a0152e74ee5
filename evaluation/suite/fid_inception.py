"""FID on InceptionV3 pool3 features, only with a local weights file (evaluation.inception_weights)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result, Skip

NOT_SET = "evaluation.inception_weights is not set (never downloaded)"


class FIDInception(Metric):
    name = "fid_inception"
    modality = "image"
    needs = frozenset({"samples"})
    outputs = ("fid_inception",)
    settings = {"inception_weights": None}   # a local torchvision inception_v3 state dict; never downloaded

    def compute(self, ctx: EvalContext) -> Result:
        weights = ctx.settings.get("inception_weights")
        if not weights:
            raise Skip(NOT_SET)
        from evaluation import metrics as metric_lib
        from evaluation.inception import InceptionFeatures

        inc = InceptionFeatures(weights)
        value = metric_lib.fid(inc(ctx.train[0]), inc(ctx.samples))
        return {"fid_inception": (value, {"feature_extractor": f"InceptionV3 pool3 ({weights})"})}
