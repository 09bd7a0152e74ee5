"""Plot: a captioned grid of the first generated samples (conditional models: one column per class)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result


class SampleGrid(Metric):
    name = "sample_grid"
    modality = "image"
    needs = frozenset({"samples"})
    plots = ("samples.png",)

    def compute(self, ctx: EvalContext) -> Result:
        from evaluation import plots

        # conditional models: one column per class (every class in turn), so each column is one label
        nrow = ctx.num_classes if ctx.requested_labels is not None and ctx.num_classes <= 16 else 8
        caption = ctx.caption or f"seed {ctx.seed}"
        plots.save_captioned_grid(ctx.samples[:nrow * 8], ctx.plot_path("samples.png"), caption, nrow=nrow)
        return {}
