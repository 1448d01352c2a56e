"""`cds drift report`: the drift summary (cds/drift.py) as one self-contained HTML page: what
changed, since when, which features, which EHR. Plots are matplotlib SVG written into the page;
no script, no stylesheet or font from elsewhere, so it opens the same offline and in a mail."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from models import DriftReference, ModelNotFound, ModelRegistry

from .drift import open_drift_backend, summarize
from .settings import Settings

__all__ = ["build_report", "render_html"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


async def build_report(settings: Settings, *, since: datetime) -> dict[str, Any]:
    """The summary from the shared drift store, against the registry's references."""
    backend = open_drift_backend(settings)
    try:
        rows = await backend.read(since.timestamp())
    finally:
        await backend.close()
    registry = ModelRegistry(settings.model_dir)
    references: dict[tuple[str, str], DriftReference] = {}
    for model, version, _, _ in rows:
        if (model, version) not in references:
            try:
                reference = registry.manifest(model, version).reference
            except ModelNotFound:
                continue
            if reference is not None:
                references[(model, version)] = reference
    return summarize(rows, references, settings.drift_thresholds(), since=since.timestamp())


# --- plots -----------------------------------------------------------------------------------


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "cds-drift", "font.size": 9})  # stable ids in the SVG
    return plt.subplots(figsize=(width, height))


def _timeline_plot(entry: Mapping[str, Any], key: str, title: str, threshold: float | None) -> str:
    timeline = entry["timeline"]
    times = [datetime.fromisoformat(t) for t in timeline["starts"]]
    fig, ax = _figure(7.5, 2.4)
    for i, (issuer, series) in enumerate(sorted(timeline["issuers"].items())):
        values = [float("nan") if v is None else v for v in series[key]]
        ax.plot(times, values, marker="o", markersize=3, color=PALETTE[i % len(PALETTE)], label=issuer)
    if threshold is not None:
        ax.axhline(threshold, color="#999", linestyle="--", linewidth=1, label=f"warning ({threshold:g})")
    width = times[1] - times[0] if len(times) > 1 else None
    if width is not None:
        ax.set_xlim(times[0], times[-1] + width)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _svg(fig)


def _top_features_plot(entry: Mapping[str, Any], threshold: float, k: int = 12) -> str:
    issuers = sorted(entry["issuers"].items())
    top: list[str] = []
    for _, judged in issuers:
        for f in judged["features"][:k]:
            if f["feature"] not in top:
                top.append(f["feature"])
    by_issuer = {issuer: {f["feature"]: f["psi"] for f in judged["features"]} for issuer, judged in issuers}
    top = sorted(top, key=lambda name: -max(v.get(name, 0.0) for v in by_issuer.values()))[:k]
    fig, ax = _figure(7.5, 0.35 * len(top) + 1.0)
    height = 0.8 / max(1, len(issuers))
    for i, (issuer, values) in enumerate(by_issuer.items()):
        ax.barh(
            [j + i * height for j in range(len(top))],
            [values.get(name, 0.0) for name in top],
            height=height,
            color=PALETTE[i % len(PALETTE)],
            label=issuer,
        )
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(top))], top)
    ax.invert_yaxis()
    ax.axvline(threshold, color="#999", linestyle="--", linewidth=1)
    ax.set_xlabel("PSI against the training reference")
    ax.set_title("Features that moved most, by EHR")
    ax.legend(fontsize=7)
    return _svg(fig)


def _bins_plot(
    name: str, edges: Sequence[float], reference: Sequence[float], live: Mapping[str, Sequence[float]]
) -> str:
    labels = [f"≤{edges[0]:g}"] if edges else ["all"]
    labels += [f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:], strict=False)]
    if edges:
        labels.append(f">{edges[-1]:g}")
    if len(reference) > len(labels):
        labels.append("missing")
    fig, ax = _figure(7.5, 2.4)
    series = [("training reference", reference), *sorted(live.items())]
    width = 0.8 / len(series)
    for i, (label, shares) in enumerate(series):
        if not shares:
            continue
        color = "#bbb" if i == 0 else PALETTE[(i - 1) % len(PALETTE)]
        ax.bar([j + i * width for j in range(len(labels))], shares, width=width, color=color, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30, fontsize=7)
    ax.set_ylabel("share of calls")
    ax.set_title(name)
    ax.legend(fontsize=7)
    return _svg(fig)


# --- the page --------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:8px 12px;margin:8px 0}
.ok{background:#e8f5e9;border-left:4px solid #43a047;padding:8px 12px;margin:8px 0}
.bad{color:#b71c1c;font-weight:600}.muted{color:#777;font-size:12px}svg{max-width:100%;height:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def render_html(report: Mapping[str, Any]) -> str:
    t = report["thresholds"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>CDS drift report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Drift and data quality of live CDS Hooks traffic</h1>",
        f"<p class='muted'>From {_e(report['since'][:19])} to {_e(report['until'][:19])} UTC. "
        f"Warning at PSI ≥ {t['psi']:g}, a missing share moved by ≥ {_pct(t['missing'])}, "
        f"≥ {_pct(t['unmapped'])} of Observations unmapped; judged from {t['min_calls']} scored calls.</p>",
    ]
    if report["warnings"]:
        items = "".join(
            f"<li><b>{_e(w['model'])} v{_e(w['version'])}</b> · {_e(w['issuer'])}: {_e(w['what'])}</li>"
            for w in report["warnings"][:40]
        )
        parts.append(f"<div class='warn'><b>{len(report['warnings'])} warnings</b><ul>{items}</ul></div>")
    else:
        parts.append("<div class='ok'>No drift or data-quality warning in this window.</div>")
    if not report["models"]:
        parts.append("<p>No scored traffic in this window.</p>")
    for entry in report["models"]:
        parts.append(_model_section(entry, t))
    parts.append("</body></html>")
    return "\n".join(parts)


def _group_table(heading: str, groups: list[tuple[str, Mapping[str, Any]]]) -> list[str]:
    out = [
        f"<table><tr><th>{_e(heading)}</th><th>calls</th><th>scored</th><th>score PSI</th>"
        "<th>largest feature PSI</th>"
        "<th>features over threshold</th><th>largest missing-share change</th><th>Observations unmapped</th>"
        "<th>state</th></tr>",
    ]
    for name, j in groups:
        state = "warning" if j["warning"] else ("ok" if j["judged"] else "too few calls")
        cls = " class='bad'" if j["warning"] else ""
        out.append(
            f"<tr><td>{_e(name)}</td><td>{j['calls']}</td><td>{j['scored']}</td><td>{j['score']['psi']:.3f}</td>"
            f"<td>{j['max_feature_psi']:.3f}</td><td>{j['features_over_threshold']}</td>"
            f"<td>{_pct(j['max_missing_delta'])}</td><td>{_pct(j['quality']['unmapped_share'])}</td>"
            f"<td{cls}>{state}</td></tr>"
        )
    out.append("</table>")
    return out


def _model_section(entry: Mapping[str, Any], t: Mapping[str, Any]) -> str:
    issuers = sorted(entry["issuers"].items())
    out = [
        f"<h2>{_e(entry['model'])} v{_e(entry['version'])}</h2>",
        f"<p class='muted'>Reference: {_e(entry['reference']['source'])}, "
        f"{entry['reference']['rows']:,} rows.</p>",
        *_group_table("EHR issuer", issuers),
    ]
    units = sorted(entry.get("icu_units", {}).items())
    if units and [u for u, _ in units] != ["unknown"]:
        out.append("<h3>By ICU unit (all issuers)</h3>")
        out += _group_table("ICU unit", units)
    if "timeline" in entry:
        out.append("<h3>Since when</h3>")
        out.append(_timeline_plot(entry, "max_feature_psi", "Largest feature PSI per time slot", t["psi"]))
        out.append(_timeline_plot(entry, "score_psi", "Score PSI per time slot", t["psi"]))
        out.append(_timeline_plot(entry, "unmapped_share", "Share of Observations unmapped", t["unmapped"]))
    out.append("<h3>Which features</h3>")
    out.append(_top_features_plot(entry, t["psi"]))
    shown: list[str] = []
    for _, j in issuers:
        for f in j["features"][:3]:
            if f["psi"] >= t["psi"] and f["feature"] not in shown:
                shown.append(f["feature"])
    for name in shown[:4]:
        per_issuer = {issuer: next(f for f in j["features"] if f["feature"] == name) for issuer, j in issuers}
        first = next(iter(per_issuer.values()))
        out.append(
            _bins_plot(
                f"{name}: share of calls per training decile",
                first["edges"],
                first["reference"],
                {issuer: f["live"] for issuer, f in per_issuer.items()},
            )
        )
    score_live = {issuer: j["score"]["live"] for issuer, j in issuers}
    first_judged = issuers[0][1] if issuers else None
    if first_judged is not None:
        out.append(
            _bins_plot(
                "Score distribution per training decile",
                first_judged["score"]["edges"],
                first_judged["score"]["reference"],
                score_live,
            )
        )
    out.append("<h3>Missing values</h3><table><tr><th>feature</th><th>training</th>")
    out.extend(f"<th>{_e(issuer)}</th>" for issuer, _ in issuers)
    out.append("</tr>")
    moved = set()
    for _, j in issuers:
        for f in j["features"]:
            if abs(f["missing_live"] - f["missing_reference"]) >= t["missing"] / 2:
                moved.add(f["feature"])
    by_name = {issuer: {f["feature"]: f for f in j["features"]} for issuer, j in issuers}
    for name in sorted(moved)[:30]:
        ref = next(iter(by_name.values()))[name]["missing_reference"]
        cells = "".join(f"<td>{_pct(by_name[issuer][name]['missing_live'])}</td>" for issuer, _ in issuers)
        out.append(f"<tr><td>{_e(name)}</td><td>{_pct(ref)}</td>{cells}</tr>")
    if not moved:
        out.append(
            f"<tr><td colspan='{2 + len(issuers)}'>no missing share moved by "
            f"{_pct(t['missing'] / 2)} or more</td></tr>"
        )
    out.append("</table>")
    out.append("<h3>Data quality: Observations not mapped, per EHR and per unit</h3>")
    out.append(
        "<table><tr><th>EHR issuer</th><th>Observations</th><th>code unmapped</th>"
        "<th>unit not convertible</th>"
        "<th>implausible value</th><th>top variable|unit</th><th>top codes</th></tr>"
    )
    for issuer, j in issuers:
        q = j["quality"]
        units = ", ".join(f"{_e(u['key'])} ({u['count']})" for u in q["by_unit"][:4]) or "–"
        codes = ", ".join(f"{_e(c['key'])} ({c['count']})" for c in q["by_code"][:3]) or "–"
        out.append(
            f"<tr><td>{_e(issuer)}</td><td>{q['observations']:,}</td><td>{_pct(q['unmapped_code_share'])}</td>"
            f"<td>{_pct(q['unit_error_share'])}</td><td>{_pct(q['implausible_share'])}</td>"
            f"<td style='text-align:left'>{units}</td><td style='text-align:left'>{codes}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)
