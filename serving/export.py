"""Export a model's graphs to ONNX and prove they compute what PyTorch computes.

The export side of serving: this module may import torch, onnx and onnxruntime (the generator
that runs the result never imports torch).

``export_model(model, out_dir)`` takes every graph of ``model.onnx_graphs()`` and, for each:

1. exports it to ``<name>.onnx`` (opset 18) with a dynamic batch axis (the graph's
   ``dynamic_axes``, or axis 0 of every input and output when it declares none). The TorchScript
   exporter (``dynamo=False``) is tried first: it is ~20x faster and gives a plain graph; when it
   fails, or its graph fails the parity check, the torch.export-based exporter (``dynamo=True``)
   is tried next; then the graph's ``onnx_pass`` (if any) rewrites the file;
2. checks it with ``onnx.checker.check_model(full_check=True)`` and that ONNX Runtime sees
   exactly the declared inputs (an exporter silently drops an input the forward never uses);
3. runs it in ONNX Runtime (CPUExecutionProvider) on seeded inputs at batch sizes 1 and 7 and
   compares every output with the PyTorch module in fp32 (the graph's ``reference`` when it has
   one: the model's own module that ``module`` rewrites): the graph passes when the max
   absolute error is <= ``atol``.

Folder written (atomically: everything is built in a temp folder beside ``out_dir`` and renamed
into place, replacing whatever ``out_dir`` held before)::

    out_dir/<graph>.onnx     one per graph
    out_dir/parity.json      {"passed", "max_abs_error", "atol", "batch_sizes", "seed", "opset",
                              "graphs": {name: {"max_abs_error", "batch_sizes", "atol", "passed",
                                                "exporter", "per_batch": {"1": e, "7": e},
                                                "attempts": [{"exporter", "max_abs_error", "error"}]}},
                              "versions": {"torch", "onnx", "onnxruntime"}}
    out_dir/sampler.json     model.sampler().to_json() (a typed ``contracts.samplers`` spec; a plain dict
                             is read with ``SamplerSpec.from_json``) plus {"format", "family", "modality", "sample_shape",
                              "image_shape" (images), "dtype", "num_classes", "class_names",
                              "graphs": {name: {"file", "inputs", "outputs", "sha256", "exporter",
                                                "opset"}},
                              "parity": {"max_abs_error", "atol"}}

Failure (the choice the brief asked for): when any graph fails parity, or an export step raises,
``out_dir`` is replaced by a folder holding ONLY ``parity.json`` with ``"passed": false`` (and an
``"error"`` string saying why): no ``.onnx`` file and no ``sampler.json``. Then ``ExportError`` is
raised. So a servable model folder is exactly one that has ``sampler.json`` (which is written only
when parity passed), and the failed report stays where the stage's output would have been, for
the registry/CI to read. A max error that cannot be computed (shape mismatch, NaN where PyTorch
has a number, an ORT run error) is written as ``null`` with the reason in ``"error"``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from contracts.errors import ServingError
from contracts.io import sha256_file
from contracts.samplers import SamplerSpecError, as_spec

log = logging.getLogger("genforge.serving.export")

OPSET = 18
PARITY_BATCH_SIZES = (1, 7)
EXPORTERS = ("torchscript", "dynamo")
SAMPLER_FORMAT = "genforge.sampler/1"


class ExportError(ServingError):
    """The model could not be exported to a servable ONNX folder (parity failed or export broke)."""


# --- public API ------------------------------------------------------------------------------
def export_model(model, out_dir: Path, *, seed: int = 0, atol: float = 1e-4,
                 batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES, opset: int = OPSET,
                 exporters: tuple[str, ...] = EXPORTERS) -> dict[str, Any]:
    """Export ``model.onnx_graphs()`` to ``out_dir`` and check ORT/PyTorch parity.

    ``exporters`` are tried in order per graph until one gives a graph that passes parity
    ("torchscript": ``torch.onnx.export(dynamo=False)``, "dynamo": ``dynamo=True``).

    Returns the parity report (the content of ``parity.json``). Raises ``ExportError`` (after
    writing the failed ``parity.json``, see the module docstring) when any graph fails.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"export target {out_dir} exists and is not a folder")
    if not (isinstance(atol, (int, float)) and atol >= 0 and math.isfinite(atol)):
        raise ExportError(f"atol must be a finite number >= 0, got {atol!r}")
    exporters = tuple(exporters)
    if not exporters or set(exporters) - set(EXPORTERS):
        raise ExportError(f"exporters must be a non-empty subset of {EXPORTERS}, got {exporters!r}")
    if not batch_sizes or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
        raise ExportError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the exported folder is an ordinary one
    report: dict[str, Any] = {"passed": False, "max_abs_error": None, "atol": float(atol),
                              "batch_sizes": list(batch_sizes), "seed": int(seed), "opset": int(opset),
                              "graphs": {}, "versions": _versions()}
    try:
        try:
            sampler_json = _export_all(model, tmp, report, seed=seed, atol=atol,
                                       batch_sizes=tuple(batch_sizes), opset=opset, exporters=exporters)
        except ExportError as e:
            report.update(passed=False, error=str(e))
        except Exception as e:  # an exporter/ORT/model bug: still leave a failed report behind
            log.exception("export failed")
            report.update(passed=False, error=f"{type(e).__name__}: {e}")
        if report.get("error") is None and not report["passed"]:
            failed = {k: g for k, g in report["graphs"].items() if not g["passed"]}
            why = "; ".join(f"{k}: " + ", ".join(f"{a['exporter']} exporter: {a['error']}" for a in g["attempts"])
                            for k, g in failed.items())
            report["error"] = f"parity failed (atol={atol:g}) for {why}"
        if report["passed"]:
            _write_json(tmp / "sampler.json", sampler_json)
        else:  # a failed export leaves only the report: nothing servable
            for p in tmp.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        _write_json(tmp / "parity.json", report)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not report["passed"]:
        raise ExportError(f"ONNX export of {getattr(model, 'family', type(model).__name__)} failed: "
                          f"{report['error']} (report: {out_dir / 'parity.json'})")
    log.info("exported %s to %s: max abs error %.3g <= %g", ", ".join(report["graphs"]), out_dir,
             report["max_abs_error"], atol)
    return report


# --- the export itself -----------------------------------------------------------------------
def _export_all(model, folder: Path, report: dict, *, seed, atol, batch_sizes, opset, exporters) -> dict[str, Any]:
    try:  # before exporting anything: a model without a valid sampler fails fast
        spec = as_spec(model.sampler())
    except SamplerSpecError as e:
        raise ExportError(f"model.sampler(): {e}") from None
    graphs = list(model.onnx_graphs())
    if not graphs:
        raise ExportError("model.onnx_graphs() returned no graphs")
    names = [g.name for g in graphs]
    if len(set(names)) != len(names):
        raise ExportError(f"duplicate graph names: {names}")
    for name in names:
        if not name or Path(name).name != name or name.startswith("."):
            raise ExportError(f"graph name {name!r} is not a plain file stem")
    try:
        spec.check_graphs(names)
    except SamplerSpecError as e:
        raise ExportError(f"model.sampler(): {e}") from None

    cfg = model.config
    data = cfg.data
    added = {"format": SAMPLER_FORMAT, "family": getattr(model, "family", "") or type(model).__name__,
             "modality": data.modality, "sample_shape": list(data.shape), "dtype": data.dtype,
             "num_classes": int(data.num_classes), "class_names": list(data.class_names)}
    if data.modality == "image":  # the key every reader before contracts v2 knows
        added["image_shape"] = list(data.shape)
    if data.vocab is not None:  # tokens: what the generator decodes the ids with (serving.generator.sample_spec)
        added["vocab"] = list(data.vocab)
    graphs_json: dict[str, Any] = {}
    worst = 0.0
    all_passed = True
    for g in graphs:
        entry = _export_graph(g, folder, seed=seed, atol=atol, batch_sizes=batch_sizes, opset=opset,
                              num_classes=int(cfg.num_classes), exporters=exporters)
        report["graphs"][g.name] = entry
        all_passed &= entry["passed"]
        worst = math.inf if entry["max_abs_error"] is None else max(worst, entry["max_abs_error"])
        if entry["passed"]:
            path = folder / f"{g.name}.onnx"
            graphs_json[g.name] = {"file": path.name, "inputs": list(g.input_names),
                                   "outputs": list(g.output_names), "sha256": sha256_file(path),
                                   "exporter": entry["exporter"], "opset": opset}
    report["max_abs_error"] = None if math.isinf(worst) else worst
    report["passed"] = bool(all_passed)

    added["graphs"] = graphs_json
    added["parity"] = {"max_abs_error": report["max_abs_error"], "atol": float(atol)}
    return {**spec.to_json(), **added}


def _export_graph(g, folder: Path, *, seed, atol, batch_sizes, opset, num_classes, exporters) -> dict[str, Any]:
    modules = [m for m in (g.module, g.reference) if m is not None]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    dynamic_axes = g.dynamic_axes or {n: {0: "batch"} for n in [*g.input_names, *g.output_names]}
    attempts: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    target = folder / f"{g.name}.onnx"
    try:
        for exporter in exporters:
            path = folder / f".{g.name}.{exporter}.onnx"
            attempt: dict[str, Any] = {"exporter": exporter, "max_abs_error": None, "error": None}
            attempts.append(attempt)
            try:
                _torch_export(g, path, exporter, dynamic_axes, opset)
                if g.onnx_pass is not None:  # the graph's own rewrite of the exported file (OnnxGraph.onnx_pass)
                    onnx.save(g.onnx_pass(onnx.load(str(path))), str(path))
                onnx.checker.check_model(str(path), full_check=True)
                per_batch = _parity(g, path, seed=seed, batch_sizes=batch_sizes, dynamic_axes=dynamic_axes,
                                    num_classes=num_classes)
            except Exception as e:
                attempt["error"] = f"{type(e).__name__}: {_first_line(e)}"
                log.info("graph %s, %s exporter: %s", g.name, exporter, attempt["error"])
                path.unlink(missing_ok=True)
                continue
            err = max(per_batch.values())
            attempt["max_abs_error"] = err
            attempt["per_batch"] = per_batch
            if err <= atol:
                os.replace(path, target)
                best = attempt
                break
            attempt["error"] = f"max abs error {err:.3g} > atol {atol:g}"
            path.unlink(missing_ok=True)
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    chosen = best or min(attempts, key=lambda a: math.inf if a["max_abs_error"] is None else a["max_abs_error"])
    return {"max_abs_error": chosen["max_abs_error"], "batch_sizes": list(batch_sizes), "atol": float(atol),
            "passed": best is not None, "exporter": chosen["exporter"],
            "per_batch": chosen.get("per_batch", {}), "attempts": attempts}


def _torch_export(g, path: Path, exporter: str, dynamic_axes, opset: int) -> None:
    common = dict(input_names=list(g.input_names), output_names=list(g.output_names), opset_version=opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        if exporter == "torchscript":
            torch.onnx.export(g.module, tuple(g.example_inputs), str(path), dynamo=False,
                              dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                              do_constant_folding=True, **common)
        else:
            dims: dict[str, Any] = {}
            shapes = []
            for name in g.input_names:
                axes = dynamic_axes.get(name, {})
                shapes.append({int(ax): dims.setdefault(str(label), torch.export.Dim(str(label), min=1))
                               for ax, label in dict(axes).items()} or None)
            torch.onnx.export(g.module, tuple(g.example_inputs), str(path), dynamo=True,
                              dynamic_shapes=tuple(shapes), external_data=False, verbose=False,
                              optimize=True, **common)
    if not path.exists():
        raise ExportError(f"exporter wrote no file for graph {g.name}")


def _parity(g, path: Path, *, seed, batch_sizes, dynamic_axes, num_classes) -> dict[str, float]:
    """Max abs error per batch size between ORT (CPU) and the PyTorch module, fp32."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = [i.name for i in sess.get_inputs()]
    if sorted(got) != sorted(g.input_names):
        raise ExportError(f"graph {g.name}: ONNX inputs {got} != declared {list(g.input_names)} "
                          "(an input the forward never uses is dropped by the exporter)")
    out_names = [o.name for o in sess.get_outputs()]
    if out_names != list(g.output_names):
        raise ExportError(f"graph {g.name}: ONNX outputs {out_names} != declared {list(g.output_names)}")
    device = g.example_inputs[0].device if g.example_inputs else torch.device("cpu")
    errors: dict[str, float] = {}
    for b in batch_sizes:
        rng = np.random.default_rng([seed, b])
        arrays = [_parity_input(rng, ex, name, b if 0 in dict(dynamic_axes.get(name, {})) else None, num_classes)
                  for ex, name in zip(g.example_inputs, g.input_names)]
        with torch.no_grad():
            ref = (g.module if g.reference is None else g.reference)(*(torch.from_numpy(a).to(device) for a in arrays))
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        outs = sess.run(None, dict(zip(g.input_names, arrays)))
        if len(refs) != len(outs):
            raise ExportError(f"graph {g.name}: PyTorch returns {len(refs)} outputs, ONNX {len(outs)}")
        err = 0.0
        for name, r, o in zip(g.output_names, refs, outs):
            r = r.detach().float().cpu().numpy()
            o = np.asarray(o, dtype=np.float32)
            if r.shape != o.shape:
                raise ExportError(f"graph {g.name}, output {name}, batch {b}: shape {o.shape} in ONNX, {r.shape} in PyTorch")
            if not np.array_equal(np.isnan(r), np.isnan(o)):
                raise ExportError(f"graph {g.name}, output {name}, batch {b}: NaNs differ between ONNX and PyTorch")
            finite = np.isfinite(r) & np.isfinite(o)
            if not np.array_equal(np.where(finite, 0, r), np.where(finite, 0, o), equal_nan=True):
                raise ExportError(f"graph {g.name}, output {name}, batch {b}: infinities differ")
            if finite.any():
                err = max(err, float(np.max(np.abs(r[finite].astype(np.float64) - o[finite]))))
        errors[str(b)] = err
    return errors


def _parity_input(rng: np.random.Generator, example: torch.Tensor, name: str, batch: int | None,
                  num_classes: int) -> np.ndarray:
    shape = tuple(example.shape)
    if batch is not None:
        shape = (batch, *shape[1:])
    if example.dtype.is_floating_point:
        return rng.standard_normal(shape).astype(str(example.dtype).removeprefix("torch."))
    if example.dtype == torch.bool:
        return rng.integers(0, 2, shape).astype(bool)
    ex = example.detach().cpu()
    lo, hi = (int(ex.min()), int(ex.max())) if ex.numel() else (0, 0)
    if lo == hi and "label" in name.lower() and num_classes > 0:
        lo, hi = 0, num_classes - 1
    return rng.integers(lo, hi + 1, shape).astype(str(example.dtype).removeprefix("torch."))


# --- files -----------------------------------------------------------------------------------
def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` is moved aside first, then removed."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else ""


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
