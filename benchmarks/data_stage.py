"""Wall time and peak RSS of prepare + validate: mnist5k, and a 60,000-image IDX set written here.

Each case runs in a fresh subprocess so its peak RSS is its own. Imports are timed apart from the work.
Targets: mnist5k <= 15 s after imports; 60,000 images <= 60 s and <= 1.5 GiB peak RSS.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASE = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
sys.path.insert(0, {root!r})
from pipelines.env import apply_defaults
apply_defaults(Path({work!r}))
import great_expectations, pandas, numpy  # the stages' heavy imports, timed apart
from pipelines.prepare import prepare, prepared_dir
from pipelines.validate import validate
t1 = time.perf_counter()
params = {{"data": {{"source": {source!r}, "name": "bench"}}, "validation": {{"min_train_samples": 1000}}}}
prepare(params, Path({work!r}))
t2 = time.perf_counter()
validate(params, Path({work!r}), prepared_dir(Path({work!r}), params))
t3 = time.perf_counter()
from benchmarks._common import peak_rss_mib
print(json.dumps({{"imports_s": t1 - t0, "prepare_s": t2 - t1, "validate_s": t3 - t2, "peak_rss_mib": peak_rss_mib()}}))
"""


def run_case(source: str, work: Path) -> dict:
    code = CASE.format(root=str(ROOT), work=str(work), source=source)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks._common import print_table
    from tests.data_factories import write_idx_set

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        idx = write_idx_set(work / "idx60k", n_train=60_000, n_test=10_000, size=28, seed=0)
        for label, source, target_s in (("mnist5k", "mnist5k", 15), ("idx 60k+10k", f"idx:{idx}", 60)):
            r = run_case(source, work)
            work_s = r["prepare_s"] + r["validate_s"]
            rows.append({"dataset": label, "imports s": f"{r['imports_s']:.1f}", "prepare s": f"{r['prepare_s']:.1f}",
                         "validate s": f"{r['validate_s']:.1f}", "total after imports s": f"{work_s:.1f}",
                         "target s": target_s, "peak RSS MiB": f"{r['peak_rss_mib']:.0f}"})
    print_table(rows, list(rows[0]))
    print("peak RSS target for the 60k set: <= 1536 MiB")


if __name__ == "__main__":
    main()
