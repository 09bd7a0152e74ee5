"""Test-split negative log-likelihood in nats per sample and in bits per dimension."""
from __future__ import annotations

import math

import numpy as np

from evaluation.suite.base import EvalContext, Metric, Result, to_model_input


class NLL(Metric):
    name = "nll"
    modality = "image"  # per image and per dimension; texts: bits_per_char
    needs = frozenset({"nll"})
    outputs = ("nll_nats", "bits_per_dim")
    settings = {"nll_max_images": 500}

    def compute(self, ctx: EvalContext) -> Result:
        test_x = ctx.test[0]
        k = min(len(test_x), int(ctx.settings["nll_max_images"]))
        nll = ctx.batched(ctx.model.nll, to_model_input(test_x[:k], ctx.modality), 100)
        dims = int(np.prod(ctx.data.shape))
        variant = getattr(ctx.model, "nll_variant", "model-defined")
        return {"nll_nats": (float(nll.mean()), {"unit": "nats per image", "n_images": k, "split": "test",
                                                 "variant": variant}),
                "bits_per_dim": (float(nll.mean() / (dims * math.log(2))), {"n_images": k, "split": "test",
                                                                             "variant": variant})}
