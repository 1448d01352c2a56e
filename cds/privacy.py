"""Privacy rules applied outside the hook path: which records training may use, and whose they are."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_mappings import Pseudonymizer

__all__ = ["NO_REUSE", "labelled_no_reuse", "patient_pseudonyms", "training_use_refused"]

NO_REUSE_CODE = "NOREUSE"
# The security label on a RiskAssessment whose patient refused training use (HL7 v3 ActCode
# refrain policy: no reuse beyond the purpose of use it was collected for, decision support).
NO_REUSE = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "code": NO_REUSE_CODE,
    "display": "no reuse beyond purpose of use",
}


def labelled_no_reuse(risk_assessment: Mapping[str, Any]) -> dict[str, Any]:
    """The RiskAssessment with the NOREUSE security label added (its patient refused training use),
    whoever recorded it: a hook call or the census sweep."""
    meta = risk_assessment.get("meta", {})
    return {**risk_assessment, "meta": {**meta, "security": [*meta.get("security", ()), NO_REUSE]}}


def training_use_refused(risk_assessment: Mapping[str, Any]) -> bool:
    """A RiskAssessment labelled NOREUSE (its patient refused training use at scoring time)."""
    meta = risk_assessment.get("meta")
    labels = meta.get("security", ()) if isinstance(meta, Mapping) else ()
    return any(isinstance(label, Mapping) and label.get("code") == NO_REUSE_CODE for label in labels)


def patient_pseudonyms(pseudonymizer: Pseudonymizer, patient_id: str, sources: Iterable[str]) -> list[str]:
    """The pseudonyms a patient's records may carry: one per FHIR base (and none, for prefetch-only calls)."""
    return sorted({pseudonymizer.pseudonym("Patient", patient_id, source=s) for s in ("", *sources)})
