"""ONNX Runtime speed for every exported graph: the generator's ORT session against PyTorch eager
(fp32 default, channels_last, bf16 autocast) and torch.compile, per graph, at each thread count.

For each family entry (default config, seed 0, UNTRAINED seeded weights: speed does not depend on the
weights' values; the int8 variants' quality is a separate, recorded check), ``serving.export.export_model``
writes the graphs as serving gets them; then for every graph of ``model.onnx_graphs()``, in one process:

- ``ort``: the generator's own session (``serving.generator._load_session``: ORT_ENABLE_ALL, intra-op threads,
  no spinning), fed numpy;
- ``ort_spin``: the same with ``session.intra_op.allow_spinning=1`` (a session-option lever; ``--parallel ops --spin``);
- ``ort_par``: what ``genforge generate`` runs by default at T > 1 threads (``--parallel batch``): the generator's
  session with ONE intra-op thread in ``serving.ort_parallel.BatchParallelSession`` with T workers (the batch cut
  into T slices run at once, from the calling thread and a persistent pool, outputs concatenated; a call under
  ``SPLIT_MIN_S`` runs whole). Not timed at 1 thread (it is ``ort`` there). The ``par-ort max |diff|`` column
  checks it against ``ort`` (same graph and inputs, split even where ``ort_par`` would run whole): 0 = the same
  bytes; ``ort_par4`` (only when ``--methods`` names it): 4 chunks per thread, taken by whichever thread is free;
- ``ort_int8``: (``--int8``) a static QDQ int8 copy (``onnxruntime.quantization.quantize_static``, per-channel
  int8 weights, uint8 activations, MinMax calibration on 4 seeded batches of the benchmark's inputs). Speed
  only: such a graph is never served unless its FID check passed (see README-PROPOSAL.md);
- ``eager``: ``module(*inputs)`` under ``torch.no_grad()`` (fp32), ``torch.set_num_threads(threads)``;
- ``eager_cl``: the same after ``.to(memory_format=torch.channels_last)`` (graphs with Conv2d only);
- ``eager_bf16``: ``eager`` under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- ``compile``: ``torch.compile(module)`` (default mode), compiled afresh for each thread count
  (inductor bakes the thread count into its kernels); compile time = the first call, printed apart.
The PyTorch methods run the graph's ``module``, or its ``reference`` (the model's own form) when the exported
module is an export-time rewrite of it (pixelcnn's ``logits``: genmodels/pixelcnn_export.py).

Inputs are ``serving.export._parity_input`` draws (as the parity check feeds: noise, timesteps over [0, T),
labels over the classes), batch axis = the batch, every other axis as in the graph's example (text graphs:
the example's 5 prompt tokens / 3 cached positions). Each method is timed in interleaved rounds (every
method once per round, ~``--seconds`` each) and the median round is reported, so load from other processes
hits all methods alike. FLOPs are counted once per graph and sample with ``torch.utils.flop_counter.
FlopCounterMode`` on the eager module (matmul/conv/bmm FLOPs, 2 per multiply-add; elementwise ops not
counted; nn.LSTM's gate matmuls added by hand), and ORT's GFLOP/s is printed as a share of ``--peak-gflops`` x threads
and of a measured fp32 sgemm (torch.mm 1024 x 1024, the attainable peak) at the same thread count. ``--profile`` adds ORT's
profiler: the share of kernel time per op type, per graph, at 1 thread.

Runs under the Makefile's GLIBC_TUNABLES and OMP_WAIT_POLICY=PASSIVE (set when unset, printed).

    python benchmarks/graph_speed.py [--families vae,cvae,...] [--threads 1,2] [--batch-sizes 256]
                                     [--rounds 5] [--seconds 0.5] [--no-compile] [--int8] [--profile] [--quick]
                                     [--methods ort,ort_spin,ort_par,compile]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.generate import _ensure_tunables  # noqa: E402  (re-executes with the Makefile's GLIBC_TUNABLES)

IMAGE_FAMILIES = "vae,cvae,dcgan,dcgan[conditional=true],wgan_gp,ddpm,ddpm[conditional=true],pixelcnn,realnvp"
TEXT_FAMILIES = "gpt,lstm"
# Zen 4 (this CPU: AMD EPYC, family 25 model 17, 2596 MHz, AVX-512 on 256-bit datapaths, no AMX): 2 FMA pipes
# x 8 fp32 lanes x 2 FLOP x 2.6 GHz. The 166 assumed 2 full 512-bit FMA units (Intel server cores).
PEAK_GFLOPS = 2.6 * 2 * 8 * 2
ORT_METHODS = ("ort", "ort_spin", "ort_par", "ort_par4", "ort_int8")  # ort_par4 only when --methods names it
TORCH_METHODS = ("eager", "eager_cl", "eager_bf16", "compile")


def _rate(fn, batch: int, seconds: float) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process) of ``fn`` (one batch per call)
    over about ``seconds`` of wall time, at least 2 calls."""
    reps, elapsed, start, cpu0 = 0, 0.0, time.perf_counter(), time.process_time()
    while elapsed < seconds or reps < 2:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
    return reps * batch / elapsed, reps * batch / max(time.process_time() - cpu0, 1e-9)


def _entries(spec: str):
    """"ddpm[conditional=true]" -> ("ddpm", {"conditional": True}, "ddpm[conditional=true]")."""
    for entry in filter(None, spec.split(",")):
        family, _, extra = entry.partition("[")
        values = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in extra.rstrip("]").split(";") if kv)}
        yield family, values, entry


def _exported(spec: str, tmp: Path):
    """For each entry of ``spec`` (see ``_entries``): (entry, the family's default model with seeded untrained
    weights, the folder under ``tmp`` it was exported to with ``serving.export.export_model``). Text families
    take the names data's shape."""
    from benchmarks.text_data import names_arrays
    from genmodels import get_family
    from serving.export import export_model

    for family, values, entry in _entries(spec):
        cls = get_family(family)
        data = {"data": names_arrays()[0]} if "tokens" in cls.modalities else {}
        model = cls.from_config({"seed": 0, **data, **values}).eval()
        folder = Path(tmp) / "".join(c if c.isalnum() else "_" for c in entry)
        export_model(model, folder)
        yield entry, model, folder


def _inputs(g, batch: int, num_classes: int, seed: int = 0):
    """numpy inputs for graph ``g`` at ``batch`` (the parity check's draws), and torch views of them."""
    import numpy as np
    import torch

    from serving.export import _parity_input

    axes = g.dynamic_axes or {n: {0: "batch"} for n in g.input_names}
    rng = np.random.default_rng([seed, batch])
    arrays = [_parity_input(rng, ex, name, batch if 0 in dict(axes.get(name, {})) else None, num_classes)
              for ex, name in zip(g.example_inputs, g.input_names)]
    return dict(zip(g.input_names, arrays)), [torch.from_numpy(a) for a in arrays]


def _flops_per_sample(module, tensors, batch: int) -> float:
    """Matmul/conv FLOPs per sample of one forward (FlopCounterMode: 2 per multiply-add), plus nn.LSTM's gate
    matmuls, which FlopCounterMode does not see (2 x 4H x (input + H) per layer, position and sample)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    lstm_flops = []

    def on_lstm(mod, inputs, _out):
        x = inputs[0]
        steps = x.shape[0] * (x.shape[1] if x.dim() == 3 else 1)  # samples x positions (batch_first or not)
        h = mod.hidden_size
        sizes = [mod.input_size] + [h * (2 if mod.bidirectional else 1)] * (mod.num_layers - 1)
        lstm_flops.append(sum(2 * 4 * h * (i + h) for i in sizes) * steps * (2 if mod.bidirectional else 1))

    hooks = [m.register_forward_hook(on_lstm) for m in module.modules() if isinstance(m, torch.nn.LSTM)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*tensors)
    finally:
        for h in hooks:
            h.remove()
    return (counter.get_total_flops() + sum(lstm_flops)) / batch


def _int8_model(path: Path, feeds_list: list[dict], out: Path, exclude: list[str] | None = None) -> Path:
    """A static QDQ int8 copy of ``path`` calibrated on ``feeds_list`` (MinMax), written to ``out``; the nodes
    named in ``exclude`` stay fp32."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds_list)

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    root = logging.getLogger()
    level, _ = root.level, root.setLevel(logging.ERROR)  # the quantizer warns once per node about 1-D weights
    try:
        with warnings.catch_warnings():
            # untrained graphs have all-zero weight channels (zero-initialised convs): scale 0, numpy warns; the
            # int8 graph is still timed (speed only); trained weights have none
            warnings.simplefilter("ignore", RuntimeWarning)
            quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude or []))
    finally:
        root.setLevel(level)
    return out


def sgemm_gflops(threads: int, clock: str = "wall", n: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 matmul GFLOP/s (torch.mm n x n) at ``threads``: the attainable peak beside the assumed one."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n ** 3 * _rate(lambda: torch.mm(a, b), 1, seconds)[0 if clock == "wall" else 1] / 1e9


def _session(path: Path, threads: int, spin: bool = False, profile: str | None = None):
    import onnxruntime as ort

    from serving.generator import _load_session

    if profile is None:  # exactly the generator's session (genforge generate [--spin])
        return _load_session(path, ["CPUExecutionProvider"], threads, spin)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if profile:
        opts.enable_profiling, opts.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_profile(path: Path, feeds: dict, calls: int = 3) -> dict[str, float]:
    """Share of ORT kernel time per op type over ``calls`` runs (1 thread), largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = _session(path, 1, profile=str(Path(tmp) / "p"))
        for _ in range(calls + 1):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1.0
    return {k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


def _torch_fns(module, tensors, methods, threads: int, compile_times: dict):
    import torch

    has_conv = any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in module.modules())
    fns = {}
    if "eager" in methods:
        fns["eager"] = lambda: module(*tensors)
    if "eager_cl" in methods and has_conv:
        cl = copy.deepcopy(module).to(memory_format=torch.channels_last)
        cl_in = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors]
        fns["eager_cl"] = lambda: cl(*cl_in)
    if "eager_bf16" in methods:
        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(*tensors)
        fns["eager_bf16"] = bf16
    if "compile" in methods:
        torch._dynamo.reset()  # a fresh compile: inductor's kernels carry the thread count they were built for
        compiled = torch.compile(copy.deepcopy(module))
        start = time.perf_counter()
        try:
            with torch.no_grad():
                compiled(*tensors)
            compile_times[threads] = time.perf_counter() - start
            fns["compile"] = lambda: compiled(*tensors)
        except Exception as e:  # noqa: BLE001  reported, the other methods still run
            compile_times[threads] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return fns


def measure_graph(g, path: Path, batch: int, threads: int, num_classes: int, *, methods, rounds: int,
                  seconds: float, int8_path: Path | None = None, clock: str = "wall") -> tuple[dict[str, float], dict]:
    """Median samples/s per method for graph ``g`` (exported at ``path``) at ``batch`` and ``threads``:
    per wall second (``clock="wall"``) or per CPU second of this process (``"cpu"``: robust to other
    processes' load at 1 thread, where every method computes in the calling thread; at 2 threads it is
    work efficiency, not latency). Also returns {threads: compile seconds or failure}."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    feeds, tensors = _inputs(g, batch, num_classes)
    out_names = list(g.output_names)
    fns, diffs = {}, []
    if "ort" in methods:
        sess = _session(path, threads)
        fns["ort"] = lambda: sess.run(out_names, feeds)
    if "ort_spin" in methods:
        spin = _session(path, threads, spin=True)
        fns["ort_spin"] = lambda: spin.run(out_names, feeds)
    if "ort_par" in methods and threads > 1:
        from serving.ort_parallel import BatchParallelSession

        one = _session(path, 1)
        par = BatchParallelSession(one, threads)  # as serving.ort_parallel.load_sessions builds it
        fns["ort_par"] = lambda: par.run(out_names, feeds)
        if "ort_par4" in methods:  # 4 chunks per thread, taken by whichever thread is free
            par4 = BatchParallelSession(one, threads, chunks_per_worker=4)
            fns["ort_par4"] = lambda: par4.run(out_names, feeds)
        if "ort" in fns:  # the same graph and inputs: the slices' outputs must be the whole batch's
            split = BatchParallelSession(one, threads, split_min_s=0)  # split even where par would run whole
            diffs.append(max(float(np.max(np.abs(a - b))) if a.dtype.kind == "f" else float((a != b).sum())
                             for a, b in zip(split.run(out_names, feeds), sess.run(out_names, feeds))))
    if "ort_int8" in methods and int8_path is not None:
        q = _session(int8_path, threads)
        fns["ort_int8"] = lambda: q.run(out_names, feeds)
    compile_times: dict = {}
    module = (g.module if g.reference is None else g.reference).eval()  # PyTorch runs the model's own form
    fns.update(_torch_fns(module, tensors, methods, threads, compile_times))
    rates: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up: allocators, ORT arena, oneDNN primitives
            fn(), fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                rates[name].append(_rate(fn, batch, seconds)[0 if clock == "wall" else 1])
    out = {k: statistics.median(v) for k, v in rates.items()}
    if diffs:
        out["par_max_diff"] = diffs[0]
    return out, compile_times


def _misses(graph: str, batch: int, threads: int, r: dict, best_eager, flops: float, peak: float) -> list[str]:
    """One line per missed target of a row, with the share of the fp32 peak ORT (``r["ort"]``: the generator's
    default session) runs at and would need."""
    ort_gf = flops * r["ort"] / 1e9
    at = f"{graph} batch {batch}, {threads} thread(s): ORT runs at {100 * ort_gf / peak:.0f}% of the fp32 peak"
    out = []
    for name, other, target in (("1.5x best fp32 eager", best_eager, 1.5), ("torch.compile", r.get("compile"), 1.0),
                                ("bf16 autocast", r.get("eager_bf16"), 1.0)):
        if other and r["ort"] < target * other:
            need = 100 * target * other * flops / 1e9 / peak
            int8 = (f"; ORT int8 (speed only) runs {r['ort_int8'] / other:.2f}x {name.removeprefix('1.5x ')}"
                    if r.get("ort_int8") and name != "torch.compile" else "")
            out.append(f"{at}; {name} needs {target * other:,.0f} samples/s = {need:.0f}% of the peak{int8}")
    return out


def _fmt(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


def _ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def main() -> None:
    _ensure_tunables()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=f"{IMAGE_FAMILIES},{TEXT_FAMILIES}",
                    help="comma list; 'family[key=value;...]' sets config values")
    ap.add_argument("--threads", default="1,2", help="comma list")
    ap.add_argument("--batch-sizes", default="256", help="comma list; conditional ddpm adds 2x (its guided call)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="per method per round")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes per graph)")
    ap.add_argument("--int8", action="store_true", help="add a static QDQ int8 ORT variant (speed only)")
    ap.add_argument("--methods", help=f"comma list, a subset of {','.join(ORT_METHODS + TORCH_METHODS)} (default: all "
                    "but ort_int8)")
    ap.add_argument("--profile", action="store_true", help="print ORT's per-op share of kernel time")
    ap.add_argument("--peak-gflops", type=float, default=PEAK_GFLOPS, help="fp32 peak of one core")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 0.2 s, 1 thread, batch 64, no compile")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="samples per wall second, or per CPU second of this process (robust on a loaded machine "
                         "at 1 thread)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.threads, args.batch_sizes, args.no_compile = 2, 0.2, "1", "64", True
    threads_list = sorted({int(t) for t in args.threads.split(",")})
    methods = [m for m in (*ORT_METHODS, *TORCH_METHODS)
               if not (m == "compile" and args.no_compile) and not (m == "ort_int8" and not args.int8)
               and m != "ort_par4"]
    if args.methods:
        unknown = set(args.methods.split(",")) - set(ORT_METHODS + TORCH_METHODS)
        if unknown:
            ap.error(f"--methods: unknown {', '.join(sorted(unknown))}")
        methods = [m for m in (*methods, "ort_par4") if m in args.methods.split(",")]

    import onnxruntime as ort
    import torch

    from benchmarks._common import print_table

    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; fp32 peak assumed {args.peak_gflops:.0f} GFLOP/s per core; untrained seeded "
          "weights", flush=True)
    sgemm = {t: sgemm_gflops(t, args.clock) for t in threads_list}
    print(f"measured fp32 sgemm (torch.mm 1024^2, per {args.clock} second): " + ", ".join(
        f"{g:.0f} GFLOP/s at {t} thread(s)" for t, g in sgemm.items()), flush=True)
    rows, compile_rows, profiles, misses = [], [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for entry, model, folder in _exported(args.families, Path(tmp)):
            ncls = int(model.config.num_classes)
            batches = sorted({int(b) for b in args.batch_sizes.split(",")}
                             | ({2 * int(b) for b in args.batch_sizes.split(",")}
                                if model.family == "ddpm" and getattr(model.config, "conditional", False) else set()))
            for g in model.onnx_graphs():
                path = folder / f"{g.name}.onnx"
                for batch in batches:
                    feeds, tensors = _inputs(g, batch, ncls)
                    torch_module = g.module if g.reference is None else g.reference  # the model's own form
                    flops = _flops_per_sample(torch_module.eval(), tensors, batch)
                    shape = " ".join("x".join(map(str, a.shape[1:])) or "-" for a in feeds.values())
                    int8 = None
                    if "ort_int8" in methods:
                        calib = [_inputs(g, batch, ncls, seed=s)[0] for s in range(1, 5)]
                        int8 = _int8_model(path, calib, folder / f"{g.name}.int8.onnx")
                    if args.profile and f"{entry}/{g.name}" not in profiles:
                        profiles[f"{entry}/{g.name}"] = ort_profile(path, feeds)
                    for threads in threads_list:
                        r, ct = measure_graph(g, path, batch, threads, ncls, methods=methods, rounds=args.rounds,
                                              seconds=args.seconds, int8_path=int8, clock=args.clock)
                        par_diff = r.pop("par_max_diff", None)
                        best_eager = max(r.get("eager", 0), r.get("eager_cl", 0)) or None
                        row = {"graph": f"{entry}/{g.name}", "inputs": shape, "batch": batch, "threads": threads,
                               **{m: _fmt(r.get(m)) for m in methods},
                               "ORT/best eager": _ratio(r.get("ort"), best_eager),
                               "ORT/compile": _ratio(r.get("ort"), r.get("compile")),
                               **({"spin/compile": _ratio(r.get("ort_spin"), r.get("compile")),
                                   "par/compile": _ratio(r.get("ort_par"), r.get("compile")),
                                   "par-ort max |diff|": _fmt(par_diff, ".1e")} if "ort_par" in methods else {}),
                               "ORT/bf16": _ratio(r.get("ort"), r.get("eager_bf16")),
                               "MFLOP/sample": f"{flops / 1e6:.2f}",
                               "ORT GFLOP/s": f"{flops * r['ort'] / 1e9:.1f}",
                               "% of peak": f"{100 * flops * r['ort'] / 1e9 / (args.peak_gflops * threads):.0f}%",
                               "% of sgemm": f"{100 * flops * r['ort'] / 1e9 / sgemm[threads]:.0f}%"}
                        rows.append(row)
                        print(f"  {json.dumps(row)}", flush=True)
                        # the targets hold for what `genforge generate` runs: ort_par at 2+ threads when measured
                        served = {**r, "ort": r.get("ort_par") or r["ort"]}
                        misses.extend(_misses(row["graph"], batch, threads, served, best_eager, flops,
                                              args.peak_gflops * threads))
                        if ct:
                            compile_rows.append({"graph": row["graph"], "batch": batch, "threads": threads,
                                                 "compile s (first call)": _fmt(ct[threads], ".1f")
                                                 if isinstance(ct[threads], float) else ct[threads]})
    print(f"\nsamples per {args.clock} second per method, median of {args.rounds} interleaved rounds (targets: ORT/best eager >= 1.5, "
          "ORT/compile >= 1.0, ORT/bf16 >= 1.0; heavy graphs >= 50% of the fp32 peak):")
    print_table(rows, list(rows[0]))
    if compile_rows:
        print("\ntorch.compile time (default mode, first call, not in the samples/s above):")
        print_table(compile_rows, list(compile_rows[0]))
    for name, shares in profiles.items():
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:6])
        print(f"ORT profile {name} (1 thread, share of kernel time): {top}")
    if misses:
        print("\nTargets missed, with what they would take (the profile above says where ORT's time goes):")
        for line in misses:
            print(f"  {line}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (a shared machine: "
          "compare the methods of one row, not rows of different runs)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "compile": compile_rows, "profiles": profiles}, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
