"""dvc.yaml, rendered from the stage table (pipelines/stages.py) and the catalog: `genforge dvc-yaml --write`.

The committed dvc.yaml is this function's output; tests/test_stages.py fails when they differ, so a new
import in a stage module, a new stage input or a new params key reaches dvc.yaml through one command.
Per-family stages use `foreach: ${model.families}`; paths use `${data.name}` and `${item}`.

Another params file (`genforge dvc-yaml --params params-names.yaml --write`) gets a pipeline of its own,
`stages/<name>/dvc.yaml` (`params-names.yaml` -> `stages/names/`): the same stages with `vars:` reading that
file, `wdir` the project root, params keys read from it and `--params` on every command, so
`dvc repro stages/names/dvc.yaml` replays that chain with its own `dvc.lock`. The outputs do not collide
with the main pipeline's: every path is scoped by `data.name` (and the family).
"""
from __future__ import annotations

from pathlib import Path

from pipelines.catalog import entry
from pipelines.stages import STAGES, Output, Stage, code_deps

DATASET, FAMILY = "${data.name}", "${item}"
HEADER = """\
# GENERATED from pipelines/stages.py (the stage table) by `genforge dvc-yaml --write`: edit the table, not this file.
# The same stage functions the Prefect flows run, driven by DVC: `make repro` (= dvc repro with .venv on PATH).
# `genforge run` ends with `dvc commit`, so right after it `dvc repro` only reruns the `source` fingerprint (always
# changed by design: it re-reads data.source) and finds nothing else to do.
# Outputs live in DVC's cache (restored by `dvc checkout`) except the `cache: false` ones under metrics/, which git
# versions, so `dvc metrics diff` and `dvc plots diff` compare any two commits; data/sources/ is re-derived.
# Code deps are computed: each stage's module import closure within pipelines/genmodels/evaluation/serving/contracts;
# stages that run a family add genmodels/${item}.py and the files any family imports besides its own (base.py,
# parents such as vae.py for cvae and dcgan.py for wgan_gp): foreach cannot give each family its own list.
"""


def _path(name: str) -> str:
    return entry(name).format(DATASET, FAMILY)


def _out_lines(out: Output, pad: str) -> list[str]:
    flags = [f"cache: {str(out.cache).lower()}"] if not out.cache else []
    flags += ["persist: true"] if out.persist else []
    flags += [f"{key}: {_yaml_scalar(value)}" for key, value in out.plot]
    if not flags:
        return [f"{pad}- {_path(out.entry)}" + (f"    # {out.note}" if out.note else "")]
    lines = [f"{pad}- {_path(out.entry)}:"]
    for i, flag in enumerate(flags):
        note = f"    # {out.note}" if out.note and i == len(flags) - 1 else ""
        lines.append(f"{pad}    {flag}{note}")
    return lines


def _yaml_scalar(value: str) -> str:
    """A plot property as a YAML string: plain when YAML reads it back as the same string, else quoted."""
    import json

    import yaml

    return value if yaml.safe_load(value) == value and ":" not in value else json.dumps(value)


def pipeline_file(params_file: str | None) -> str:
    """Where the pipeline of `params_file` lives, relative to the project root: dvc.yaml for params.yaml (or
    None), else `stages/<name>/dvc.yaml` with <name> the file's stem less a `params-` prefix."""
    if params_file is None or Path(params_file).as_posix() == "params.yaml":
        return "dvc.yaml"
    stem = Path(params_file).stem
    return f"stages/{stem.removeprefix('params-') or stem}/dvc.yaml"


def stage_body(s: Stage, params_file: str | None = None) -> list[str]:
    """The YAML lines of one stage's definition (without its name), indented for `do:` when per family;
    with `params_file`, run from the project root (`wdir`) with `--params` and params read from that file."""
    pad = "      " if s.per_family else "    "
    fam = f" --family {FAMILY}" if s.per_family else ""
    lines = [f"{pad}cmd: genforge stage {s.name}{fam}" + (f" --params {params_file}" if params_file else "")]
    if params_file:
        lines.append(f"{pad}wdir: {'/'.join(['..'] * (len(Path(pipeline_file(params_file)).parts) - 1))}")
    if s.always_changed:
        lines.append(f"{pad}always_changed: true")
    deps = [_path(i) for i in s.inputs] + code_deps(s)
    if deps:
        lines += [f"{pad}deps:"] + [f"{pad}  - {d}" for d in deps]
    keys = s.param_keys(FAMILY if s.per_family else None)
    if keys and params_file:
        lines += [f"{pad}params:", f"{pad}  - {params_file}:"] + [f"{pad}      - {k}" for k in keys]
    elif keys:
        lines += [f"{pad}params:"] + [f"{pad}  - {k}" for k in keys]
    for kind in ("outs", "metrics", "plots"):
        outs = [o for o in s.outputs if o.kind == kind]
        if outs:
            lines.append(f"{pad}{kind}:")
            for o in outs:
                lines += _out_lines(o, pad + "  ")
    return lines


def render(params_file: str | None = None) -> str:
    """The full dvc.yaml text for the current stage table and code; with `params_file` (a path relative to
    the project root, not params.yaml), the pipeline of that file, to be written at `pipeline_file(...)`."""
    if params_file is not None and Path(params_file).as_posix() == "params.yaml":
        params_file = None
    lines = [HEADER.rstrip("\n")]
    if params_file:
        up = "/".join([".."] * (len(Path(pipeline_file(params_file)).parts) - 1))
        lines += [f"# The pipeline of {params_file}: `dvc repro {pipeline_file(params_file)}`.",
                  "vars:", f"  - {up}/{params_file}"]
    lines.append("stages:")
    for i, s in enumerate(STAGES):
        if i:
            lines.append("")
        lines.append(f"  {s.name}:")
        if s.per_family:
            lines += ["    foreach: ${model.families}", "    do:"]
        lines += stage_body(s, params_file)
    return "\n".join(lines) + "\n"
