"""Fréchet distance of generated texts vs the train split on the text domain classifier's features
(evaluation.text_classifier), its real-vs-real floor and their ratio: the image FID protocol (fid.py, the same
Fréchet maths: evaluation.metrics.fid) with the character CNN in place of the image CNN. The floor is n test
texts vs the train split (the same N as the samples; a seeded random subset of the test split,
evaluation.text_metrics.reference_index), so ``frechet_text_ratio`` ~ 1 for a model as close to the data as
unseen real text. Conditional models draw their labels by ``EvalContext.label_rule`` (in the train split's
class proportions when the classes are unbalanced, so the sample mixture matches the reference's)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result

FLOOR = "n test texts (seeded random subset) vs train split"


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
        from evaluation.text_metrics import reference_index

        f = ctx.features
        test = ctx.shared("text:reference_features", lambda: ctx.classifier_module.extract(
            ctx.classifier[0], ctx.test[0][reference_index(ctx)])[0])
        value, floor = fid(f["train"], f["fake"]), fid(f["train"], test)
        return {"frechet_text": (value, {"definition": "Fréchet distance, samples vs train split"}),
                "frechet_text_real_floor": (floor, {"compared": FLOOR}),
                "frechet_text_ratio": (value / max(floor, 1e-12),
                                       {"definition": "frechet_text / frechet_text_real_floor"})}
