"""KL divergence of the generated texts' length distribution from the train split's (characters, smoothed
with the Krichevsky-Trofimov pseudo-count 0.5 per length bin: evaluation.text_metrics.length_kl), and the same
for n test texts (a seeded random subset) as the real-data floor."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class LengthKL(Metric):
    name = "length_kl"
    modality = "tokens"
    needs = frozenset({"samples"})
    outputs = ("length_kl", "length_kl_real_floor")

    def check(self, ctx: EvalContext) -> None:
        from evaluation.text_metrics import check_samples

        check_samples(ctx, self.name)

    def compute(self, ctx: EvalContext) -> Result:
        from evaluation import text_metrics as tm

        max_len = max(1, int(ctx.data.shape[0]) - 2)
        train = tm.split_texts(ctx, "train")
        setting = {"definition": "KL(P || train lengths) in nats, lengths in characters 0..max_len",
                   "smoothing": f"+{tm.KT_ALPHA} per bin (Krichevsky-Trofimov)", "max_len": max_len}
        return {"length_kl": (tm.length_kl(tm.sample_texts(ctx), train, max_len), setting),
                "length_kl_real_floor": (tm.length_kl(tm.reference_texts(ctx), train, max_len),
                                         {**setting, "compared": "n test texts (seeded random subset)"})}
