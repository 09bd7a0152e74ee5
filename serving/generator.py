"""Batch generator: run an exported model folder with ONNX Runtime and write verified shards.

Imports onnxruntime, numpy and PIL only (through the data's modality module, ``contracts.modalities``,
which encodes shards, previews and per-sample files): never torch (tests/test_serving.py checks it in a fresh
interpreter, before and after a full ``generate`` call). Resolving registry URIs into a local
model folder is the caller's job (pipelines/); this module takes the folder.

``generate(model_dir, n, seed, out_dir)`` writes::

    out_dir/manifest.json              the job and its verified shards (format below)
    out_dir/shards/shard-NNNNN.<ext>   the samples as the modality encodes shards (``shard_bytes``), batch_size
                                       samples each, the last one holding the rest; images: .npz of "images"
                                       uint8 N x C x H x W (round(x * 255)) and "labels" int64 N (-1 when the
                                       model is unconditional); tokens: .jsonl, one {"index", "label",
                                       "class", "text"} record a line
    out_dir/preview.png | preview.txt  the modality's preview of the first 64 samples (images: a grid, 8 per
                                       row; tokens: one "<class>\t<text>" a line)
    out_dir/png/NNNNNNN.png            with png=True: one file per sample, the first PNG_LIMIT only, in the
      | txt/NNNNNNN.txt                modality's folder and format (images: PNG; tokens: UTF-8 text)

``manifest.json``::

    {"format": "genforge.generate/1",
     "model": {"name": ..., "version": ...} | {"path": ...},   # model_id
     "model_sha256": "...",       # sha256 over sampler.json and every graph file: the exact artifact
     "sampler": "direct",         # sampler kind
     "sampling": {"steps": 20},   # sampling options that differ from the model's defaults ({} = none)
     "seed": 0, "n": 1000, "batch_size": 256, "label": null,
     "modality": "image", "sample_shape": [1, 28, 28], "image_shape": [1, 28, 28] (images only),
     "num_classes": 10, "class_names": [...], "dtype": "uint8", "vocab": [...] (tokens only), "num_shards": 4,
     "provider": "CPUExecutionProvider",      # the provider of the latest run
     "providers": ["CPUExecutionProvider"],   # every provider that produced a listed shard
     "shards": [{"index": 0, "file": "shards/shard-00000.npz", "count": 256, "sha256": "..."}, ...],
     "preview": "preview.png" | null, "png": {"dir": "png", "count": 64} | null,   # tokens: preview.txt, "txt"
     "complete": true}

The job is (format, model, model_sha256, sampler, sampling, seed, n, batch_size, label); provider
and threads are not part of it. A manifest written before ``sampling`` existed reads as ``{}``.

Sampling options (``sampling={"steps": 20, "eta": 0.0}``, ``genforge generate --steps/--eta/--temperature``)
override the defaults in sampler.json through the typed spec (``SamplerSpec.with_sampling``); an
option the model's sampler does not take is a GenerationError naming the ones it does take.

Determinism. Shard k's noise comes from ``numpy.random.default_rng([seed, k])``, so shard k is
the same whatever ran before it; shards are written with a fixed-timestamp ZIP_STORED npz writer,
so the same model, seed, n and batch_size give byte-identical shards, whatever the thread count
and ``parallel`` setting (the noise is drawn before a batch is split: serving.ort_parallel) and however often
the run was interrupted (on one execution provider: CUDA and CPU round
differently). Conditional models: ``label=K`` gives K for every sample; ``label=None`` gives
sample i the class ``i % num_classes`` (balanced, and independent of the batch size).

Crash safety. Every file is written to a temp file in its folder, fsynced and ``os.replace``d;
the manifest is rewritten the same way after every shard (its cost grows with the shard count:
raise batch_size for runs of millions of samples). A rerun of the same job keeps every shard whose
file matches the manifest's sha256 and regenerates the rest (missing, torn, or not yet listed),
so nothing is duplicated or lost. A manifest of another job is an error and nothing is touched.
Two runs into one ``out_dir`` at once are refused (an flock on the folder).

Memory is bounded by one batch: samples are never accumulated; the preview and PNGs are read
back from the shard files at the end.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import onnxruntime as ort

from contracts.data import DataSpec
from contracts.errors import ConfigError, ServingError
from contracts.io import atomic_write_bytes, sha256_file
from contracts.modalities import get_modality
from contracts.samplers import SamplerSpec, SamplerSpecError, as_spec
from serving import outdir
from serving.ort_parallel import PARALLEL_MODES, load_sessions
from serving.samplers import check_sessions, check_spec, run_sampler

try:  # POSIX; without it concurrent runs are simply not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger("genforge.serving.generator")

MANIFEST_FORMAT = "genforge.generate/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
PREVIEW = "preview.png"      # the image modality's PREVIEW_NAME (each modality names its own)
PNG_DIR = "png"              # the image modality's FILES_DIR
PREVIEW_COUNT = 64
PREVIEW_COLUMNS = 8
PNG_LIMIT = 1000
_JOB_KEYS = ("format", "model", "model_sha256", "sampler", "sampling", "seed", "n", "batch_size", "label")
# the temp files _atomic_write leaves when killed: ".<name>.tmp-<pid>" for the names this module writes
_TMP_RE = re.compile(r"^\.(manifest\.json|preview\.[a-z]+|shard-\d+\.[a-z]+|\d+\.[A-Za-z0-9]+)\.tmp-\d+$")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class GenerationError(ServingError):
    """A generation job cannot run as asked (bad input, bad model folder, another job's output)."""


# --- public API ------------------------------------------------------------------------------
def generate(model_dir: Path, n: int, seed: int, out_dir: Path, *, batch_size: int = 256,
             label: int | str | None = None, threads: int | None = None, png: bool = False,
             model_id: dict | None = None, provider: str = "auto",
             progress: Callable[[int, int], None] | None = None,
             sampling: Mapping[str, Any] | None = None, overwrite: bool = False, spin: bool = False,
             parallel: str | None = None) -> dict[str, Any]:
    """Generate ``n`` samples of the model in ``model_dir`` into ``out_dir`` (see the module doc).

    Returns the final manifest plus ``"run"``: {"generated_shards", "reused_shards", "seconds",
    "samples_per_s", "threads", "out_dir"}. ``progress(done, n)`` is called after every shard.
    ``sampling``: options overriding the sampler's defaults (None values ignored), e.g. {"steps": 20}.
    ``overwrite``: replace another job's outputs, and write into a folder holding files of the user's
    (never replacing one of them: serving.outdir). ``spin``: ONNX Runtime's intra-op threads busy-wait between
    ops (``_load_session``); the samples are the same either way. ``parallel``: how ``threads`` share the work:
    "batch" (the default without ``spin``) runs slices of each batch at once on one-thread sessions
    (serving.ort_parallel), "ops" gives them to ONNX Runtime's intra-op threads (the default with ``spin``);
    the samples are the same either way.
    Raises ``GenerationError`` for bad input, before anything is written.
    """
    started = time.perf_counter()
    n = _positive_int(n, "n")
    batch_size = _positive_int(batch_size, "batch_size")
    if not _is_int(seed) or seed < 0:
        raise GenerationError(f"seed must be an integer >= 0, got {seed!r}")
    if threads is not None and (not _is_int(threads) or threads < 0):
        raise GenerationError(f"threads must be an integer >= 0 (0: every CPU), got {threads!r}")
    parallel = _parallel_mode(parallel, spin)

    model_dir = Path(model_dir)
    out_root = _output_root(Path(out_dir))
    raw, graph_files, fingerprint = load_model_dir(model_dir)
    data = sample_spec(raw)
    image_shape, num_classes, modality = data.shape, data.num_classes, get_modality(data.modality)
    spec, overrides = _with_sampling(as_spec(raw), sampling)
    label = _check_label(label, spec, data)
    if model_id is None:
        model_id = {"path": str(model_dir.resolve())}
    try:
        model_id = json.loads(json.dumps(model_id))
    except (TypeError, ValueError) as e:
        raise GenerationError(f"model_id must be JSON-serialisable: {e}") from None
    job = {"format": MANIFEST_FORMAT, "model": model_id, "model_sha256": fingerprint, "sampler": spec.kind,
           "sampling": overrides, "seed": int(seed), "n": n, "batch_size": batch_size, "label": label}
    num_shards = math.ceil(n / batch_size)
    want = outdir.targets(num_shards, lambda k: shard_name(k, modality.SHARD_SUFFIX), min(n, PNG_LIMIT) if png else 0,
                          modality.FILE_SUFFIX, preview=modality.PREVIEW_NAME, files_dir=modality.FILES_DIR)
    _check_existing(out_root, job, overwrite, want)  # before loading anything heavy, and before writing anything

    providers, _ = select_provider(provider)
    sessions = load_sessions(graph_files, lambda path, t: _load_session(path, providers, t, spin), threads,
                             parallel, spec.kind, providers)
    used = sorted({s.get_providers()[0] for s in sessions.values()})
    used_provider = CUDA if CUDA in used else used[0]
    if provider in ("auto", "cuda", CUDA) and CUDA in providers and used_provider != CUDA:
        log.warning("CUDA provider selected but ONNX Runtime fell back to %s", used_provider)
    _probe(spec, sessions, image_shape, num_classes)
    log.info("generating %d samples of %s with %s (%s threads, %s-parallel)", n, json.dumps(model_id), used_provider,
             threads or "default", parallel)

    counts = [min(batch_size, n - k * batch_size) for k in range(num_shards)]
    out_root.mkdir(parents=True, exist_ok=True)
    with _locked(out_root):
        existing = _check_existing(out_root, job, overwrite, want)  # again, now that no other run can write
        if existing is None and (out_root / MANIFEST).exists():  # --overwrite: another job's outputs go first
            outdir.remove_own_outputs(out_root)
        shard_dir = _inside(out_root, SHARD_DIR)
        shard_dir.mkdir(exist_ok=True)
        for folder in (out_root, shard_dir, out_root / modality.FILES_DIR):
            _remove_temp_files(folder)
        kept = _verified_shards(out_root, existing, counts, modality.SHARD_SUFFIX) if existing else {}
        prev_providers = set(existing.get("providers", [])) if existing and kept else set()
        shape_key = {"image_shape": list(image_shape)} if data.modality == "image" else {}
        manifest = {**job, "modality": data.modality, "sample_shape": list(image_shape), **shape_key,
                    "num_classes": num_classes, "class_names": list(data.class_names), "dtype": data.dtype,
                    **({"vocab": list(data.vocab)} if data.vocab is not None else {}),
                    "label_name": data.class_names[label] if label is not None and data.class_names else None,
                    "num_shards": num_shards, "provider": used_provider,
                    "providers": sorted(prev_providers | ({used_provider} if len(kept) < num_shards else set())),
                    "shards": [kept[k] for k in sorted(kept)], "preview": None, "png": None, "complete": False}
        manifest_path = _inside(out_root, MANIFEST)
        _atomic_write(manifest_path, _json_bytes(manifest))

        done = sum(counts[k] for k in kept)
        if progress is not None:
            progress(done, n)
        todo = [k for k in range(num_shards) if k not in kept]
        for k in todo:
            entry = _make_shard(out_root, k, counts[k], spec, sessions, seed=seed, batch_size=batch_size,
                                label=label, num_classes=num_classes, image_shape=image_shape, modality=modality,
                                data=data)
            kept[k] = entry
            manifest["shards"] = [kept[i] for i in sorted(kept)]
            _atomic_write(manifest_path, _json_bytes(manifest))
            done += counts[k]
            if progress is not None:
                progress(done, n)

        manifest["preview"] = _write_preview(out_root, manifest["shards"], image_shape, modality, data)
        manifest["png"] = _write_pngs(out_root, manifest["shards"], modality, data) if png else None
        manifest["complete"] = True
        _atomic_write(manifest_path, _json_bytes(manifest))

    seconds = time.perf_counter() - started
    generated = sum(counts[k] for k in todo)
    log.info("wrote %d shards (%d reused) to %s in %.1f s", len(todo), num_shards - len(todo), out_root, seconds)
    return {**manifest, "run": {"generated_shards": len(todo), "reused_shards": num_shards - len(todo),
                                "seconds": seconds, "samples_per_s": generated / seconds if seconds > 0 else None,
                                "threads": threads, "parallel": parallel, "out_dir": str(out_root)}}


def select_provider(requested: str = "auto") -> tuple[list[str], str]:
    """(providers list for InferenceSession, chosen provider name).

    "auto": CUDA only when onnxruntime has the CUDA provider AND a CUDA device answers (driver
    present, ``cuInit`` and a device count > 0 through libcuda), else CPU, so a CPU machine never
    tries the CUDA provider (which logs loud errors when it fails). "cpu" forces CPU; "cuda"
    requires CUDA and raises GenerationError when it cannot work.
    """
    req = (requested or "auto").strip()
    key = {"cpuexecutionprovider": "cpu", "cudaexecutionprovider": "cuda"}.get(req.lower(), req.lower())
    if key not in ("auto", "cpu", "cuda"):
        raise GenerationError(f"unknown provider {requested!r} (auto, cpu, cuda)")
    if key == "cpu":
        return [CPU], CPU
    has_ep = CUDA in ort.get_available_providers()
    works = has_ep and cuda_device_works()
    if works:
        return [CUDA, CPU], CUDA
    if key == "cuda":
        why = "this onnxruntime build has no CUDAExecutionProvider" if not has_ep else "no working CUDA device"
        raise GenerationError(f"provider 'cuda' requested but {why}")
    return [CPU], CPU


_CUDA_OK: bool | None = None


def cuda_device_works() -> bool:
    """True when a CUDA driver and at least one visible device answer (checked once per process)."""
    global _CUDA_OK
    if _CUDA_OK is None:
        _CUDA_OK = _probe_cuda()
    return _CUDA_OK


def load_model_dir(model_dir: Path) -> tuple[dict[str, Any], dict[str, Path], str]:
    """Read and validate ``sampler.json``: (spec, {graph name: .onnx path}, model sha256)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise GenerationError(f"model folder {model_dir} does not exist or is not a folder")
    root = model_dir.resolve()
    sampler_path = model_dir / "sampler.json"
    if not sampler_path.is_file():
        why = ""
        parity = model_dir / "parity.json"
        if parity.is_file():
            try:
                if json.loads(parity.read_text()).get("passed") is False:
                    why = " (its ONNX export failed the parity check: see parity.json)"
            except (OSError, ValueError):
                pass
        raise GenerationError(f"{model_dir} has no sampler.json: this model version has no ONNX graphs{why}")
    raw = sampler_path.read_bytes()
    try:
        spec = json.loads(raw)
    except ValueError as e:
        raise GenerationError(f"{sampler_path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise GenerationError(f"{sampler_path} is not a JSON object")
    graphs = spec.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise GenerationError(f"{sampler_path} lists no graphs: this model version has no ONNX graphs")
    shape = spec.get("sample_shape", spec.get("image_shape"))
    if spec.get("modality", "image") == "image" and not (
            isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
        raise GenerationError(f"{sampler_path}: image_shape must be [C, H, W] positive ints, got {shape!r}")
    if not (_is_int(spec.get("num_classes", 0)) and spec.get("num_classes", 0) >= 0):
        raise GenerationError(f"{sampler_path}: num_classes must be an int >= 0")
    try:
        sample_spec(spec)
    except ConfigError as e:
        raise GenerationError(f"{sampler_path}: {e}") from None
    if spec.get("conditional") and spec.get("num_classes", 0) < 1:
        raise GenerationError(f"{sampler_path}: a conditional model needs num_classes >= 1")
    try:
        check_spec(spec, set(graphs))
    except SamplerSpecError as e:
        raise GenerationError(f"{sampler_path}: {e}") from None

    files: dict[str, Path] = {}
    h = hashlib.sha256(b"sampler.json\0" + raw)
    for name in sorted(graphs):
        entry = graphs[name]
        file = entry.get("file") if isinstance(entry, dict) else entry
        if not isinstance(file, str) or not file:
            raise GenerationError(f"{sampler_path}: graph {name!r} names no file")
        path = (model_dir / file)
        if not path.resolve().is_relative_to(root) or Path(file).is_absolute():
            raise GenerationError(f"{sampler_path}: graph file {file!r} lies outside {model_dir}")
        if not path.is_file():
            raise GenerationError(f"graph {name!r}: {path} is missing")
        digest = sha256_file(path)
        want = entry.get("sha256") if isinstance(entry, dict) else None
        if want and want != digest:
            raise GenerationError(f"graph {name!r}: {path} is corrupt (sha256 {digest[:12]}..., "
                                  f"sampler.json says {str(want)[:12]}...)")
        h.update(f"\0{name}\0{digest}".encode())
        files[name] = path
    return spec, files, h.hexdigest()


def sample_spec(raw: Mapping[str, Any]) -> DataSpec:
    """The data a model's sampler.json says it produces: modality (default image), sample shape
    ("sample_shape", or "image_shape" as every version before contracts v2 wrote), classes."""
    return DataSpec(modality=raw.get("modality", "image"), shape=tuple(raw.get("sample_shape", raw.get("image_shape"))),
                    dtype=raw.get("dtype", "uint8"), num_classes=int(raw.get("num_classes", 0)),
                    class_names=tuple(raw.get("class_names") or ()), vocab=raw.get("vocab"))


def read_shard(path: Path, data: DataSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(samples as stored, e.g. images uint8 N x C x H x W; labels int64 N) of one shard file, decoded by the
    modality of ``data`` (a manifest's ``sample_spec``; None: an image npz shard)."""
    modality = get_modality(data.modality if data is not None else "image")
    return modality.read_shard(Path(path).read_bytes(), data)


def iter_samples(out_dir: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (samples as stored, labels) per shard of a generated folder, in order, checking each sha256."""
    out_root = Path(out_dir).resolve()
    manifest = json.loads(_inside(out_root, MANIFEST).read_text())
    data = sample_spec(manifest)
    for entry in manifest["shards"]:
        path = _inside(out_root, entry["file"])
        if sha256_file(path) != entry["sha256"]:
            raise GenerationError(f"{path} does not match its sha256 in the manifest")
        yield read_shard(path, data)


# --- the job ---------------------------------------------------------------------------------
def shard_samples(spec, sessions, k: int, count: int, *, seed: int, batch_size: int, label: int | None,
                  num_classes: int, image_shape) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``k`` of a job as the model computes it, before the modality encodes it: (float32 count x
    ``image_shape`` in [0, 1], int64 labels count, -1 when unconditional). The noise comes from
    ``default_rng([seed, k])`` and conditional labels are ``label`` or ``i % num_classes`` for the job's sample
    index i, so shard k is the same whatever ran before it (serving.pyfunc computes the same shards).
    Raises GenerationError when the model returns another shape or non-finite values."""
    rng = np.random.default_rng([int(seed), k])
    if spec.conditional:
        if label is not None:
            labels = np.full(count, label, dtype=np.int64)
        else:
            labels = (np.arange(k * batch_size, k * batch_size + count, dtype=np.int64) % num_classes)
        images = run_sampler(spec, sessions, count, rng, labels)
    else:
        labels = np.full(count, -1, dtype=np.int64)
        images = run_sampler(spec, sessions, count, rng, None)
    if images.shape != (count, *image_shape):
        raise GenerationError(f"shard {k}: the model produced shape {images.shape}, "
                              f"sampler.json says {(count, *image_shape)}")
    if not np.isfinite(images).all():
        raise GenerationError(f"shard {k}: the model produced non-finite values (NaN/inf)")
    return images, labels


def _make_shard(out_root: Path, k: int, count: int, spec, sessions, *, seed, batch_size, label,
                num_classes, image_shape, modality, data: DataSpec) -> dict[str, Any]:
    """Compute shard ``k`` and write it as the modality encodes shards (images: npz; tokens: JSONL)."""
    samples, labels = shard_samples(spec, sessions, k, count, seed=seed, batch_size=batch_size, label=label,
                                    num_classes=num_classes, image_shape=image_shape)
    body = modality.shard_bytes(modality.from_model(samples), labels, data, k * batch_size)
    rel = f"{SHARD_DIR}/{shard_name(k, modality.SHARD_SUFFIX)}"
    _atomic_write(_inside(out_root, rel), body)
    return {"index": k, "file": rel, "count": count, "sha256": hashlib.sha256(body).hexdigest()}


def shard_name(k: int, suffix: str = ".npz") -> str:
    """``shard-NNNNN<suffix>``, the suffix the modality's (``SHARD_SUFFIX``)."""
    return f"shard-{k:05d}{suffix}"


def _verified_shards(out_root: Path, manifest: Mapping[str, Any], counts: list[int],
                     suffix: str = ".npz") -> dict[int, dict]:
    """Shards the manifest lists whose file is there and matches its sha256."""
    kept: dict[int, dict] = {}
    for entry in manifest.get("shards", []):
        try:
            k, file, count, digest = entry["index"], entry["file"], entry["count"], entry["sha256"]
        except (TypeError, KeyError):
            log.warning("ignoring a malformed manifest entry: %r", entry)
            continue
        if not (_is_int(k) and 0 <= k < len(counts)) or file != f"{SHARD_DIR}/{shard_name(k, suffix)}" \
                or count != counts[k] or not isinstance(digest, str) or k in kept:
            log.warning("ignoring a manifest entry that does not fit the job: %r", entry)
            continue
        path = _inside(out_root, file)
        if path.is_file() and sha256_file(path) == digest:
            kept[k] = {"index": k, "file": file, "count": count, "sha256": digest}
        else:
            log.info("shard %d is missing or torn: regenerating it", k)
    return kept


def _check_existing(out_root: Path, job: dict, overwrite: bool = False, want: list[str] = ()) -> dict | None:
    """The manifest of the same job in ``out_root``, or None (also for another job's, with ``overwrite``);
    GenerationError for anything else: a folder of the user's (serving.outdir), another job's outputs."""
    if out_root.exists() and not out_root.is_dir():
        raise GenerationError(f"output path {out_root} is a file, not a folder")
    path = _inside(out_root, MANIFEST)
    if not path.exists():
        shards = out_root / SHARD_DIR
        if shards.exists() and (not shards.is_dir() or any(p for p in shards.iterdir() if not _TMP_RE.match(p.name))):
            raise GenerationError(f"{out_root} holds {SHARD_DIR}/ but no {MANIFEST}: refusing to write into "
                                  "a folder this generator did not create")
        outdir.check_foreign_folder(out_root, want, overwrite)
        return None
    if not path.is_file():
        raise GenerationError(f"{path} is not a file")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GenerationError(f"{path} is unreadable ({e}): refusing to overwrite it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise GenerationError(f"{path} is not a genforge generation manifest: refusing to overwrite it")
    differ = [k for k in _JOB_KEYS if manifest.get(k, {} if k == "sampling" else None) != job[k]]
    if differ and overwrite:
        return None
    if differ:
        details = ", ".join(f"{k}: {manifest.get(k)!r} there, {job[k]!r} now" for k in differ)
        raise GenerationError(f"{out_root} holds another generation job ({details}); "
                              "choose another output folder, or pass --overwrite to replace its outputs")
    return manifest


def _probe(spec, sessions, image_shape, num_classes) -> None:
    """Check the graphs take what the sampler feeds and return image_shape, before writing anything."""
    try:
        check_sessions(spec, sessions)
        labels = np.zeros(1, dtype=np.int64) if spec.conditional else None
        out = run_sampler(spec, sessions, 1, np.random.default_rng(0), labels)
    except SamplerSpecError as e:
        raise GenerationError(f"the model does not fit its sampler.json: {e}") from None
    except Exception as e:
        raise GenerationError(f"a test run of the model failed: {type(e).__name__}: {e}") from None
    if out.shape != (1, *image_shape):
        raise GenerationError(f"the model produces images of shape {out.shape[1:]}, sampler.json says {image_shape}")


def _with_sampling(spec: SamplerSpec, sampling: Mapping[str, Any] | None) -> tuple[SamplerSpec, dict[str, Any]]:
    """(the spec with the sampling options applied, the options that differ from its defaults)."""
    if sampling is not None and not isinstance(sampling, Mapping):
        raise GenerationError(f"sampling must be a mapping of option -> value, got {sampling!r}")
    try:
        run = spec.with_sampling(**dict(sampling or {}))
    except SamplerSpecError as e:
        raise GenerationError(f"sampling options: {e}") from None
    defaults = spec.sampling_defaults()
    return run, {k: v for k, v in run.sampling_defaults().items() if v != defaults.get(k)}


def _check_label(label, spec, data: DataSpec) -> int | None:
    """``label`` as an index or a class name (sampler.json's ``class_names``) -> the index."""
    if label is None:
        return None
    if not (_is_int(label) or isinstance(label, str)):
        raise GenerationError(f"label must be an integer or a class name, got {label!r}")
    if not spec.conditional:
        raise GenerationError(f"label={label} given but the model is unconditional (sampler.json: conditional=false)")
    if isinstance(label, str):
        label = _label_index(label.strip(), data)
    if not 0 <= label < data.num_classes:
        raise GenerationError(f"label {label} is outside [0, {data.num_classes})")
    return int(label)


def _label_index(text: str, data: DataSpec) -> int:
    """A --label string: an index, a class name, or ``index:K`` / ``name:NAME`` where a name that is an
    integer would be read both ways (class folders named 1..10: is "2" index 2 or class "2"?)."""
    names = data.class_names
    kind, _, rest = text.partition(":")
    if kind in ("index", "name") and rest:
        text = rest
    numeric = text.lstrip("-").isdigit()
    if kind == "index" and rest and not numeric:
        raise GenerationError(f"label index:{text}: not an integer")
    if numeric and kind != "name":
        if kind != "index" and text in names and names.index(text) != int(text):
            raise GenerationError(f"label {text!r} is ambiguous: class {text!r} is index {names.index(text)}; "
                                  f"say --label name:{text} for that class or --label index:{text}")
        return int(text)
    if text in names:
        return names.index(text)
    try:
        return data.class_index(text)
    except ConfigError:
        raise GenerationError(f"label: no class named {text!r}; classes: "
                              f"{', '.join(names) or 'unnamed (give an index)'}") from None


# --- sessions --------------------------------------------------------------------------------
def _parallel_mode(parallel: str | None, spin: bool) -> str:
    """``parallel`` checked ("batch" | "ops"; None: "ops" with ``spin``, else "batch"). Raises GenerationError."""
    if parallel is None:
        return "ops" if spin else "batch"
    if parallel not in PARALLEL_MODES:
        raise GenerationError(f"parallel (--parallel) must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
    if spin and parallel == "batch":
        raise GenerationError("spin makes ONNX Runtime's intra-op threads busy-wait: it needs parallel='ops' "
                              "(--parallel ops), not 'batch', whose sessions have no intra-op threads")
    return parallel


def _load_session(path: Path, providers: list[str], threads: int | None, spin: bool = False):
    """An ORT session as the generator runs it: all graph optimizations, sequential execution, ``threads``
    intra-op threads (None: ORT's default). ``spin``: the intra-op threads busy-wait between ops. Off by
    default: on a shared CPU spinning burns the cores other work needs (0.29-0.86x at 2 threads on a loaded
    2-core machine); on an otherwise idle one it is faster at 2 threads (GAN generators 1.46-1.57x, ddpm
    1.01-1.14x, README "ONNX Runtime against PyTorch, graph by graph"). Raises GenerationError."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: a fallback from CUDA is reported by us, once
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:
        raise GenerationError(f"cannot load ONNX graph {path}: {_first_line(e)}") from None


def _probe_cuda() -> bool:
    if not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")):
        return False
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        if lib.cuInit(0) != 0:
            return False
        count = ctypes.c_int(0)
        return lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except (OSError, AttributeError):
        return False


# --- files -----------------------------------------------------------------------------------
def _output_root(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise GenerationError(f"output path {out_dir} is a file, not a folder")
    return out_dir.resolve()


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing anything that resolves outside root (.., absolute paths, symlinks out)."""
    path = root / rel
    if Path(rel).is_absolute() or not path.resolve().is_relative_to(root):
        raise GenerationError(f"output path {rel!r} escapes the output folder {root}")
    return path


def _remove_temp_files(folder: Path) -> None:
    """Temp files a killed run left behind (ours only: '.<name>.tmp-<pid>')."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for p in folder.iterdir():
        if _TMP_RE.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


@contextmanager
def _locked(folder: Path):
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GenerationError(f"another generation run is writing into {folder}") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()


# --- images ----------------------------------------------------------------------------------
def _first_samples(out_root: Path, shards: list[dict], limit: int, data: DataSpec
                   ) -> Iterator[tuple[np.ndarray, int]]:
    """Up to ``limit`` (stored sample, label) pairs from the shard files, one shard in memory at a time."""
    left = limit
    for entry in shards:
        if left <= 0:
            return
        samples, labels = read_shard(_inside(out_root, entry["file"]), data)
        yield from zip(samples[:left], labels[:left].tolist())
        left -= min(left, len(samples))


def _write_preview(out_root: Path, shards: list[dict], shape, modality, data: DataSpec) -> str:
    """The modality's preview of the first PREVIEW_COUNT samples (images: preview.png, a grid; tokens:
    preview.txt, one text a line)."""
    pairs = list(_first_samples(out_root, shards, PREVIEW_COUNT, data))
    body = modality.write_preview([s for s, _ in pairs], tuple(shape), columns=PREVIEW_COLUMNS, spec=data,
                                  labels=[lb for _, lb in pairs])
    _atomic_write(_inside(out_root, modality.PREVIEW_NAME), body)
    return modality.PREVIEW_NAME


def _write_pngs(out_root: Path, shards: list[dict], modality, data: DataSpec) -> dict[str, Any]:
    """One file per sample for the first PNG_LIMIT samples, as the modality encodes them (images:
    png/NNNNNNN.png; tokens: txt/NNNNNNN.txt)."""
    folder = _inside(out_root, modality.FILES_DIR)
    folder.mkdir(exist_ok=True)
    count = 0
    for i, (sample, _) in enumerate(_first_samples(out_root, shards, PNG_LIMIT, data)):
        # derived files, rewritten at every completion: atomic, but not worth an fsync each
        _atomic_write(_inside(out_root, f"{modality.FILES_DIR}/{i:07d}{modality.FILE_SUFFIX}"),
                      modality.write_files(sample, spec=data), fsync=False)
        count += 1
    return {"dir": modality.FILES_DIR, "count": count}


def _atomic_write(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Shards and manifests are fsynced before the rename: a verified shard survives a power cut."""
    atomic_write_bytes(path, data, fsync=fsync)


# --- small helpers ---------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _positive_int(v, name: str) -> int:
    if not _is_int(v) or v <= 0:
        raise GenerationError(f"{name} must be an integer > 0, got {v!r}")
    return int(v)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__
