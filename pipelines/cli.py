"""The `genforge` command line: every stage, the main job, and (later) registry and serving commands."""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import click
import typer
from rich.console import Console

from pipelines.config import load_params, project_root
from pipelines.env import apply_defaults
from pipelines.errors import GenforgeError

apply_defaults(project_root())

console = Console(stderr=True)
out = Console()
app = typer.Typer(help="genforge: validated data, reproducible training, evaluation, registry and serving "
                       "of generative models.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
stage_app = typer.Typer(help="Run one pipeline stage (what dvc.yaml and the Prefect flows call).",
                        no_args_is_help=True)
app.add_typer(stage_app, name="stage")

_state = {"debug": False}

SetOption = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                         help="Override params.yaml, dotted keys, value parsed as YAML; repeatable.")
ParamsOption = typer.Option(None, "--params", "-p", help="Params file to use instead of ./params.yaml.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors.")) -> None:
    _state["debug"] = debug


def _params(params_file: Optional[Path], overrides: Optional[list[str]]) -> dict[str, Any]:
    return load_params(params_file, overrides or [])


def _report(title: str, result: dict[str, Any], started: float) -> None:
    console.print(f"[green]✓[/green] {title} [dim]({time.perf_counter() - started:.1f} s)[/dim]")
    out.print_json(json.dumps(result, default=str))


def _run_stage(title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    with console.status(f"{title}…"):
        result = fn()
    _report(title, result, started)
    return result


@stage_app.command("prepare")
def stage_prepare(set_: Optional[list[str]] = SetOption, params_file: Optional[Path] = ParamsOption) -> None:
    """Read data.source and write data/prepared/<name>/ (train.npz, test.npz, meta.json)."""
    from pipelines.prepare import prepare

    params, root = _params(params_file, set_), project_root()
    _run_stage("prepare", lambda: prepare(params, root))


@stage_app.command("validate")
def stage_validate(set_: Optional[list[str]] = SetOption, params_file: Optional[Path] = ParamsOption) -> None:
    """Check the prepared data (Great Expectations suite); write reports/<dataset>/validation.json."""
    from pipelines.prepare import prepared_dir
    from pipelines.validate import validate

    params, root = _params(params_file, set_), project_root()
    _run_stage("validate", lambda: validate(params, root, prepared_dir(root, params)))


@app.command("run")
def run_main(set_: Optional[list[str]] = SetOption, params_file: Optional[Path] = ParamsOption) -> None:
    """The main job on the embedded default data set."""
    from pipelines.prepare import prepare, prepared_dir
    from pipelines.validate import validate

    params, root = _params(params_file, set_), project_root()
    prepared = _run_stage("prepare", lambda: prepare(params, root))
    checked = _run_stage("validate", lambda: validate(params, root, prepared_dir(root, params)))
    out.print(f"\nPrepared data: [bold]{prepared['path']}[/bold]\nValidation report: [bold]{checked['report']}[/bold]")


def main() -> None:
    try:
        app(standalone_mode=False)
    except GenforgeError as exc:
        if _state["debug"]:
            traceback.print_exc()
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.Abort:
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
