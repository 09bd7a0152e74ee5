"""The README's family table from measured ``genforge run`` projects: each family's default-trained model as the
main job trained, evaluated and gated it, one project per training seed, median (min-max) over the seeds.

Reads, in each PROJECT (a folder ``genforge run`` ran in), every ``models/<data>/<family>/train.json`` with its
``config.json`` (the seed, and ``conditional`` for the dcgan's conditional variant ``dcgan_cond``),
``reports/<data>/<family>/metrics.json`` and ``promotion.json`` (the registry gate's decision, its failed
checks). Nothing is trained or evaluated. The rows have the format of ``gate_ladder.py --json`` (rung
``default``), so ``--json FILE`` can be passed to ``gate_ladder.py --report`` beside the ladder's own rows
(a later file's row replaces an earlier one for the same family, seed and rung). A family trained with the same
seed in two PROJECTs counts once: the later project's (e.g. a rerun after a default changed). A row whose model
was not trained with today's defaults (genforge's params.yaml over the family's config) is named on stderr
("note: ... epochs=25 (default 50)") and carries it in its ``settings`` field.

Usage: python benchmarks/family_table.py PROJECT [PROJECT ...] [--json FILE]
  e.g. for s in 0 1 2; do (cd run-s$s && genforge run --set train.seed=$s \\
           --set 'model.families=[vae,cvae,dcgan,wgan_gp,pixelcnn,ddpm,realnvp]' --samples 1000); done
       python benchmarks/family_table.py run-s0 run-s1 run-s2
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gate_ladder import ALL_FAMILIES, _row, family_table  # noqa: E402

COLUMNS = ["family", "seeds", "epochs", "train s", "fid_ratio", "coverage", "recall", "class_coverage",
           "conditional_accuracy", "bits_per_dim", "copy_rate", "decision"]


def _variant(family: str, config: dict[str, Any]) -> str:
    """The ladder's name: a conditional dcgan (wgan_gp, ddpm) is ``dcgan_cond`` (``wgan_gp_cond``, ``ddpm_cond``)."""
    return f"{family}_cond" if config.get("conditional") and family != "cvae" else family


@functools.lru_cache(maxsize=None)
def _shipped(family: str) -> dict[str, Any]:
    """The config values the main job trains ``family`` with today: genforge's params.yaml over the family's
    config defaults (read once per family)."""
    from pipelines.config import load_params
    from pipelines.train import family_settings

    return family_settings(load_params(ROOT / "params.yaml", []), family)[0]


def non_default(family: str, stored: dict[str, Any]) -> str:
    """How a stored config.json (``{"config": ..., "training": ...}``) differs from what the main job trains today
    (genforge's params.yaml over the family's config defaults), in its architecture and training fields: "default", "epochs=20 (default 60), ...", or "not valid today: ..." for a
    value today's checks refuse. ``conditional`` is left out (the variant's name says it), and so are the seed and
    the data."""
    from genmodels import get_family

    cls = get_family(family).config_class
    values = {**stored.get("config", {}), **stored.get("training", {})}
    try:
        mine = cls.from_dict(values).fingerprint_fields()
    except (TypeError, ValueError) as exc:
        return f"not valid today: {exc}"
    default = cls.from_dict({**_shipped(family), **{k: values[k] for k in ("seed", "data") if k in values}}
                            ).fingerprint_fields()
    changed = [f"{k}={v} (default {default.get(k)})" for k, v in mine.items()
               if k not in ("seed", "data", "conditional") and v != default.get(k)]
    return ", ".join(changed) or "default"


def project_rows(project: Path) -> list[dict[str, Any]]:
    """One ``default`` row per family trained, evaluated and gated in ``project``.

    Raises FileNotFoundError when the project has no trained family, ValueError when a family's files are
    missing or unreadable (the message names the file)."""
    rows = []
    trained = sorted(project.glob("models/*/*/train.json"))
    if not trained:
        raise FileNotFoundError(f"{project}: no models/<data>/<family>/train.json (not a genforge run project?)")
    for info_path in trained:
        model_dir = info_path.parent
        dataset, family = model_dir.parent.name, model_dir.name
        report = project / "reports" / dataset / family
        files = {"train": info_path, "config": model_dir / "config.json", "metrics": report / "metrics.json",
                 "promotion": report / "promotion.json"}
        loaded = {}
        for key, path in files.items():
            try:
                loaded[key] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: {exc}") from None
        promotion = loaded["promotion"]
        failed = [c["metric"] for c in promotion.get("checks", []) if c.get("status") == "failed"]
        verdict = {"decision": promotion["decision"], "failed": failed,
                   "on_checks": "rejected" if failed else "promoted"}
        row = _row("default", loaded["metrics"]["metrics"], verdict, 0.0)
        config = loaded["config"]["config"]
        row["settings"] = non_default(family, loaded["config"])
        row.update(family=_variant(family, config), seed=str(config.get("seed")),
                   epochs=str(loaded["train"].get("epochs")),
                   train_s=f"{loaded['train'].get('train_seconds', 0):.0f}", project=str(project))
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("projects", type=Path, nargs="+", metavar="PROJECT")
    ap.add_argument("--json", type=Path, help="write the rows here (gate_ladder.py --report reads them)")
    args = ap.parse_args()
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for project in args.projects:
        try:
            for row in project_rows(project):
                latest[(row["family"], row["seed"])] = row  # a later project's model replaces an earlier one's
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    rows = list(latest.values())
    for row in rows:  # the table is about defaults: say which rows are not
        if row["settings"] != "default":
            print(f"note: {row['project']}: {row['family']} seed {row['seed']} is not today's default: "
                  f"{row['settings']}", file=sys.stderr)
    from benchmarks._common import print_table

    seen = list(dict.fromkeys(r["family"] for r in rows))
    variants = [v for v in ALL_FAMILIES if v in seen] + [v for v in seen if v not in ALL_FAMILIES]
    print("family table: each family's default model as `genforge run` trained, evaluated and gated it, "
          "median (min-max) over the projects' seeds")
    print_table(family_table(rows, variants), COLUMNS)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
