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

    def check(self, ctx: EvalContext) -> None:
        """A weights path that is not a file is an error before anything is computed (never a download)."""
        from pathlib import Path

        from contracts.errors import ConfigError

        weights = ctx.settings.get("inception_weights")
        if weights and not Path(weights).is_file():
            raise ConfigError("evaluation.inception_weights", f"{weights}: no such file (a local torchvision "
                              f"inception_v3 state dict; genforge never downloads it)")

    def compute(self, ctx: EvalContext) -> Result:
        weights = ctx.settings.get("inception_weights")
        if not weights:
            raise Skip(NOT_SET)
        from evaluation import metrics as metric_lib
        from evaluation.inception import InceptionFeatures

        inc = InceptionFeatures(weights)
        value = metric_lib.fid(inc(ctx.train[0]), inc(ctx.samples))
        return {"fid_inception": (value, {"feature_extractor": f"InceptionV3 pool3 ({weights})"})}
