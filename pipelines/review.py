"""`genforge registry review <name> [<version>]`: one self-contained HTML page to decide a version from.

The challenger (the given version, else ``@challenger``) and the champion side by side: sample grids
generated now from the SAME seed with each version's ONNX graphs (serving.resolve + serving.generator,
torch-free), the gate's checks, the metrics with deltas (challenger minus champion) and the real-data floor,
data and training facts, and how to serve each. Everything is inline (images as base64 ``data:`` URIs, CSS in
a ``<style>``, no script, no link to fetch), so the page opens in a browser with no network.

When the version to review is the champion itself, it is compared with the champion it replaced (the
decision's ``champion_before``); with no champion at all it is shown alone, and the page says so.

The page is ``<out>/review.html`` (default ``review/<name>-v<version>/``); a ``review.html`` there that
genforge did not write (no ``GENERATOR`` marker) is never replaced.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import tempfile
from pathlib import Path
from typing import Any

from contracts.io import atomic_write_text
from pipelines import card, registry_state, tracking
from pipelines.errors import GenforgeError, UsageError

GENERATOR = '<meta name="generator" content="genforge registry review">'
PAGE = "review.html"


def default_out(name: str, version: str) -> Path:
    return Path("review") / f"{name}-v{version}"


def _project_gate(family: str | None) -> dict[str, Any] | None:
    """The gate params.yaml configures for ``family`` (for a pending version's preview), None when the
    project has no readable params.yaml or the family is unknown."""
    from pipelines.config import load_params, project_root
    from pipelines.registry import gate_settings

    if not family or not (project_root() / "params.yaml").exists():
        return None
    try:
        return gate_settings(load_params(project_root() / "params.yaml", []), family)
    except (GenforgeError, OSError, ValueError):
        return None


def _pick(c, name: str, version: str | None):
    """(the version to review, the current champion or None; a dangling champion alias's version or None)."""
    registry_state.require_model(c, name)
    registry_state.reconcile(c, name)
    if version is None:
        target = (c.get_registered_model(name).aliases or {}).get("challenger")
        if target is None:
            raise GenforgeError(f"{name} has no @challenger version; name one: `genforge registry review {name} VERSION` "
                                f"(versions: {', '.join(registry_state.versions(c, name)) or 'none'})")
        version = str(target)
    mv = registry_state.require_version(c, name, str(version))
    champion, dangling = registry_state.champion(c, name)
    return mv, champion, dangling


def _note(name: str, version: str, current: str | None, compared: str | None, dangling: str | None) -> str:
    """The sentence saying what is compared with what."""
    if compared is not None and compared == current:
        return f"challenger v{version} against the champion v{compared}"
    if compared is not None:
        why = "the champion it replaced" if current == version else "the champion when it was decided"
        return f"v{version}{' is the champion;' if current == version else ''} shown against v{compared}, {why}"
    if current == version:
        return f"v{version} is the champion and replaced no earlier one: shown alone"
    gone = f" (the alias points at v{dangling}, which was deleted)" if dangling else ""
    return f"{name} has no champion{gone}: v{version} is shown alone"


def _grid(c, name: str, version: str, n: int, seed: int, work: Path) -> dict[str, Any]:
    """Generate ``n`` samples of ``name``/``version`` from ``seed`` with ONNX Runtime on CPU; the preview as
    {"kind": "png", "data": base64} or {"kind": "text", "text": ...}, plus the sampler and sample count."""
    from pipelines import catalog
    from pipelines.config import project_root
    from serving.generator import generate
    from serving.resolve import fetch_onnx, resolve

    resolved = resolve(c, f"{name}/{version}")
    local = fetch_onnx(resolved, catalog.generator_cache(project_root()))
    out = work / f"v{version}"
    manifest = generate(local, n, seed, out, model_id=resolved.model_id, provider="cpu")
    preview = out / str(manifest.get("preview") or "")
    facts = {"sampler": manifest.get("sampler"), "n": manifest.get("n"), "seed": seed,
             "modality": manifest.get("modality")}
    if not manifest.get("preview") or not preview.is_file():
        return {**facts, "kind": "none"}
    if preview.suffix == ".png":
        return {**facts, "kind": "png", "data": base64.b64encode(preview.read_bytes()).decode("ascii")}
    return {**facts, "kind": "text", "text": preview.read_text(errors="replace")[:20000]}


def write_review(name: str, version: str | None = None, out: Path | None = None, n: int = 64,
                 seed: int = 0) -> dict[str, Any]:
    """Write ``review.html`` (see the module doc); returns {"page", "challenger", "champion", "note"}.
    Raises GenforgeError (one line) for an unknown model or version, no @challenger when no version is
    given, a ``review.html`` at ``out`` that genforge did not write, or a version that cannot be served."""
    from evaluation.suite import HEADLINE_OUTPUTS

    if version is not None and not str(version).isdigit():
        raise UsageError(f"VERSION must be a version number like 3, got {version!r}")
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    c = tracking.client()
    mv, champion, dangling = _pick(c, name, version)
    version = str(mv.version)
    current = str(champion.version) if champion is not None else None
    out = Path(out) if out is not None else default_out(name, version)
    page = out / PAGE
    _check_out(out, page)
    gate = None if mv.tags.get("promotion.decision") else _project_gate(mv.tags.get("family"))
    record = card.card_record(c, name, version, gate=gate, headline=HEADLINE_OUTPUTS,
                              against=current if current not in (None, version) else "auto")
    compared = (record.get("champion") or {}).get("version")
    note = _note(name, version, current, compared, dangling)
    with tempfile.TemporaryDirectory(prefix="genforge-review-") as tmp:
        grids = {version: _grid(c, name, version, n, seed, Path(tmp))}
        if compared is not None:
            grids[compared] = _grid(c, name, compared, n, seed, Path(tmp))
    text = render_review(record, grids, note, current)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as exc:  # a parent of --out is a file
        raise GenforgeError(f"{out}: cannot be made a folder ({exc.strerror}: a parent is a file); choose another "
                            f"--out") from exc
    atomic_write_text(page, text)
    return {"page": str(page), "version": version, "compared_with": compared, "note": note}


def _check_out(out: Path, page: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GenforgeError(f"{out}: exists and is not a folder; choose another --out")
    parent = next((p for p in out.parents if p.exists()), None)  # the nearest existing folder above it
    if parent is not None and not parent.is_dir():
        raise GenforgeError(f"{parent}: is a file, so --out {out} cannot be made a folder; choose another --out")
    if page.is_symlink() or page.exists() and (not page.is_file() or GENERATOR not in _head(page)):
        raise GenforgeError(f"{page}: exists and was not written by genforge; refusing to replace it "
                            f"(choose another --out)")


def _head(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return ""


# ---- the page (pure) ----------------------------------------------------------------------------
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1180px;color:#1b1f24;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.note{color:#57606a;margin:0 0 12px}.decision{font-size:17px;margin:12px 0 4px}
.pass{color:#1a7f37}.fail{color:#cf222e}.skip{color:#9a6700}.better{color:#1a7f37}.worse{color:#cf222e}
.grids{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:20px}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:10px;background:#f6f8fa}
figure img{width:100%;image-rendering:pixelated;background:#000;display:block}
figcaption{margin-top:6px;font-size:13px;color:#57606a}figure h3{margin:0 0 8px;font-size:16px}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:"DejaVu Sans Mono",monospace;font-size:13px}pre{background:#f6f8fa;padding:8px;overflow-x:auto}
footer{margin-top:32px;color:#57606a;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(card.fmt(value) if not isinstance(value, str) else value)


def _num(value: Any, cls: str = "") -> str:
    return f'<td class="num {cls}">{_e(value)}</td>'


def _figure(title: str, grid: dict[str, Any] | None) -> str:
    if grid is None:
        return ""
    caption = (f"{grid.get('n')} samples, seed {grid.get('seed')} (sample i from the same noise stream in both), "
               f"sampler {grid.get('sampler')}, ONNX Runtime CPU")
    if grid["kind"] == "png":
        body = f'<img alt="samples of {_e(title)}" src="data:image/png;base64,{grid["data"]}">'
    elif grid["kind"] == "text":
        body = f"<pre>{html.escape(grid['text'])}</pre>"
    else:
        body = "<p>(this modality writes no preview)</p>"
    return f"<figure><h3>{_e(title)}</h3>{body}<figcaption>{_e(caption)}</figcaption></figure>"


def render_review(record: dict[str, Any], grids: dict[str, dict[str, Any]], note: str,
                  current: str | None = None) -> str:
    """The review page's HTML from a card record (``card.card_record``), the generated grids by version,
    the comparison sentence and the current champion's version. Pure."""
    name, version = record["name"], str(record["version"])
    champion = record.get("champion")
    cv = str(champion["version"]) if champion else None
    tags, ctags = record.get("tags") or {}, (champion or {}).get("tags") or {}
    decision, pending = record.get("decision") or {}, record.get("pending")
    role = "champion" if cv is not None and cv == current else "earlier champion"
    title = f"{name}: v{version}" + (f" vs {role} v{cv}" if cv else " (no champion to compare)")
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', GENERATOR,
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>", f'<p class="note">{_e(note)}</p>']
    if pending:
        parts.append('<p class="decision"><b>Decision: pending</b>: the gate has not run on this version '
                     '(the checks below are a preview against the champion).</p>')
    else:
        word = str(decision.get("decision", "–"))
        cls = "fail" if word == "rejected" else "pass"
        parts.append(f'<p class="decision"><b>Decision on v{_e(version)}: <span class="{cls}">{_e(word)}</span></b>'
                     f"{' at ' + _e(decision['at']) if decision.get('at') else ''}</p>")
    reasons = decision.get("reasons") or []
    if reasons:
        parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")

    parts.append("<h2>Samples</h2>")
    if not cv:
        parts.append(f'<p class="note">{_e(note)}.</p>')
    parts.append('<div class="grids">' + _figure(f"v{version} (this version)", grids.get(version))
                 + (_figure(f"v{cv} ({role})", grids.get(cv)) if cv else "") + "</div>")

    parts.append("<h2>Gate checks</h2>")
    rows = card.check_rows(record)
    if rows:
        label = f"champion v{cv}" if cv else "champion's value"
        before = str(decision.get("champion_before") or "")
        if not pending and before and before != version and before != cv:
            label = f"champion at the decision (v{before})"
        if record.get("checks_from"):
            parts.append(f'<p class="note">From {_e(record["checks_from"])}.</p>')
        parts.append(f"<table><tr><th>check</th><th>observed</th><th>limit</th><th>{_e(label)}</th><th>status</th></tr>")
        for r in rows:
            cls = {"pass": "pass", "fail": "fail"}.get(r["status"], "skip")
            status = card._status_cell(r["status"], bool(pending)) + (f" ({r['note']})" if r["note"] else "")
            parts.append(f"<tr><td>{_e(r['check'])}</td>{_num(r['observed'])}{_num(r['limit'])}{_num(r['champion'])}"
                         f'<td class="{cls}">{_e(status)}</td></tr>')
        parts.append("</table>")
    else:
        parts.append("<p>The promotion gate has not run on this version.</p>")

    parts.append("<h2>Metrics</h2>")
    headline, rest = card.metric_rows(record)
    if headline or rest:
        head = f"<tr><th>metric</th><th>v{_e(version)}</th>" + (f"<th>{_e(role)} v{_e(cv)}</th><th>delta</th>" if cv else "") \
            + "<th>real-data floor</th></tr>"
        parts.append(f"<table>{head}")
        for r in headline + rest:
            delta = card.signed(r["delta"]) + (f" ({r['judgement']})" if r["judgement"] else "")
            cmp = (_num(r["champion"]) + _num(delta, r["judgement"] if r["judgement"] in ("better", "worse") else "")) if cv else ""
            parts.append(f"<tr><td>{_e(r['metric'])}</td>{_num(r['value'])}{cmp}{_num(r['floor'])}</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No metrics recorded.</p>")

    parts.append("<h2>Data and training</h2>")
    facts = [("data set", "dataset"), ("data sha256", "data_sha256"), ("validation", card.VALIDATION_TAG),
             ("family", "family"), ("sampler", "sampler"), ("git commit", "git_commit"), ("params hash", "params_hash")]
    head = f"<tr><th></th><th>v{_e(version)}</th>" + (f"<th>{_e(role)} v{_e(cv)}</th>" if cv else "") + "</tr>"
    parts.append(f"<table>{head}")
    for label, key in facts:
        parts.append(f"<tr><td>{_e(label)}</td><td><code>{_e(tags.get(key, '–'))}</code></td>"
                     + (f"<td><code>{_e(ctags.get(key, '–'))}</code></td>" if cv else "") + "</tr>")
    parts.append(f"<tr><td>MLflow run</td><td><code>{_e(record.get('run_id') or '–')}</code></td>"
                 + ("<td></td>" if cv else "") + "</tr></table>")

    parts.append("<h2>How to serve it</h2>")
    for v in [version] + ([cv] if cv else []):
        parts.append(f"<pre>genforge generate {_e(name)}/{_e(v)} -n 16 --seed 0 --out samples/{_e(name)}-v{_e(v)}\n"
                     f"python -c 'import mlflow; print(mlflow.pyfunc.load_model(\"models:/{_e(name)}/{_e(v)}\")"
                     f".predict({{\"n\": 16, \"seed\": 0}}))'</pre>")
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    parts.append(f"<footer>Written by <code>genforge registry review</code> at {_e(now)}; self-contained "
                 f"(no network, no scripts).</footer></body></html>")
    return "\n".join(parts) + "\n"
