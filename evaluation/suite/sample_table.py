"""The samples as text: a Markdown table of the first generated strings, one column per class for
conditional models (``samples.md``, logged as the run artifact ``evaluation/samples.md``; the model card
embeds it where an image modality links its grid)."""
from __future__ import annotations

import numpy as np

from evaluation.suite.base import EvalContext, Metric, Result

ROWS = 8
CELL_CHARS = 40


def cell(text: str) -> str:
    """A table cell: at most CELL_CHARS characters (… when cut), ``|`` escaped, line breaks as ⏎."""
    text = text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"
    if not text:
        return "(empty)"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "⏎").replace("\n", "⏎")


def markdown_table(records: list[dict], class_names: list[str], rows: int = ROWS, caption: str = "") -> str:
    """``records`` (contracts.modalities.tokens.to_records) as a Markdown table: a column per class present
    (in class order; "sample" when unlabelled), the first ``rows`` texts of each."""
    columns: dict[str, list[str]] = {}
    for name in class_names:
        columns[name] = []
    for rec in records:
        columns.setdefault(rec["class"] if rec["class"] is not None else "sample", []).append(rec["text"])
    columns = {k: v[:rows] for k, v in columns.items() if v}
    depth = max((len(v) for v in columns.values()), default=0)
    lines = ["| " + " | ".join(cell(k) for k in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v[i]) if i < len(v) else "" for v in columns.values()) + " |"
              for i in range(depth)]
    return "\n".join(([f"*{caption}*", ""] if caption else []) + lines) + "\n"


class SampleTable(Metric):
    name = "sample_table"
    modality = "tokens"
    needs = frozenset({"samples"})
    plots = ("samples.md",)

    def check(self, ctx: EvalContext) -> None:
        from evaluation.text_metrics import check_samples

        check_samples(ctx, self.name)

    def compute(self, ctx: EvalContext) -> Result:
        from contracts.modalities.tokens import to_records

        spec = ctx.model.config.data
        labels = ctx.requested_labels if ctx.requested_labels is not None else np.full(len(ctx.samples), -1)
        records = to_records(ctx.samples, labels, spec.vocab, spec.class_names)
        text = markdown_table(records, list(spec.class_names) if ctx.requested_labels is not None else [],
                              caption=ctx.caption or f"seed {ctx.seed}")
        ctx.plot_path("samples.md").write_text(text, encoding="utf-8")
        return {}
