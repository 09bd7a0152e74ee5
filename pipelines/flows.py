"""Prefect flows: `retrain` (source -> prepare -> validate -> per family: train -> evaluate -> export ->
register -> promote) and `generate` (the ONNX Runtime batch generator).

Each task wraps the very stage function the CLI and dvc.yaml call, in the order and with the inputs,
outputs and params of the stage table (pipelines/stages.py). Caching is keyed on content hashes of a
stage's input files and its params (never on tensors), and a key is only reused while the stage's
outputs are still what that run wrote (their digest is kept beside the cache) and the MLflow run or model
version they name still exists, so an unchanged stage is skipped (and logged as skipped), and a deleted,
edited or corrupt output, a deleted version or an emptied MLflow store is rebuilt. `source` and `promote` are never cached; `prepare` is keyed on the source fingerprint file
that `source` writes, as dvc.yaml's prepare depends on it. Results persist under PREFECT_HOME (the project's .prefect/), not the user's home.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.config import project_root
from pipelines.env import apply_defaults

apply_defaults(project_root())  # before prefect reads its settings: no telemetry, state under the project

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.logging import get_logger  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from pipelines.config import params_hash, section  # noqa: E402
from pipelines.settings import validate_settings  # noqa: E402
from pipelines.errors import GenforgeError  # noqa: E402
from pipelines import catalog, flow_reports, stages  # noqa: E402
from pipelines.approval import review_pending  # noqa: E402
from pipelines.prepare import dataset_name  # noqa: E402

CODE_VERSION = "1"  # bump to invalidate every cached stage result after a breaking change


def _files_of(path: Path) -> list[Path]:
    """A catalog path as files: itself, or every file under a folder (sorted); [] when missing."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p).encode())
        if p.is_file():
            with open(p, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
        else:
            h.update(b"<missing>")
    return h.hexdigest()


def _param(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return copy.deepcopy(value)


def stage_io(stage: str, params: dict[str, Any], root: Path, family: str | None = None) -> tuple[list[Path], dict, list[Path]]:
    """(input files, params that matter, output paths) of a stage, from the stage table: its cache key is made
    of the inputs' bytes and these params (plus the tracking URI for stages that talk to MLflow)."""
    from pipelines.tracking import tracking_uri

    spec, dataset = stages.stage(stage), dataset_name(params)
    inputs = [f for name in spec.inputs for f in _files_of(catalog.path(name, root, dataset, family or ""))]
    relevant: dict[str, Any] = {key: _param(params, key) for key in spec.param_keys(family)}
    if "mlflow" in spec.external:
        relevant["tracking_uri"] = tracking_uri()
    outputs = [catalog.path(o.entry, root, dataset, family or "") for o in spec.outputs]
    return inputs, relevant, outputs


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    stage, params, root, family = (parameters["stage"], parameters["params"], Path(parameters["root"]),
                                   parameters.get("family"))
    inputs, relevant, _ = stage_io(stage, params, root, family)
    return f"{stage}-{family}-" + params_hash({"v": CODE_VERSION, "inputs": _hash_files(inputs), "params": relevant,
                                                "root": str(root)})


def _call(stage: str, params: dict[str, Any], root: Path, family: str | None) -> dict[str, Any]:
    spec = stages.stage(stage)
    kwargs = {"progress": False} if spec.progress_bar else {}
    return spec.call(params, root, family, **kwargs)


def _run_logged(stage: str, params: dict[str, Any], root: str, family: str | None) -> dict[str, Any]:
    get_run_logger().info("running %s%s", stage, f" for {family}" if family else "")
    return _call(stage, params, Path(root), family)


@task(task_run_name="{stage}-{family}", cache_key_fn=stage_cache_key, persist_result=True)
def run_stage(stage: str, params: dict[str, Any], root: str, family: str | None = None) -> dict[str, Any]:
    return _run_logged(stage, params, root, family)


@task(task_run_name="{stage}-{family}", persist_result=False)
def run_uncached(stage: str, params: dict[str, Any], root: str, family: str | None = None) -> dict[str, Any]:
    """Stages the table marks uncached: `source` (it re-reads data.source each time, as DVC's always_changed)
    and `promote` (the decision depends on the registry's current champion, not only on files)."""
    return _run_logged(stage, params, root, family)


def _runner(spec: stages.Stage):
    """The Prefect task for a stage row: cached or not, retried or not, as the table says."""
    if not spec.cached:
        return run_uncached
    return run_stage.with_options(retries=spec.retries, retry_delay_seconds=3) if spec.retries else run_stage


# ---- a cached result is valid only while its product is --------------------------------------------
def _product_record(stage: str, params: dict[str, Any], root: Path, family: str | None) -> Path:
    """Where the digest of what the run behind a cache key produced is kept, beside Prefect's results."""
    from prefect.settings import PREFECT_HOME

    key = stage_cache_key(None, {"stage": stage, "params": params, "root": str(root), "family": family})
    return Path(PREFECT_HOME.value()) / "genforge-products" / f"{key}.json"


def _outputs_digest(stage: str, params: dict[str, Any], root: Path, family: str | None) -> str:
    return _hash_files([f for p in stage_io(stage, params, root, family)[2] for f in _files_of(p)])


def _mlflow_problem(entry: str, path: Path) -> str | None:
    """For an output that names something in MLflow (train.json/metrics.json: a run; registered.json: a model
    version), why that thing is gone (deleted, or the store was emptied or replaced); None while it exists."""
    from pipelines import registry_state

    if entry not in ("train_info", "metrics", "registered"):
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{path} is unreadable"
    if entry == "registered":
        return registry_state.registered_problem(record)
    run_id = record.get("run_id") if isinstance(record, dict) else None
    return None if registry_state.run_exists(run_id) else f"{path} names MLflow run {run_id}, which the store no longer holds"


def product_problem(stage: str, params: dict[str, Any], root: Path, family: str | None) -> str | None:
    """Why a cached result of `stage` must not be reused (None: it may): an output is missing, its files are not
    the ones that run wrote (edited, corrupt, replaced), or the MLflow run or model version it names is gone."""
    spec = stages.stage(stage)
    outputs = stage_io(stage, params, root, family)[2]
    missing = next((p for p in outputs if not p.exists()), None)
    if missing is not None:
        return f"{missing} is missing"
    try:
        recorded = json.loads(_product_record(stage, params, root, family).read_text()).get("outputs_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded != _outputs_digest(stage, params, root, family):
        return "its outputs are not the ones the cached run wrote"
    for out, path in zip(spec.outputs, outputs):
        problem = _mlflow_problem(out.entry, path)
        if problem:
            return problem
    return None


def _stage(stage: str, params: dict[str, Any], root: Path, family: str | None, results: dict[str, Any]) -> dict[str, Any]:
    from contracts.io import atomic_write_json

    spec = stages.stage(stage)
    runner = _runner(spec)
    key = f"{stage}:{family}" if family else stage
    runner = runner.with_options(task_run_name=flow_reports.task_run_name(stage, dataset_name(params), family))
    problem = product_problem(stage, params, root, family) if spec.cached else None
    if problem:  # a cached result would be a lie: run the stage again
        get_run_logger().info("%s: not reusing a cached result: %s", key, problem)
        runner = runner.with_options(refresh_cache=True)
    state = runner(stage, params, str(root), family, return_state=True)
    if state.is_failed():
        results[key] = {"status": "failed", "error": str(state.message)}
        exc = state.result(raise_on_failure=False)
        raise exc if isinstance(exc, BaseException) else GenforgeError(str(state.message))
    status = "skipped (cached: inputs and params unchanged)" if state.name == "Cached" else "ran"
    if state.name == "Cached":
        get_run_logger().info("%s skipped: cached, its inputs and params are unchanged", key)
    elif spec.cached:
        atomic_write_json(_product_record(stage, params, root, family),
                          {"stage": stage, "family": family, "outputs_sha256": _outputs_digest(stage, params, root, family)})
    results[key] = {"status": status, "result": state.result()}
    return results[key]["result"]


def _champion_matches(params: dict[str, Any], root: Path, family: str) -> str | None:
    """Why training can be skipped: the current champion was made from this data with these params."""
    from mlflow.exceptions import MlflowException

    from pipelines import tracking
    from pipelines.registry import model_name
    from pipelines.train import plan_training

    ds, _, _, fingerprint = plan_training(params, root, family)
    try:
        champion = tracking.client().get_model_version_by_alias(model_name(ds.name, family), "champion")
    except MlflowException:
        return None
    tags = dict(champion.tags)
    if tags.get("data_sha256") == ds.sha256 and tags.get("params_hash") == fingerprint:
        return (f"champion {model_name(ds.name, family)}/{champion.version} was trained on data {ds.sha256[:12]} "
                f"with params {fingerprint[:12]}: nothing new to train")
    return None


def _family_chain(params: dict[str, Any], root: Path, family: str, results: dict[str, Any]) -> None:
    reason = _champion_matches(params, root, family)
    if reason:
        get_run_logger().info("%s: training skipped, %s", family, reason)
        results[f"train:{family}"] = {"status": f"skipped: {reason}"}
        flow_reports.record_skip("train", family, reason)  # a `Skipped` task in the UI, with the reason
    else:
        for spec in stages.FAMILY_STAGES:
            _stage(spec.name, params, root, family, results)
    flow_reports.publish_family(params, root, family, results)  # the `<dataset>-<family>-decision` artifact


def families_of(params: dict[str, Any]) -> list[str]:
    families = section(params, "model").get("families") or []
    if isinstance(families, str):
        families = [families]
    if not families:
        raise GenforgeError("model.families is empty; e.g. --set 'model.families=[vae,dcgan]'")
    return [str(f) for f in families]


@flow(name="retrain", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def retrain(params: dict[str, Any], root: str) -> dict[str, Any]:
    validate_settings(params)  # a bad setting fails here, before any stage (scheduled runs included)
    root_path = Path(root)
    results: dict[str, Any] = {}
    for spec in stages.DATA_STAGES:
        _stage(spec.name, params, root_path, None, results)
    for family in families_of(params):
        _family_chain(params, root_path, family, results)
    review_pending(params, root_path, results)  # registry.approval: manual pauses here for a reviewer
    return results


@task(task_run_name="chain-{family}")
def family_task(params: dict[str, Any], root: str, family: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    _family_chain(params, Path(root), family, results)
    return results


@flow(name="retrain-parallel", log_prints=True)
def retrain_parallel(params: dict[str, Any], root: str) -> dict[str, Any]:
    """The same stages with each family's chain as one task, so a Dask runner runs families in parallel."""
    validate_settings(params)
    root_path = Path(root)
    results: dict[str, Any] = {}
    for spec in stages.DATA_STAGES:
        _stage(spec.name, params, root_path, None, results)
    futures = [family_task.submit(params, root, f) for f in families_of(params)]
    for fut in futures:
        results.update(fut.result())
    review_pending(params, root_path, results)
    return results


@flow(name="generate", log_prints=True)
def generate_flow(model_ref: str, n: int, seed: int, out_dir: str, root: str, batch_size: int = 256,
                  overwrite: bool = False) -> dict[str, Any]:
    from pipelines import tracking
    from serving.generator import generate
    from serving.resolve import fetch_onnx, resolve

    resolved = resolve(tracking.client(), model_ref)
    local = fetch_onnx(resolved, catalog.generator_cache(Path(root)))
    result = generate(local, n, seed, Path(out_dir), batch_size=batch_size, model_id=resolved.model_id,
                      overwrite=overwrite)
    run = result.get("run", {})
    summary = {"model": f"{resolved.name}/{resolved.version}", "out_dir": out_dir, "n": n, "seed": seed,
               "provider": result.get("provider"), "seconds": round(run.get("seconds") or 0.0, 2),
               "samples_per_s": round(run.get("samples_per_s") or 0.0, 1),
               "shards_generated": run.get("generated_shards"), "shards_reused": run.get("reused_shards"),
               "preview": str(Path(out_dir) / result["preview"]) if result.get("preview") else None}
    get_run_logger().info("generated %d samples from %s (seed %d) into %s: %.0f samples/s on %s, %d shards written, "
                          "%d reused", n, summary["model"], seed, out_dir, summary["samples_per_s"],
                          summary["provider"], summary["shards_generated"] or 0, summary["shards_reused"] or 0)
    flow_reports.publish_generation(summary)  # a `<model>-generation` table artifact
    return summary


def run_retrain(params: dict[str, Any], root: Path, task_runner: str = "thread") -> dict[str, Any]:
    if task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(cluster_kwargs={"n_workers": len(families_of(params)), "threads_per_worker": 1,
                                                "processes": False, "dashboard_address": None})
        return retrain_parallel.with_options(task_runner=runner)(params, str(root))
    if task_runner != "thread":
        raise GenforgeError(f"--task-runner {task_runner!r}: use thread (default, sequential) or dask")
    return retrain(params, str(root))


def summarize(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2, default=str)


@flow(name="scheduled-retrain", log_prints=True)
def scheduled_retrain(root: str, params_file: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """What a schedule runs: params.yaml is read when the run starts, so edits apply to the next run."""
    from pipelines.config import load_params

    params = load_params(params_file or Path(root) / "params.yaml", overrides or [])
    return retrain(params, root)


def api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_api(url: str | None) -> str:
    """Schedules live in a Prefect API server; the ephemeral one cannot hold them."""
    import httpx

    hint = ("scheduling needs a running Prefect API server (the ephemeral one cannot hold schedules). Start one "
            "with `genforge server start` (loopback, port 4200) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    if not url:
        raise GenforgeError(f"PREFECT_API_URL is not set: {hint}")
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise GenforgeError(f"no Prefect API server answers at {url} ({exc.__class__.__name__}): {hint}") from exc
    return url


def serve_schedule(root: Path, cron: str, name: str, params_file: str | None, overrides: list[str]) -> None:
    from prefect.schedules import Cron

    check_api(api_url())
    try:
        schedule = Cron(cron)
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=cron)
    except ValueError as exc:
        raise GenforgeError(f"--cron {cron!r}: not a valid cron expression ({exc})") from exc
    get_logger().info("serving deployment scheduled-retrain/%s on %r; Ctrl-C stops it", name, cron)
    scheduled_retrain.serve(name=name, schedule=schedule,
                            parameters={"root": str(root), "params_file": params_file, "overrides": overrides})
