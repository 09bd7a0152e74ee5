"""Memorization and novelty of generated texts: exact matches with the train split (evaluation.text_metrics).

``copy_rate`` has the image memorization metric's key, so one gate check (``registry.checks: [{metric:
copy_rate, max: ...}]``) applies to both modalities; for texts it is the share of samples exactly equal to a
training text (a pixel-distance threshold has no meaning for strings; an exact repeat is what copying a name
is). ``novelty`` = 1 - copy_rate; ``unique_rate``: distinct samples / samples; ``novel_real_rate``: samples
not in the train split but in the test split (new to the model and real).
"""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class Novelty(Metric):
    name = "novelty"
    modality = "tokens"
    needs = frozenset({"samples"})
    outputs = ("novelty", "copy_rate", "unique_rate", "novel_real_rate")

    def check(self, ctx: EvalContext) -> None:
        from evaluation.text_metrics import check_samples

        check_samples(ctx, self.name)

    def compute(self, ctx: EvalContext) -> Result:
        from evaluation import text_metrics as tm

        samples, train = tm.sample_texts(ctx), tm.split_texts(ctx, "train")
        values = tm.memorization(samples, train, tm.split_texts(ctx, "test"))
        setting = {"n_train": len(train), "compared": "exact string equality with a train split text"}
        definitions = {"novelty": "share of samples equal to no train text",
                       "copy_rate": "share of samples equal to a train text",
                       "unique_rate": "distinct samples / samples",
                       "novel_real_rate": "share of samples in the test split and not in the train split"}
        return {key: (values[key], {**setting, "definition": text}) for key, text in definitions.items()}
