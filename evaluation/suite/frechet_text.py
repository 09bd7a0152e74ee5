"""Fréchet distance of generated texts vs the train split on the text domain classifier's features
(evaluation.text_classifier), its real-vs-real floor and their ratio: the image FID protocol (fid.py) with
the character CNN in place of the image CNN. The floor is the first n test texts vs the train split (the same
N as the samples), so ``frechet_text_ratio`` ~ 1 for a model as close to the data as unseen real text."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result
from evaluation.suite.fid import FLOOR


class FrechetText(Metric):
    name = "frechet_text"
    modality = "tokens"
    uses_classifier = True
    needs = frozenset({"samples"})
    outputs = ("frechet_text", "frechet_text_real_floor", "frechet_text_ratio")

    def check(self, ctx: EvalContext) -> None:
        from contracts.errors import ConfigError

        super().check(ctx)
        if ctx.n < 2 or len(ctx.train[1]) < 2:
            raise ConfigError("evaluation.num_samples", f"frechet_text compares covariances: it needs at least 2 "
                                                        f"samples, 2 test and 2 train texts; evaluation.num_samples "
                                                        f"{ctx.settings['num_samples']} capped at the test split gives "
                                                        f"{ctx.n}, the train split has {len(ctx.train[1])}")

    def compute(self, ctx: EvalContext) -> Result:
        from evaluation.metrics import fid

        f = ctx.features
        value, floor = fid(f["train"], f["fake"]), fid(f["train"], f["test"])
        return {"frechet_text": (value, {"definition": "Fréchet distance, samples vs train split"}),
                "frechet_text_real_floor": (floor, {"compared": FLOOR}),
                "frechet_text_ratio": (value / max(floor, 1e-12),
                                       {"definition": "frechet_text / frechet_text_real_floor"})}
