"""What the `genforge` commands print: stage reports (a rejected promotion is a red ✗ with its failed checks,
never a green ✓), tables that are never cut when piped, `--json` rows, and `genforge generate`'s progress bar
and summary. Torch-free (`genforge generate` imports it)."""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 100_000  # a table written to a pipe or file is as wide as its content: nothing is cut


def report(console: Console, out: Console, title: str, result: dict[str, Any], started: float) -> None:
    """One status line on ``console`` (stderr), then ``result`` as JSON on ``out`` (stdout). A rejected
    decision (``result["decision"] == "rejected"``) prints `✗ rejected: <check> <observed> <op> <limit>` in
    red (``result["rejected"]``, else its reasons); everything else a green ✓ and ``title``."""
    seconds = f"{time.perf_counter() - started:.1f} s"
    if result.get("decision") == "rejected":
        why = result.get("rejected") or "; ".join(str(r) for r in result.get("reasons") or []) or "rejected by the gate"
        console.print(f"[bold red]✗ rejected: {escape(why)}[/bold red] [dim]({escape(title)}, {seconds})[/dim]",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"[green]✓[/green] {escape(title)} [dim]({seconds})[/dim]", highlight=False, soft_wrap=True)
    out.print_json(json.dumps(result, default=str))


def _cell(column: str, value: Any) -> Text:
    text = "-" if value is None else str(value)
    if column == "decision":
        if text == "rejected":
            return Text(f"✗ {text}", style="bold red")
        if text in ("promoted", "manual-promote"):
            return Text(f"✓ {text}", style="green")
    if column == "reasons" and text != "-":
        return Text(text, style="red")
    return Text(text)


def print_table(out: Console, rows: list[dict[str, Any]], title: str, empty: str = "no rows") -> None:
    """``rows`` (dicts with the same keys) as a table on ``out``. On a terminal, long cells wrap; written to a
    pipe or a file, the table is as wide as its content: no cell is ever cut to `…`."""
    target = out if out.is_terminal else Console(file=out.file, width=PIPED_WIDTH, no_color=True,
                                                 highlight=False, emoji=False)
    if not rows:
        target.print(f"{title}: {empty}", highlight=False, markup=False)
        return
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(k, v) for k, v in row.items()])
    target.print(table)


def print_json(rows: Any) -> None:
    """``rows`` as indented JSON on stdout (plain: no colour, no wrapping)."""
    sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")


# ---- genforge generate ------------------------------------------------------------------------------
class SamplesPerSecond(ProgressColumn):
    """Samples per second of the generation so far (rich's speed estimate over the last updates)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} samples/s" if speed else "- samples/s", style="progress.data.speed")


@contextmanager
def sample_progress(console: Console, n: int, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on ``console`` (stderr) for a generation of ``n`` samples: samples done, samples/s and
    ETA. Yields the ``progress(done, n)`` callback serving.generator.generate calls after every shard, or None
    when ``console`` is not a terminal (nothing is drawn into logs). The clock starts at the first call (after
    the model is loaded), and shards reused from an earlier run do not count towards the rate."""
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), SamplesPerSecond(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, refresh_per_second=4) as progress:
        task = progress.add_task(what, total=n, start=False)
        started = [False]

        def update(done: int, total: int) -> None:
            if not started[0]:
                progress.reset(task, total=total, completed=done, start=True)
                started[0] = True
            else:
                progress.update(task, completed=done)

        yield update


def generation_summary(result: dict[str, Any], model: str) -> str:
    """One human line (rich markup) about a finished generation: model/version, n, out dir, samples/s,
    provider, and the shards reused from an earlier run when there were any."""
    run = result.get("run") or {}
    rate = run.get("samples_per_s")
    reused = run.get("reused_shards") or 0
    parts = [f"{rate:,.0f} samples/s" if rate else "no new samples", str(result.get("provider", "?"))]
    if reused:
        parts.append(f"{reused} shard{'s' if reused != 1 else ''} reused")
    return (f"[green]✓[/green] generated {result.get('n')} samples from [bold]{escape(model)}[/bold] "
            f"(seed {result.get('seed')}) into {escape(str(run.get('out_dir', '?')))} "
            f"[dim]({', '.join(escape(p) for p in parts)}; {run.get('seconds', 0):.1f} s)[/dim]")
