"""The promotion gate: configured hard checks, then the primary metric against the champion.

`params.yaml: registry.checks` is a list of `{metric: <metrics.json key>, min: x | max: x, required: bool}`.
Resolution, in order (each step replaces the entry of the same metric; new metrics add):

1. the global list: `registry.checks` when given, else `DEFAULT_CHECKS` (today's thresholds);
2. the legacy shorthands at `registry.*` (`max_fid_ratio`, `min_coverage`, `min_class_coverage`,
   `forbid_mode_collapse`, `min_conditional_accuracy`, `max_copy_rate`, `max_parity_error`) set the limit of their check
   (`forbid_mode_collapse: false` drops the mode_collapse check);
3. `registry.families.<family>.checks`, then that family's shorthands, the same way.

A shorthand and an explicit check for the same metric at the same level is a ConfigError (which one wins
would be a guess). The ONNX parity check is always present (limit `max_parity_error`, default 1e-4, the
export stage's tolerance), and "data validated" is always checked. A `required` check (the default) whose
metric is missing fails; `required: false` is skipped with the reason.
"""
from __future__ import annotations

import copy
import math
from typing import Any

from pipelines.errors import ConfigError

# metrics the registry itself records on a version (tags outside metric.*), valid in checks
REGISTRY_METRICS = ("parity_max_abs_error",)
DEFAULT_CHECKS: list[dict[str, Any]] = [
    # fid / real-vs-real floor on the domain classifier's features; calibrated on mnist5k with the known-bad
    # ladder (benchmarks/gate_ladder.py): bad rungs >= 386x or caught by other checks, default models <= 206x
    {"metric": "fid_ratio", "max": 300.0},
    {"metric": "coverage", "min": 0.03},         # PRDC coverage
    {"metric": "class_coverage", "min": 0.7},
    {"metric": "mode_collapse", "max": 0},
    # memorization: share of samples nearer a train image than 1% of test images are. Every image model's evaluate
    # reports it; required: false keeps versions registered before it existed promotable (skipped, with the reason)
    {"metric": "copy_rate", "max": 0.1, "required": False},
    {"metric": "conditional_accuracy", "min": 0.7, "required": False},  # only conditional models report it
    {"metric": "parity_max_abs_error", "max": 1e-4},
]
# legacy key -> (metric, op); forbid_mode_collapse is a flag
SHORTHANDS = {"max_fid_ratio": ("fid_ratio", "max"), "min_coverage": ("coverage", "min"),
              "min_class_coverage": ("class_coverage", "min"), "forbid_mode_collapse": ("mode_collapse", "max"),
              "min_conditional_accuracy": ("conditional_accuracy", "min"), "max_copy_rate": ("copy_rate", "max"),
              "max_parity_error": ("parity_max_abs_error", "max")}
DECISION_DEFAULTS = {"primary_metric": "fid_ratio", "direction": "minimize", "margin": 0.0}
CHECK_KEYS = ("metric", "min", "max", "required")
DIRECTIONS = ("minimize", "maximize")
APPROVAL_KEYS = ("approval", "approval_timeout")  # who decides after a passing gate: pipelines/approval.py
LEVEL_KEYS = ("checks", *SHORTHANDS, *DECISION_DEFAULTS, *APPROVAL_KEYS)


def known_metrics() -> list[str]:
    """Every key a check or the primary metric may name: the metric suite's outputs and the registry's."""
    from evaluation.suite import metric_outputs

    return [*metric_outputs(), *REGISTRY_METRICS]


def _suggest(word: str, known: Any) -> str:
    from evaluation.suite import closest

    return closest(word, known)


def _metric_name(value: Any, key: str) -> str:
    known = known_metrics()
    if not isinstance(value, str) or value not in known:
        raise ConfigError(key, f"unknown metric {value!r}{_suggest(str(value), known)}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(key, f"expected a number, got {value!r}")
    return float(value)


def parse_check(entry: Any, key: str) -> dict[str, Any]:
    """One check entry -> {"metric", "op": "min"|"max", "limit", "required"}. Raises ConfigError naming
    ``key`` for a non-mapping, an unknown field (with a closest match), an unknown metric, no or both of
    min/max, a non-number limit or a non-bool required."""
    if not isinstance(entry, dict):
        raise ConfigError(key, f"expected a mapping like {{metric: fid_ratio, max: 500}}, got {entry!r}")
    for field in entry:
        if field not in CHECK_KEYS:
            raise ConfigError(f"{key}.{field}", f"unknown field{_suggest(field, CHECK_KEYS)}; known: "
                                                f"{', '.join(CHECK_KEYS)}")
    if "metric" not in entry:
        raise ConfigError(key, "missing 'metric'")
    metric = _metric_name(entry["metric"], f"{key}.metric")
    ops = [op for op in ("min", "max") if op in entry]
    if len(ops) != 1:
        raise ConfigError(key, f"give exactly one of min or max for {metric!r}, got {ops or 'neither'}")
    required = entry.get("required", True)
    if not isinstance(required, bool):
        raise ConfigError(f"{key}.required", f"expected true or false, got {required!r}")
    return {"metric": metric, "op": ops[0], "limit": _number(entry[ops[0]], f"{key}.{ops[0]}"), "required": required}


def _apply_level(checks: dict[str, dict[str, Any]], level: dict[str, Any], where: str,
                 replace: bool) -> dict[str, dict[str, Any]]:
    """One level (the registry section or one family's): its checks list, then its shorthands."""
    for key in level:
        if key not in LEVEL_KEYS and not (where == "registry" and key == "families"):
            known = [*LEVEL_KEYS, *(("families",) if where == "registry" else ())]
            raise ConfigError(f"{where}.{key}", f"unknown key{_suggest(key, known)}; known: {', '.join(known)}")
    explicit: set[str] = set()
    if level.get("checks") is not None:
        entries = level["checks"]
        if not isinstance(entries, list):
            raise ConfigError(f"{where}.checks", f"expected a list of checks, got {entries!r}")
        if replace:
            checks = {}
        for i, entry in enumerate(entries):
            check = parse_check(entry, f"{where}.checks[{i}]")
            if check["metric"] in explicit:
                raise ConfigError(f"{where}.checks[{i}]", f"a second check for {check['metric']!r}")
            explicit.add(check["metric"])
            checks[check["metric"]] = check
    for short, (metric, op) in SHORTHANDS.items():
        if short not in level:
            continue
        if metric in explicit:
            raise ConfigError(f"{where}.{short}", f"conflicts with the {where}.checks entry for {metric!r}; "
                                                  f"keep one of them")
        value = level[short]
        if short == "forbid_mode_collapse":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{short}", f"expected true or false, got {value!r}")
            if not value:
                checks.pop(metric, None)
                continue
            value = 0
        old = checks.get(metric, {"required": metric != "conditional_accuracy"})
        checks[metric] = {"metric": metric, "op": op, "limit": _number(value, f"{where}.{short}"),
                          "required": old["required"]}
    return checks


def resolve_gate(registry: dict[str, Any], family: str | None = None) -> dict[str, Any]:
    """``params.yaml: registry`` (new or legacy form) -> the resolved gate for ``family``:
    {"checks": [{"metric", "min" | "max", "required"}], "primary_metric", "direction", "margin"}, the
    checks in the config form again, so resolving a resolved gate gives the same gate.
    Raises ConfigError for any typo (see the module docstring)."""
    registry = copy.deepcopy(registry or {})
    families = registry.get("families") or {}
    if not isinstance(families, dict):
        raise ConfigError("registry.families", f"expected a mapping of family -> overrides, got {families!r}")
    base = {c["metric"]: c for c in (parse_check(e, "registry.checks") for e in DEFAULT_CHECKS)}
    checks = _apply_level(base, registry, "registry", replace=True)
    decision = {k: registry.get(k, v) for k, v in DECISION_DEFAULTS.items()}
    source = {k: f"registry.{k}" for k in DECISION_DEFAULTS}  # the key each value came from, for errors
    if family is not None and families.get(family):
        level = families[family]
        if not isinstance(level, dict):
            raise ConfigError(f"registry.families.{family}", f"expected a mapping, got {level!r}")
        checks = _apply_level(checks, level, f"registry.families.{family}", replace=False)
        decision.update({k: level[k] for k in DECISION_DEFAULTS if k in level})
        source.update({k: f"registry.families.{family}.{k}" for k in DECISION_DEFAULTS if k in level})
    checks.setdefault("parity_max_abs_error", {"metric": "parity_max_abs_error", "op": "max", "limit": 1e-4,
                                               "required": True})
    if decision["direction"] not in DIRECTIONS:
        raise ConfigError(source["direction"], f"expected minimize or maximize, got {decision['direction']!r}"
                                                f"{_suggest(str(decision['direction']), DIRECTIONS)}")
    _metric_name(decision["primary_metric"], source["primary_metric"])
    margin = _number(decision["margin"], source["margin"])
    return {"checks": [{"metric": c["metric"], c["op"]: c["limit"], "required": c["required"]}
                       for c in checks.values()],
            "primary_metric": decision["primary_metric"], "direction": decision["direction"], "margin": margin}


def parity_limit(gate: dict[str, Any]) -> float:
    """The ONNX parity tolerance of a resolved gate (the export stage's atol)."""
    return next(float(c["max"]) for c in gate["checks"] if c["metric"] == "parity_max_abs_error")


def observed(tags: dict[str, str] | None, metric: str) -> float | None:
    """A version's value of ``metric`` from its tags (``metric.<key>``, or the registry's own tag), or None."""
    if tags is None:
        return None
    raw = tags.get(metric if metric in REGISTRY_METRICS else f"metric.{metric}")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _run_check(check: dict[str, Any], tags: dict[str, str], champion_tags: dict[str, str] | None) -> dict[str, Any]:
    metric, op, limit = check["metric"], check["op"], check["limit"]
    value = observed(tags, metric)
    sign = "<=" if op == "max" else ">="
    record = {"check": f"{metric} {sign} {limit:g}", "metric": metric, "op": op, "limit": limit,
              "observed": value, "champion": observed(champion_tags, metric), "required": check["required"]}
    if value is None:
        status = "failed" if check["required"] else "skipped"
        record["reason"] = f"{metric} missing" + (
            " (required: the version's metrics do not report it; evaluate it again, or make the check "
            "`required: false`)" if check["required"] else " (required: false)")
    else:
        ok = value <= limit if op == "max" else value >= limit  # NaN fails either way
        status = "passed" if ok else "failed"
    return {**record, "status": status, "passed": status == "passed"}


def improvement(value: float, champion: float, direction: str) -> float:
    """How much ``value`` beats ``champion`` on the primary metric (positive: better), given ``direction``
    (minimize | maximize). The gate promotes when this exceeds the margin."""
    return (1.0 if direction == "minimize" else -1.0) * (float(champion) - float(value))


def gate_decision(tags: dict[str, str], champion_tags: dict[str, str] | None, gate: dict[str, Any]) -> dict[str, Any]:
    """The pure decision: every configured check (recorded with its observed value, limit and the champion's
    value), data validated, then the primary metric against the champion by the margin. ``gate``: a
    resolved gate (``resolve_gate``) or a registry section in either form. Raises ConfigError on typos."""
    gate = resolve_gate(gate)
    checks = [_run_check(parse_check(c, "registry.checks"), tags, champion_tags) for c in gate["checks"]]
    valid = tags.get("validated")
    checks.append({"check": "data validated", "metric": "validated", "op": "equals", "limit": "true",
                   "observed": valid, "champion": (champion_tags or {}).get("validated"), "required": True,
                   "status": "passed" if valid == "true" else "failed", "passed": valid == "true"})
    primary = gate["primary_metric"]
    value = observed(tags, primary)
    hard_ok = all(c["status"] != "failed" for c in checks)
    reasons = [f"failed: {c['check']} ({c.get('reason') or 'observed %s, limit %s' % (c['observed'], c['limit'])})"
               for c in checks if c["status"] == "failed"]
    reasons += [f"skipped: {c['check']} ({c['reason']})" for c in checks if c["status"] == "skipped"]
    if value is None:
        hard_ok = False
        reasons.append(f"primary metric {primary!r} missing")
    beats = None
    if hard_ok:
        champ_value = observed(champion_tags, primary)
        if champion_tags is None or champ_value is None:
            beats = True
            reasons.append(f"no champion with {primary}: the first passing version becomes champion")
        else:
            gain = improvement(value, champ_value, gate["direction"])
            beats = gain > float(gate["margin"])
            reasons.append(f"{primary} {value:.4g} vs champion {champ_value:.4g}: improvement {gain:.4g} "
                           f"{'>' if beats else '<='} margin {gate['margin']}")
    promoted = bool(hard_ok and beats)
    return {"decision": "promoted" if promoted else "rejected", "promoted": promoted, "checks": checks,
            "primary_metric": primary, "direction": gate["direction"], "margin": float(gate["margin"]), "value": value,
            "champion_value": observed(champion_tags, primary), "reasons": reasons}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def failed_check_text(check: dict[str, Any]) -> str:
    """One failed check as `<metric> <observed> <op> <limit>`, the relation that does hold, e.g.
    `fid_ratio 812.3 > 500` for a `max: 500` check, `coverage 0.0007 < 0.03` for `min: 0.03`,
    `validated false != true`, `fid_ratio missing (required)`."""
    metric, observed_value, limit = check.get("metric"), check.get("observed"), check.get("limit")
    if observed_value is None:
        return f"{metric} missing (required)"
    op = {"max": ">", "min": "<"}.get(str(check.get("op")), "!=")
    return f"{metric} {_fmt(observed_value)} {op} {_fmt(limit)}"


def rejection_text(decision: dict[str, Any]) -> str:
    """Why a gate decision (``gate_decision``'s record, or promotion.json) rejected the version, in one line:
    every failed check (``failed_check_text``, joined by "; "), else the primary metric against the champion
    (`fid_ratio 97.1 vs champion 96.9: improvement -0.2 <= margin 0`). "" for a promoted version."""
    if decision.get("decision") != "rejected":
        return ""
    if decision.get("approval"):  # a reviewer's reject (pipelines.approval): their line, with the reason
        return "; ".join(decision.get("reasons") or []) or "rejected by a reviewer"
    failed = [failed_check_text(c) for c in decision.get("checks") or [] if c.get("status") == "failed"]
    if failed:
        return "; ".join(failed)
    primary, value, champion = decision.get("primary_metric"), decision.get("value"), decision.get("champion_value")
    if value is None:
        return f"{primary} missing (required)"
    if champion is None:
        return "; ".join(decision.get("reasons") or []) or "rejected"
    margin = float(decision.get("margin", (decision.get("gate") or {}).get("margin", 0.0)))
    gain = improvement(value, champion, decision.get("direction", "minimize"))
    return (f"{primary} {_fmt(float(value))} vs champion {_fmt(float(champion))}: improvement "
            f"{_fmt(gain)} <= margin {margin:g}")
