"""Stage `train`: fit one family on the validated data, checkpointing each epoch, resumable after a kill.

Exact resume on CPU: every epoch reseeds torch from (seed, epoch) and draws its batch order from a
generator seeded the same way, and a checkpoint holds the model's and optimisers' full state at the end
of an epoch. So epoch k+1 after a restart sees the same weights, order and noise as without one.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from contracts.data import DataSpec
from contracts.io import atomic_write_bytes, atomic_write_json, remove_stale_temps
from contracts.modalities import get_modality
from genmodels import GenerativeModel, get_family
from pipelines import catalog, commit, versioned
from pipelines.background import BackgroundWriter, snapshot
from pipelines.config import params_hash
from pipelines.errors import DataError, GenforgeError
from pipelines.prepare import prepared_dir
from pipelines.settings import TRAIN_OVERRIDES, validate_settings
from pipelines.validate import require_validated

TRAIN_KEYS = TRAIN_OVERRIDES  # per-family overrides of train.* (declared with the settings schema)


log = logging.getLogger("genforge.train")


class TrainingDiverged(GenforgeError):
    pass


def model_dir(root: Path, dataset: str, family: str) -> Path:
    """`models/<dataset>/<family>/` (an alias of `catalog.model_dir`)."""
    return catalog.model_dir(root, dataset, family)


def select_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise GenforgeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(requested)


def family_class(family: str) -> type[GenerativeModel]:
    try:
        return get_family(family)
    except KeyError as exc:
        raise GenforgeError(str(exc.args[0])) from exc


def family_settings(params: dict[str, Any], family: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config values, training settings) for one family.

    Precedence for epochs/batch size: `model.<family>.*`, then `train.*`, then the family's config
    defaults (families tune their own). The values used end up in the model config too, so config.json,
    train.json and the fingerprint all record the same numbers.
    """
    section = dict(((params.get("model") or {}).get(family)) or {})
    declared = {f.name: f.default for f in dataclasses.fields(family_class(family).config_class)}
    settings = {"epochs": declared.get("epochs", 10), "batch_size": declared.get("batch_size", 128),
                "log_every": 20, "seed": 0, "device": "auto", **(params.get("train") or {})}
    for key in TRAIN_KEYS:
        if key in section:
            settings[key] = section[key] if key in declared else section.pop(key)
    for key in ("epochs", "batch_size"):
        if key in declared:
            section[key] = settings[key]
    return section, settings


def build_for_dataset(family: str, config_values: dict[str, Any], meta: dict[str, Any], seed: int) -> GenerativeModel:
    """A fresh model of `family` for the prepared data described by `meta` (its DataSpec)."""
    values = {"data": DataSpec.from_meta(meta), "seed": seed, **config_values}
    try:
        return family_class(family).from_config(values)
    except (TypeError, ValueError) as exc:
        raise GenforgeError(f"model.{family}: {exc}") from exc


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a buffer and `atomic_write_bytes` (a full disk is a StorageError naming `path`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _close_stale_runs(c, experiment: str, keep: str | None, committed: str | None) -> None:
    """Runs of this family's experiment still RUNNING although no training holds them (the stage lock is
    ours): killed by kill -9 or a power cut. Marked KILLED, or FINISHED for the run whose outputs were
    committed (killed between the commit and the run's end)."""
    for run in c.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=1000):
        if run.info.run_id != keep:
            c.set_terminated(run.info.run_id, status="FINISHED" if run.info.run_id == committed else "KILLED")


def _write_epoch_grid(c, run_id: str, samples: torch.Tensor, path: Path, caption: str, epoch: int,
                      logged_steps: set[int], spec: DataSpec | None = None, labels=None) -> None:
    """The epoch's captioned grid: to `path`, to the run's `samples/` folder and as image `train/samples` at
    step `epoch` (unless a killed predecessor of this run logged that epoch already). A modality whose preview
    is not a PNG (tokens: preview.txt) writes its own preview of the samples (same stem, its suffix) instead."""
    from pipelines import lineage, tracking

    modality = get_modality(spec.modality) if spec is not None else None
    suffix = Path(getattr(modality, "PREVIEW_NAME", "preview.png")).suffix
    if suffix != ".png":
        path = path.with_suffix(suffix)
        atomic_write_bytes(path, modality.write_preview(list(modality.from_model(samples.numpy())), tuple(spec.shape),
                                                        columns=8, spec=spec, labels=labels))
        tracking.log_artifact(c, run_id, path, "samples")
        return
    grid = lineage.write_grid(samples.numpy(), path, caption)
    if epoch not in logged_steps:
        lineage.log_grid(c, run_id, grid, lineage.TRAIN_SAMPLES_KEY, epoch)
    tracking.log_artifact(c, run_id, path, "samples")


def _latest_checkpoint(ckpt_dir: Path, fingerprint: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint made with exactly this fingerprint, and why newer ones were passed over."""
    skipped = []
    for path in sorted(ckpt_dir.glob("epoch-*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: an older one may still be good
            skipped.append(f"{path.name}: unreadable ({exc.__class__.__name__})")
            continue
        if state.get("fingerprint") == fingerprint:
            return state, skipped
        skipped.append(f"{path.name}: made with other params or data")
    return None, skipped


def recorded_digests(directory: Path) -> dict[str, str]:
    """The sha256 of model.pt and config.json that train recorded in train.json (`"sha256": {name: hex}`);
    {} when train.json is missing, unreadable or older than the record (nothing to check against)."""
    try:
        info = json.loads((directory / catalog.file_name("train_info")).read_text())
    except (OSError, ValueError):
        return {}
    digests = info.get("sha256") if isinstance(info, dict) else None
    return {str(k): str(v) for k, v in digests.items()} if isinstance(digests, dict) else {}


def check_model_files(directory: Path) -> None:
    """Refuse model.pt/config.json whose bytes differ from what train recorded (a torn or edited copy)."""
    from contracts.io import sha256_mismatches

    bad = sha256_mismatches(directory, recorded_digests(directory))
    if bad:
        raise DataError(directory / bad[0], "sha256 differs from the one train recorded in train.json (corrupt, "
                        "truncated or replaced); retrain it (`genforge stage train`)")


def load_model(directory: Path, device: torch.device | str = "cpu") -> GenerativeModel:
    """A trained model from `model.pt` (state dict) + `config.json`, loaded with weights_only=True (a pickle
    that holds anything but tensors is refused unrun). Corrupt, truncated or foreign files: one DataError."""
    import pickle

    config_path, weights_path = directory / catalog.file_name("model_config"), directory / catalog.file_name("model")
    if not config_path.exists() or not weights_path.exists():
        raise GenforgeError(f"{directory}: no trained model (model.pt + config.json); run `genforge stage train` first")
    check_model_files(directory)
    try:
        spec = json.loads(config_path.read_text())
        if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict) or "family" not in spec:
            raise ValueError("no 'family' and 'config' object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(config_path, f"not a genforge model config ({str(exc).splitlines()[0]}); retrain it "
                        f"(`genforge stage train`)") from exc
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # its text advises weights_only=False: never repeat that
        raise DataError(weights_path, "not a plain state dict (it holds objects other than tensors; refused "
                        "without running them); retrain it (`genforge stage train`)") from exc
    except (OSError, EOFError, RuntimeError, ValueError, AttributeError, ImportError) as exc:
        raise DataError(weights_path, f"unreadable or truncated ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                        f"retrain it (`genforge stage train`)") from exc
    if not isinstance(state, dict):
        raise DataError(weights_path, f"not a state dict (a {type(state).__name__}); retrain it (`genforge stage train`)")
    try:
        # config.json before the config split holds sampling keys (ddpm's sample_steps, eta) in "config":
        # from_config moves them to the sampling defaults; since contracts v2 "training" is a section of its own
        cls = family_class(spec["family"])
        stored = {**spec["config"], **(spec.get("training") or {})}
        legacy = {k: v for k, v in cls.legacy_field_values.items() if k not in stored}  # fields newer than the model
        model = cls.from_config({**legacy, **stored}, spec.get("sampling"))
        model.load_state_dict(state)
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:
        raise GenforgeError(f"{directory}: the saved model does not fit the current {spec.get('family')} code "
                            f"({str(exc).splitlines()[0]}); retrain it") from exc
    return model.to(device).eval()


def plan_training(params: dict[str, Any], root: Path, family: str):
    """(dataset, fresh model, settings, fingerprint): the fingerprint names exactly what training would do,
    so a checkpoint, a cache or a registry version made with the same one needs no new training."""
    ds = require_validated(root, prepared_dir(root, params))
    validate_settings(params, meta=ds.meta)  # the schema, and holdout classes against this data's classes
    config_values, settings = family_settings(params, family)
    model = build_for_dataset(family, config_values, ds.meta, int(settings["seed"]))
    settings_for_hash = {k: v for k, v in settings.items() if k not in ("device", "log_every")}
    fingerprint = params_hash({"family": family, "config": model.config.fingerprint_fields(),
                               "settings": settings_for_hash, "data": ds.sha256})
    return ds, model, settings, fingerprint


def trained_with_fingerprint(params: dict[str, Any], root: Path, family: str) -> bool:
    """Whether ``models/<data>/<family>`` under ``root`` holds a finished training (its train.json) whose
    fingerprint is the one ``plan_training`` gives for ``params`` today: a copy made before a default changed
    is not. Raises what ``plan_training`` raises (data not prepared and validated, bad settings)."""
    ds, _, _, fingerprint = plan_training(params, root, family)
    try:
        info = json.loads(catalog.Layout(root, ds.name, family).train_info.read_text())
    except (OSError, ValueError):
        return False
    return info.get("params_hash") == fingerprint


def train(params: dict[str, Any], root: Path, family: str, progress: bool = True) -> dict[str, Any]:
    from pipelines import lineage, tracking

    ds, model, settings, fingerprint = plan_training(params, root, family)
    device = select_device(str(settings["device"]))
    model = model.to(device)

    images, labels = ds.load("train")
    exclude = [int(c) for c in settings.get("holdout_classes") or []]
    if exclude:
        keep = ~torch.isin(torch.from_numpy(labels), torch.tensor(exclude))
        images, labels = images[keep.numpy()], labels[keep.numpy()]
    x_all = torch.from_numpy(get_modality(model.config.data.modality).to_model(images)).to(device)
    y_all = torch.from_numpy(labels).to(device)
    n = len(x_all)
    problem = model.training_data_problem(y_all)  # before anything is written or removed: a run that cannot finish
    if problem:
        raise GenforgeError(f"model.{family}: {problem}")
    out = model_dir(root, ds.name, family)
    paths = catalog.Layout(root, ds.name, family)
    ckpt_dir = paths.checkpoints
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    commit.recover(out, paths.train_info.name)  # a commit a kill interrupted: finished or dropped
    for folder in (out, ckpt_dir):  # temp files of atomic writes a kill interrupted
        remove_stale_temps(folder)
    resume, passed_over = _latest_checkpoint(ckpt_dir, fingerprint)
    for reason in passed_over:
        log.warning("not resuming from %s", reason)
    if resume is None:  # stale checkpoints from other params or data would only confuse a later resume
        for stale in ckpt_dir.glob("epoch-*.pt"):
            stale.unlink()


    c = tracking.client()
    experiment = tracking.experiment_id(c, f"{ds.name}-{family}")
    lineage.describe_experiment(c, experiment, ds.name, family, str(ds.meta.get("source", "")))
    committed = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        committed = json.loads(paths.train_info.read_text()).get("run_id")
    _close_stale_runs(c, experiment, str(resume["run_id"]) if resume is not None else None, committed)
    logged: dict[str, int] = {}
    if resume is not None:
        model.load_training_state(resume["training_state"])
        start_epoch, run_id, history = int(resume["epoch"]), str(resume["run_id"]), list(resume["history"])
        logged = tracking.last_steps(c, run_id)  # steps logged after the checkpoint, before the kill
        label = c.get_run(run_id).data.tags.get(lineage.RUN_LABEL_TAG, family)
    else:
        label = lineage.run_label(family, lineage.next_version(c, f"{ds.name}-{family}"))
        run = c.create_run(experiment, run_name=lineage.run_name(label, model.config.to_dict(), int(settings["epochs"])),
                           tags={"genforge.stage": "train", "genforge.family": family,
                                 "genforge.data_sha256": ds.sha256, lineage.RUN_LABEL_TAG: label})
        run_id, start_epoch, history = run.info.run_id, 0, []
        lineage.log_dataset(c, run_id, root, ds)
        tracking.log_params(c, run_id, {"family": family, "model": model.config.to_dict(), "train": settings,
                                        "data": {"name": ds.name, "sha256": ds.sha256, "train_images": n}})
    c.set_terminated(run_id, status="RUNNING")
    try:
        result = _fit_and_commit(c, run_id, model, ds, family, settings, fingerprint, paths, device, x_all, y_all,
                                 start_epoch, history, logged, progress, label)
    except BaseException as exc:  # never leave the run RUNNING: Ctrl-C is KILLED, anything else FAILED
        with contextlib.suppress(Exception):
            c.set_terminated(run_id, status="KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    c.set_terminated(run_id, status="FINISHED")
    return result | {"model_dir": str(out)}


def _fit_and_commit(c, run_id: str, model: GenerativeModel, ds, family: str, settings: dict[str, Any],
                    fingerprint: str, paths: catalog.Layout, device: torch.device, x_all: torch.Tensor,
                    y_all: torch.Tensor, start_epoch: int, history: list[dict[str, Any]], logged: dict[str, int],
                    progress: bool, label: str) -> dict[str, Any]:
    from pipelines import lineage, tracking
    from pipelines.progress import epoch_line

    seed, epochs, batch_size = int(settings["seed"]), int(settings["epochs"]), int(settings["batch_size"])
    ckpt_dir, n = paths.checkpoints, len(x_all)
    steps_per_epoch = math.ceil(n / batch_size)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[losses]}"), disable=not progress, transient=False)
    log_every = max(1, int(settings["log_every"]))
    train_seconds, trained_images = 0.0, 0
    image_steps = lineage.logged_image_steps(c, run_id, lineage.TRAIN_SAMPLES_KEY) if start_epoch else set()
    loop_started = time.perf_counter()
    with bar, BackgroundWriter() as writer:
        def grid(done: int) -> None:  # the samples after `done` epochs: a file and the run's image at step `done`
            model.eval()
            samples = model.sample(64, generator=torch.Generator(device=device).manual_seed(seed)).cpu()
            k = model.config.data.num_classes  # the classes sample() cycles through when given no labels
            writer.submit(_write_epoch_grid, c, run_id, samples, paths.train_samples / f"epoch-{done:04d}.png",
                          lineage.grid_caption(label, run_id, seed, done, epochs), done, image_steps,
                          model.config.data, [i % k if k and "conditional" in model.capabilities else -1
                                              for i in range(len(samples))])

        if start_epoch == 0:  # the untrained model at step 0, where MLflow's image slider opens
            grid(0)
        task = bar.add_task(f"{family} epoch {start_epoch + 1}/{epochs}", total=steps_per_epoch * (epochs - start_epoch),
                            losses="")
        for epoch in range(start_epoch, epochs):
            bar.update(task, description=f"{family} epoch {epoch + 1}/{epochs}")
            torch.manual_seed(_epoch_seed(seed, epoch))
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch))).to(device)
            model.train()
            sums: dict[str, float] = {}
            started = time.perf_counter()
            for step in range(steps_per_epoch):
                idx = order[step * batch_size:(step + 1) * batch_size]
                losses = model.fit_step(x_all[idx], y_all[idx])
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if bad:
                    writer.wait()  # the checkpoints already queued are the good ones
                    last = sorted(ckpt_dir.glob("epoch-*.pt"))
                    raise TrainingDiverged(
                        f"{family}: non-finite loss {bad} at epoch {epoch + 1}, step {step + 1}; training stopped. "
                        f"Last good checkpoint: {last[-1] if last else 'none (diverged in the first epoch)'}; "
                        f"lower the learning rate (model.{family}.*) and rerun")
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                global_step = epoch * steps_per_epoch + step + 1
                if global_step % log_every == 0:
                    writer.submit(tracking.log_metrics, c, run_id, {f"train/{k}": v for k, v in losses.items()},
                                  global_step, logged)
                bar.update(task, advance=1, losses="  ".join(f"{k} {v:.4g}" for k, v in losses.items()))
            model.end_epoch(x_all, y_all, epoch)
            train_seconds += time.perf_counter() - started
            trained_images += n
            epoch_means = {k: v / steps_per_epoch for k, v in sums.items()}
            history.append({"epoch": epoch + 1, **epoch_means})
            writer.submit(tracking.log_metrics, c, run_id, {f"epoch/{k}": v for k, v in epoch_means.items()}, epoch + 1,
                          logged)

            grid(epoch + 1)
            checkpoint = {"training_state": snapshot(model.training_state()), "epoch": epoch + 1, "run_id": run_id,
                          "history": list(history), "fingerprint": fingerprint}
            writer.submit(_save_atomic, checkpoint, ckpt_dir / f"epoch-{epoch + 1:04d}.pt")
            log.info("%s", epoch_line(family, epoch + 1, epochs, epoch_means, time.perf_counter() - loop_started,
                                      epoch + 1 - start_epoch))

    model.eval()
    # model.pt, config.json and train.json as one unit (pipelines.commit): a kill leaves the old set or the new
    out = paths.model_dir
    staging = commit.begin(out, paths.train_info.name)
    _save_atomic(model.state_dict(), staging / paths.model.name)
    # training settings once (the values really used), sampling defaults beside the architecture, outside
    # the fingerprint (plan_training)
    atomic_write_json(staging / paths.model_config.name, {"family": family,
                                            "config": {**model.config.architecture(), **model.config.evaluation_settings()},
                                            "training": model.config.training_settings(),
                                            "sampling": model.sampling})
    summary = {
        "family": family, "dataset": ds.name, "data_sha256": ds.sha256, "run_id": run_id, "run_label": label,
        "params_hash": fingerprint, "epochs": epochs, "resumed_from_epoch": start_epoch, "device": str(device),
        "train_images_per_s": round(trained_images / train_seconds, 1) if train_seconds else None,
        "final": history[-1] if history else {}, "history": history,
        "train_seconds": round(train_seconds, 2),  # optimisation time of this process (from the resume point)
    }
    commit.finish(out, paths.train_info.name, summary)
    versioned.write_loss_curves(paths.loss_curves, history)  # the DVC plot of the losses, versioned by git
    tracking.log_artifact(c, run_id, paths.model_config)
    return {k: summary[k] for k in ("family", "dataset", "run_id", "epochs", "resumed_from_epoch",
                                    "train_images_per_s", "final", "device")}
