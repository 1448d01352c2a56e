"""The model card in brief, from the registry's files (manifest, report/metrics.json, model_card.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from models import ALERT, BELOW, INTERRUPT, RiskModel

__all__ = ["band_rows", "model_brief", "model_card_text"]

_SECTION = re.compile(r"^## (.+)$", re.MULTILINE)


def _sections(text: str) -> dict[str, str]:
    parts = _SECTION.split(text)
    return {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def model_card_text(model_dir: Path, name: str, version: str) -> str | None:
    for path in (
        model_dir / name / version / "report" / "model_card.md",
        model_dir / name / version / "model_card.md",
    ):
        if path.is_file():
            return path.read_text()
    return None


_LEVEL_WORDS = {
    BELOW: "information only (below the alert threshold)",
    ALERT: "alert (warning card)",
    INTERRUPT: "interrupts (critical card)",
}


def band_rows(model: RiskModel) -> list[dict[str, str]]:
    """Each band the model serves with: its range, what it asks of the clinician, PPV, sensitivity."""
    bands = model.bands.bands
    rows = []
    for i, b in enumerate(bands):
        upper = f"{100 * bands[i + 1].lower:.1f} %" if i + 1 < len(bands) else "100 %"
        rows.append(
            {
                "band": b.name,
                "range": f"{100 * b.lower:.1f} % to {upper}",
                "level": _LEVEL_WORDS[b.level],
                "ppv": "not measured" if b.ppv is None else f"{100 * b.ppv:.1f} %",
                "sensitivity": "not measured" if b.sensitivity is None else f"{100 * b.sensitivity:.0f} %",
            }
        )
    return rows


def model_brief(model: RiskModel, model_dir: Path) -> dict[str, Any]:
    manifest = model.manifest
    report_path = model_dir / manifest.name / manifest.version / "report" / "metrics.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
    test = report or manifest.metrics.get("test", {})
    facts: list[tuple[str, str]] = [
        ("Model", f"{manifest.title}, version {manifest.version}"),
        ("Predicts", manifest.outcome),
        ("Alert threshold", f"{100 * manifest.threshold:.1f} %"),
    ]
    data = Path(str(manifest.training_data.get("path", "the training data"))).name
    if test.get("patients"):
        facts.append(
            (
                "Validated on",
                f"{data}: {test['patients']} held-out patients, {test.get('rows', '?')} hourly rows"
                if "septic_patients" in test
                else f"{data}: {test['patients']} held-out patients",
            )
        )
    patient = report.get("patient_level", {})
    if "sensitivity" in patient:
        facts.append(
            (
                "At the threshold (per patient)",
                f"sensitivity {patient['sensitivity']:.2f}, PPV {patient['ppv']:.2f}",
            )
        )
    elif "sensitivity" in test:
        facts.append(
            (
                "At the threshold",
                f"sensitivity {test['sensitivity']:.2f}, PPV {test.get('ppv', float('nan')):.2f}",
            )
        )
    point = test.get("operating_point", {})
    if "sensitivity" in point and not any(k == "At the threshold" for k, _ in facts):
        facts.append(("At the threshold", f"sensitivity {point['sensitivity']:.2f}, PPV {point['ppv']:.2f}"))
    auroc = test.get("auroc")
    if isinstance(auroc, dict):  # the readmission report gives an estimate with its 95 % interval
        facts.append(
            (
                "AUROC (held-out)",
                f"{auroc['estimate']:.3f} (95 % CI {auroc['ci95_low']:.3f}-{auroc['ci95_high']:.3f})",
            )
        )
    elif auroc is not None:
        facts.append(("AUROC (held-out)", f"{auroc:.3f}"))
    if "alert_burden" in report:
        facts.append(
            ("Alerts per 100 patient-days", f"{report['alert_burden']['alerts_per_100_patient_days']:.0f}")
        )
    text = model_card_text(model_dir, manifest.name, manifest.version) or ""
    sections = _sections(text)
    if "Intended use" in sections:
        facts.append(("Intended use", sections["Intended use"].split("\n\n")[0]))
    limits = [s.strip() for s in re.split(r"(?<=\.) ", sections.get("Limitations", "")) if s.strip()][:4]
    icu = report.get("subgroups", {}).get("icu_type", {}).get("groups", {})
    if "SICU" in icu and "MICU" in icu:
        limits.insert(
            0,
            f"Lower sensitivity in surgical ICUs: {icu['SICU']['sensitivity']:.2f} against "
            f"{icu['MICU']['sensitivity']:.2f} in medical ICUs (hour level).",
        )
    return {
        "facts": facts,
        "bands": band_rows(model),
        "bands_measured_on": model.bands.measured_on,
        "limits": limits,
        "card_url": f"/smart/model-card/{manifest.name}/{manifest.version}",
    }
