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

from pipelines import catalog
from pipelines.config import load_params, project_root
from pipelines.env import apply_defaults
from pipelines.errors import GenforgeError, UsageError
from pipelines.stages import STAGES
from pipelines.settings.schema import closest

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
    from pipelines.env import user_error_tracebacks

    _state["debug"] = debug
    user_error_tracebacks(show=debug)  # a user error mid-flow: Prefect's run logs say it in one line too


def _params(params_file: Optional[Path], overrides: Optional[list[str]], data_checks: bool = True) -> dict[str, Any]:
    """params.yaml (or --params) with --set applied, checked against the settings schema before any stage
    runs (pipelines.settings.validate_settings). With `data_checks`, also against the prepared data when it
    exists (not for commands that prepare it first: its meta.json may be about to change)."""
    from pipelines.settings import validate_settings

    params = load_params(params_file, overrides or [])
    validate_settings(params, project_root() if data_checks else None)
    return params


def _report(title: str, result: dict[str, Any], started: float) -> None:
    from pipelines.terminal import report  # a rejected promotion: a red ✗ with its failed checks

    report(console, out, title, result, started)


def _run_stage(title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    with console.status(f"{title}…"):
        result = fn()
    _report(title, result, started)
    return result


def _family(value: str) -> str:
    """--family checked against the family registry: a usage error with "did you mean" for a typo."""
    from pipelines.settings import check_family

    try:
        return check_family(value, "--family")
    except GenforgeError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--family: ")) from exc


FamilyOption = typer.Option(..., "--family", "-f", help="Model family, e.g. vae or dcgan.", callback=_family)


DATA_MAKERS = ("source", "prepare")


def _stage_command(spec: Any) -> None:
    """Add `genforge stage NAME [--family F]` for one row of the stage table (pipelines/stages.py)."""
    def run(params_file: Optional[Path], overrides: Optional[list[str]], family: Optional[str]) -> None:
        # prepare (and its source fingerprint) make the data: its meta.json cannot be checked before them
        params, root = _params(params_file, overrides, data_checks=spec.name not in DATA_MAKERS), project_root()
        title = spec.name if family is None else f"{spec.name} {family}"
        if spec.progress_bar:  # draws its own progress bar: no spinner over it
            started = time.perf_counter()
            _report(title, spec.call(params, root, family), started)
        else:
            _run_stage(title, lambda: spec.call(params, root, family))

    if spec.per_family:
        def command(family: str = FamilyOption, set_: Optional[list[str]] = SetOption,
                    params_file: Optional[Path] = ParamsOption) -> None:
            run(params_file, set_, family)
    else:
        def command(set_: Optional[list[str]] = SetOption, params_file: Optional[Path] = ParamsOption) -> None:
            run(params_file, set_, None)
    command.__doc__ = spec.doc
    stage_app.command(spec.name)(command)


for _spec in STAGES:
    _stage_command(_spec)


@app.command("dvc-yaml")
def dvc_yaml_cmd(write: bool = typer.Option(False, "--write", help="Write the pipeline file instead of printing it."),
                 check: bool = typer.Option(False, "--check", help="Exit 1 when the pipeline file differs."),
                 params_file: Optional[Path] = typer.Option(
                     None, "--params", "-p", help="Render the pipeline of this params file (stages/<name>/dvc.yaml) "
                                                  "instead of ./dvc.yaml's (params.yaml).")) -> None:
    """Render dvc.yaml from the stage table (pipelines/stages.py): stages, deps (computed code deps), params, outs."""
    from pipelines.dvcfile import pipeline_file, render

    root = project_root()
    rel = None
    if params_file is not None:
        load_params(params_file)  # exists and parses, else one error line
        try:
            rel = params_file.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise UsageError(f"--params {params_file}: must be a file inside the project ({root}), as DVC reads "
                             "it from there") from None
    text, target = render(rel), root / pipeline_file(rel)
    if check:
        if not target.exists() or target.read_text() != text:
            hint = f" --params {rel}" if rel and rel != "params.yaml" else ""
            raise GenforgeError(f"{target} differs from the stage table; run `genforge dvc-yaml{hint} --write`")
        console.print(f"{target} matches the stage table")
    elif write:
        from contracts.io import atomic_write_text

        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
        console.print(f"wrote {target.relative_to(root)}", soft_wrap=True)
    else:
        sys.stdout.write(text)


registry_app = typer.Typer(help="Review and steer the MLflow model registry.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("show")
def registry_show(name: str = typer.Argument(..., metavar="NAME", help="Registered model, e.g. mnist5k-vae."),
                  as_json: bool = typer.Option(False, "--json", help="Print typed records as JSON on stdout "
                                               "(full sha256 and commit, numbers, alias and reason lists).")) -> None:
    """Versions side by side: aliases, created, git commit, data sha256, main metrics, decision and reasons."""
    from pipelines.registry import records, show
    from pipelines.terminal import print_json, print_table

    if as_json:
        print_json(records(name))
    else:
        print_table(out, show(name), f"{name} (MLflow registry: mlflow ui --backend-store-uri sqlite:///mlflow.db)",
                    "no versions")


@registry_app.command("promote")
def registry_promote(name: str = typer.Argument(..., metavar="NAME"),
                     version: str = typer.Argument(..., metavar="VERSION"),
                     reason: str = typer.Option(..., "--reason", "-r", help="Why; recorded on the version.")) -> None:
    """Make VERSION the champion by hand, recording the reason."""
    from pipelines.registry import manual_promote

    _report(f"{name}/{version} is champion", manual_promote(name, version, reason), time.perf_counter())


@registry_app.command("rollback")
def registry_rollback(name: str = typer.Argument(..., metavar="NAME"),
                      reason: str = typer.Option(..., "--reason", "-r", help="Why; recorded on the version.")) -> None:
    """Move champion back to the previous champion, recording the reason."""
    from pipelines.registry import rollback

    _report(f"{name} rolled back", rollback(name, reason), time.perf_counter())


@registry_app.command("review")
def registry_review(name: str = typer.Argument(..., metavar="NAME", help="Registered model, e.g. mnist5k-vae."),
                    version: Optional[str] = typer.Argument(None, metavar="[VERSION]",
                                                            help="Version to review (default: @challenger)."),
                    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for review.html "
                                                           "(default: review/<name>-v<version>)."),
                    n: int = typer.Option(64, "-n", "--num", help="Samples per grid."),
                    seed: int = typer.Option(0, "--seed", help="Seed of both grids.")) -> None:
    """Write review.html: the version and the champion side by side (grids from the same seed, the gate's
    checks, metrics with deltas); self-contained, opens with no network."""
    from pipelines.review import write_review

    started = time.perf_counter()
    _report(f"review of {name}", write_review(name, version, out_dir, n=n, seed=seed), started)


def _decide(name: str, version: str, decision: str, reason: str, by: Optional[str]) -> None:
    from pipelines.approval import decide

    record = decide(name, version, decision, reason, by)
    done = "already " if record.get("already") else ""
    champion = f"v{record['champion_after']}" if record["champion_after"] else "none"
    mark = "[green]✓[/green]" if record["decision"] == "approved" else "[red]✗[/red]"
    console.print(f"{mark} {name}/{version} {done}{record['decision']} by {record['approval']['by']}; champion: "
                  f"{champion}" + (f"\n{record['flow_run']}" if record.get("flow_run") else ""), highlight=False)
    out.print_json(json.dumps(record, default=str))


@registry_app.command("approve")
def registry_approve(name: str = typer.Argument(..., metavar="NAME"),
                     version: str = typer.Argument(..., metavar="VERSION"),
                     reason: str = typer.Option(..., "--reason", "-r", help="Why; recorded on the version."),
                     by: Optional[str] = typer.Option(None, "--by", help="Reviewer; default: your login.")) -> None:
    """Approve a version awaiting approval (registry.approval: manual): it becomes champion."""
    _decide(name, version, "approve", reason, by)


@registry_app.command("reject")
def registry_reject(name: str = typer.Argument(..., metavar="NAME"),
                    version: str = typer.Argument(..., metavar="VERSION"),
                    reason: str = typer.Option(..., "--reason", "-r", help="Why; recorded on the version."),
                    by: Optional[str] = typer.Option(None, "--by", help="Reviewer; default: your login.")) -> None:
    """Reject a version awaiting approval: champion stays where it is."""
    _decide(name, version, "reject", reason, by)


@app.command("generate")
def generate_cmd(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="<name>@<alias> or <name>/<version>, e.g. mnist5k-vae@champion."),
    n: int = typer.Option(..., "-n", "--num", help="Number of samples."),
    seed: int = typer.Option(0, "--seed"),
    out_dir: Path = typer.Option(..., "--out", help="Output folder (manifest.json, shards/, preview.png or preview.txt)."),
    batch_size: int = typer.Option(256, "--batch-size"),
    label: Optional[str] = typer.Option(None, "--label", help="Class to generate (conditional models only): an "
                                        "index or a class name (index:K / name:NAME where a name is a number)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: every CPU)."),
    parallel: Optional[str] = typer.Option(None, "--parallel", help="How the threads share the work: batch (slices "
                                           "of each batch at once; the default) | ops (ONNX Runtime's intra-op "
                                           "threads; the default with --spin). Same samples either way."),
    spin: bool = typer.Option(False, "--spin", help="ONNX Runtime's intra-op threads busy-wait between ops "
                              "(--parallel ops): faster with 2+ threads on an otherwise idle machine, slower on a "
                              "shared one (same samples)."),
    png: bool = typer.Option(False, "--png", help="Also write one file per sample (first 1000), in the data's "
                             "format: images png/NNNNNNN.png, text txt/NNNNNNN.txt."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace another generation's outputs in --out, or write beside files of "
                                        "yours there (a file genforge did not write is never replaced)."),
    provider: str = typer.Option("auto", "--provider", help="auto (CUDA when it works) | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest (shards counted) as JSON on stdout."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (ddim samplers; default: the model's)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM eta, 0 = deterministic (default: the model's)."),
    temperature: Optional[float] = typer.Option(None, "--temperature",
                                                help="Noise temperature (flow samplers) or softmax temperature "
                                                     "(token samplers); default: the model's."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Draw from the k likeliest tokens (token samplers)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus: the likeliest tokens holding this share "
                                          "of the probability (token samplers)."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Characters before <eos> is forced (token samplers)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Diffusion sampler: ddim | dpmpp_2m "
                                          "(default: the model's)."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance-scale", help="Classifier-free guidance w "
                                                   "(conditional diffusion): 0 unconditional, 1 conditional, "
                                                   ">1 guided (default: the model's)."),
    guidance_min_t: Optional[int] = typer.Option(None, "--guidance-min-t", help="Guide only the steps at "
                                                 "timesteps t >= this (0: every step; default: the model's)."),
) -> None:
    """Batch-generate samples from a registered model with ONNX Runtime (never imports torch)."""
    from pipelines import tracking
    from pipelines.terminal import generation_summary, print_json, sample_progress
    from serving.generator import generate
    from serving.resolve import fetch_onnx, resolve

    # every error below is a ServingError: main() prints it as one line
    resolved = resolve(tracking.client(), model)
    local = fetch_onnx(resolved, catalog.generator_cache(project_root()))
    ref = f"{resolved.name}/{resolved.version}"
    with sample_progress(console, n, ref) as progress:
        result = generate(local, n, seed, out_dir, batch_size=batch_size, label=label, threads=threads, spin=spin, png=png,
                          parallel=parallel, model_id=resolved.model_id, provider=provider, progress=progress,
                          sampling={"steps": steps, "eta": eta, "temperature": temperature, "top_k": top_k,
                                    "top_p": top_p, "max_len": max_len, "sampler": sampler,
                                    "guidance_scale": guidance_scale, "guidance_min_t": guidance_min_t},
                          overwrite=overwrite)
    console.print(generation_summary(result, ref), highlight=False, soft_wrap=True)
    if as_json:
        print_json({k: v for k, v in result.items() if k != "shards"} | {"shards": len(result.get("shards", []))})


@app.command("run")
def run_main(
    set_: Optional[list[str]] = SetOption,
    params_file: Optional[Path] = ParamsOption,
    samples: int = typer.Option(10_000, "--samples", help="Samples to generate from each champion (0: none)."),
    task_runner: str = typer.Option("thread", "--task-runner", help="thread (sequential) | dask (families in parallel)."),
) -> None:
    """The main job: the retrain flow for every family in model.families, then samples from each champion."""
    from contracts.io import exclusive

    params, root = _params(params_file, set_, data_checks=False), project_root()
    # one main run per project at a time: a second one (a schedule overlapping a manual run) is refused at once
    with exclusive(catalog.lock_path(root), f"the main run of {root}"):
        _run_locked(params, root, samples, task_runner, pinned=None if set_ else _pipeline_of(root, params_file))


def _run_locked(params: dict[str, Any], root: Path, samples: int, task_runner: str, pinned: str | None) -> None:
    from pipelines.flows import families_of, generate_flow, run_retrain
    from pipelines.prepare import dataset_name
    from pipelines.registry import gate_settings, model_name, show

    started = time.perf_counter()
    results = run_retrain(params, root, task_runner)
    dataset = dataset_name(params)
    rows = []
    for family in families_of(params):
        name = model_name(dataset, family)
        versions = show(name)
        champion = next((v for v in versions if "champion" in str(v["aliases"]).split(",")), None)
        latest = versions[-1] if versions else {}
        samples_at = "-"
        if champion is not None and samples > 0:
            target = catalog.outputs_dir(root, name)
            # outputs/<model> is genforge's own: a new champion's samples replace the previous ones
            generate_flow(f"{name}@champion", samples, 0, str(target), str(root), overwrite=True)
            samples_at = str(target)
        status = results.get(f"train:{family}", {}).get("status", "")
        primary = gate_settings(params, family)["primary_metric"]  # fid_ratio, bits_per_dim, ...: named
        metric = latest.get("primary", "-")
        if metric == "-" and latest.get(primary, "-") != "-":
            metric = f"{primary} {latest[primary]}"
        rows.append({"model": name, "champion": champion["version"] if champion else "-",
                     "latest": latest.get("version", "-"), "decision": latest.get("decision", "-"),
                     "primary metric": metric, "coverage": latest.get("coverage", "-"),
                     "collapse": latest.get("mode_collapse", "-"), "train": _train_status(status),
                     "reasons": latest.get("reasons", "-"), "samples": samples_at})
    from pipelines.terminal import print_table

    for column in ("coverage", "collapse"):  # image metrics: no column where no model has them (text data)
        if all(row[column] == "-" for row in rows):
            for row in rows:
                del row[column]
    print_table(out, rows, f"genforge run on {dataset} ({time.perf_counter() - started:.0f} s)")
    _dvc_commit(root, pinned=pinned)
    from prefect.settings import PREFECT_UI_URL

    from pipelines.flows import api_url

    api = api_url()  # a Prefect server keeps the flow runs, their task runs and artifacts; the ephemeral one does not
    out.print("Review: [bold]genforge registry show <model>[/bold], [bold]genforge registry review <model>[/bold] "
              "or [bold]mlflow ui --backend-store-uri sqlite:///mlflow.db[/bold] "
              "(http://127.0.0.1:5000/#/experiments?workflowType=machine_learning)\n"
              + (f"Flow runs and their artifacts: {PREFECT_UI_URL.value()}/runs" if api else
                 "Flow runs and their artifacts: [bold]genforge server start[/bold] (http://127.0.0.1:4200), then "
                 "[bold]export PREFECT_API_URL=http://127.0.0.1:4200/api[/bold] before the next run"), soft_wrap=True)


def _train_status(status: str) -> str:
    """The run table's `train` cell: ran, cached (inputs and params unchanged) or skipped (the champion matches)."""
    return "cached" if status.startswith("skipped (cached") else (status.split(":")[0] if status else "-")


@app.command("schedule")
def schedule_cmd(
    cron: str = typer.Option(..., "--cron", help='Cron expression, e.g. "0 3 * * *" (03:00 every day).'),
    name: str = typer.Option("scheduled", "--name", help="Deployment name."),
    set_: Optional[list[str]] = SetOption,
    params_file: Optional[Path] = ParamsOption,
) -> None:
    """Serve the retrain flow as a Prefect deployment on a cron schedule (needs a Prefect API server)."""
    from pipelines.flows import serve_schedule

    _params(params_file, set_, data_checks=False)  # fail now, not at 03:00, on a bad params file or --set
    serve_schedule(project_root(), cron, name, str(params_file) if params_file else None, list(set_ or []))


server_app = typer.Typer(help="A local Prefect API server (holds schedules; the ephemeral one cannot).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(port: int = typer.Option(4200, "--port"), host: str = typer.Option("127.0.0.1", "--host")) -> None:
    """Start `prefect server start` on loopback with PREFECT_HOME under the project; its UI talks to --port,
    and SIGTERM/SIGINT stop it (no server is left behind)."""
    from pipelines.server import start_server

    raise typer.Exit(start_server(host, port, console))


def _pipeline_of(root: Path, params_file: Optional[Path]) -> str | None:
    """The DVC pipeline file (relative to `root`) that replays runs of `params_file`, None when there is none:
    dvc.yaml for params.yaml, `stages/<name>/dvc.yaml` for another params file inside the project."""
    from pipelines.dvcfile import pipeline_file

    if params_file is None:
        return "dvc.yaml"
    try:
        rel = params_file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    return pipeline_file(rel) if (root / pipeline_file(rel)).exists() else None


def _dvc_commit(root: Path, pinned: str | None) -> None:
    """Record what the flow produced in the lock file of its pipeline (`pinned`: dvc.yaml or
    stages/<name>/dvc.yaml), so `dvc repro` right after has nothing to do."""
    import subprocess

    if not (root / ".dvc").is_dir() or (pinned is not None and not (root / pinned).exists()):
        return
    if pinned is None:
        console.print("[yellow]dvc.lock not updated:[/yellow] this run used --set (or a params file with no DVC "
                      "pipeline: `genforge dvc-yaml --params FILE --write` makes one); put the values in the params "
                      "file to replay them with `dvc repro`")
        return
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc) if dvc.exists() else "dvc", "commit", "--force", "--quiet", pinned], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(f"[yellow]dvc commit failed[/yellow] (dvc.lock not updated): {proc.stderr.strip()[:500]}")
    else:
        console.print(f"dvc.lock updated: `dvc repro {pinned}` now has nothing to do until data, code or params change")


def _library_user_error(exc: BaseException) -> bool:
    """Errors of the serving layer and MLflow that describe a bad request (an unknown model or version, an
    unservable artifact), not a bug: shown as one line like a GenforgeError. Looked up only in modules
    already imported, so this never imports them."""
    for module, names in (("serving.resolve", ("ResolveError",)), ("serving.generator", ("GenerationError",)),
                          ("serving.export", ("ExportError",)), ("serving.samplers", ("SamplerSpecError",)),
                          ("mlflow.exceptions", ("MlflowException",))):
        mod = sys.modules.get(module)
        if mod is not None and isinstance(exc, tuple(getattr(mod, n) for n in names if hasattr(mod, n))):
            return True
    return False


def _fail(message: str, code: int, usage: str = "") -> None:
    """One `error: ...` line on stderr (typer's usage line after it for usage errors), then exit `code`."""
    from rich.markup import escape

    if _state["debug"] and sys.exc_info()[0] is not None:
        traceback.print_exc()
    first = (str(message).strip().splitlines() or [""])[0]
    console.print(f"[bold red]error:[/bold red] {escape(first)}", highlight=False, soft_wrap=True)
    if usage:
        console.print(usage, highlight=False, soft_wrap=True, markup=False)
    sys.exit(code)


def _usage_error(exc: Exception) -> None:
    """A command-line mistake from typer (unknown command or option, missing or malformed value): exit 2."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    usage = ""
    if ctx is not None:
        usage = ctx.get_usage()
        if "No such command" in message and hasattr(ctx.command, "list_commands"):
            name = message.split("'")[1] if message.count("'") >= 2 else ""
            match = closest(name, ctx.command.list_commands(ctx))
            if match and "did you mean" not in message.lower():
                message = f"{message.rstrip('.')}; did you mean {match!r}?"
        usage += f"\nTry '{ctx.command_path} --help' for help."
    _fail(message, 2, usage)


def main() -> None:
    """The `genforge` entry point: every user error is one `error:` line and a non-zero exit (2 for the
    command line itself, 1 for the rest, 130 for Ctrl-C); `--debug` adds the traceback."""
    from typer import _click as typer_click

    usage_errors = (typer_click.exceptions.UsageError, click.UsageError)
    click_errors = (typer_click.exceptions.ClickException, click.ClickException)
    if "--debug" in sys.argv[1:]:  # set before parsing, so a usage error also shows its traceback
        _state["debug"] = True
    try:
        code = app(standalone_mode=False, prog_name="genforge")
    except GenforgeError as exc:
        _fail(str(exc), exc.exit_code)
    except usage_errors as exc:
        _usage_error(exc)
    except click_errors as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort, click.exceptions.Abort):
        _fail("interrupted", 130)
    except (typer.Exit, click.exceptions.Exit) as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 (serving / MLflow errors that are the user's, see _library_user_error)
        from contracts.io import storage_error

        disk = storage_error(exc)  # a full disk, a quota, a read-only or forbidden folder: the machine's, one line
        if disk is not None:
            _fail(str(disk), disk.exit_code)
        if not _library_user_error(exc):
            raise
        _fail(f"{exc.__class__.__name__}: {exc}" if not str(exc) else str(exc), 1)
    else:
        if code == 130:  # typer turns Ctrl-C into Exit(130) and returns it in non-standalone mode
            _fail("interrupted", 130)
        if isinstance(code, int) and code:
            sys.exit(code)


if __name__ == "__main__":
    main()
