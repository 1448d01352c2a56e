"""The pure privacy rules: the free-text scrubber and the Consent decision."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_mappings import Pseudonymizer, identity_tokens, scrub_free_text
from fhir_mappings.deid import REMOVED
from hooks import ConsentDecision, consent_decision

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
LOCAL = "http://cds-ml.org/fhir/CodeSystem/consent-purpose"
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        ("spoke with Mrs Smith, MRN 123 about it", ["Smith", "123"], ["spoke with", "about it"]),
        (
            "seen 2026-11-20 and 17 April 1951, again on 4/17/51",
            ["2026-11-20", "17 April 1951", "4/17/51"],
            ["seen", "again on"],
        ),
        (
            "call +1 (555) 013-4477 or 555-0199, mail a.b@example.org",
            ["013-4477", "555-0199", "a.b@example.org"],
            ["call", "mail"],
        ),
        ("acct A12345B and 987-65-4329 noted", ["A12345B", "987-65-4329"], ["noted"]),
        ("see https://portal.example.org/p/77 now", ["portal.example.org"], ["see", "now"]),
        ("lactate 3.4 from a tourniquet draw at 09:00", [], ["lactate 3.4 from a tourniquet draw at 09:00"]),
    ],
)
def test_identifier_shaped_strings_are_removed(text: str, gone: list[str], kept: list[str]) -> None:
    scrubbed = scrub_free_text(text)
    assert all(g not in scrubbed for g in gone), scrubbed
    assert all(k in scrubbed for k in kept), scrubbed


def test_the_identities_the_call_knew_are_removed_by_keyed_hash() -> None:
    pseudo = Pseudonymizer(b"k" * 16)
    patient = {
        "name": [{"family": "Quackenbush", "given": ["Zebulon"]}],
        "identifier": [{"value": "X99"}],
        "address": [{"city": "Springfieldia"}],
    }
    tokens = identity_tokens({"patientId": "pid-7", "userId": "Practitioner/doc-4"}, patient)
    known = {pseudo.token_hash(t) for t in tokens}
    scrubbed = scrub_free_text(
        "zebulon QUACKENBUSH from Springfieldia (pid-7) told doc-4 he feels better",
        lambda w: pseudo.token_hash(w) in known,
    )
    for word in ("zebulon", "QUACKENBUSH", "Springfieldia", "pid-7", "doc-4"):
        assert word not in scrubbed
    assert "feels better" in scrubbed and REMOVED in scrubbed
    assert all(len(h) == 24 and t not in h for h, t in zip(sorted(known), sorted(tokens), strict=True))


def _consent(provision: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "patient": {"reference": "Patient/p1"},
        "provision": provision,
        **extra,
    }


@pytest.mark.parametrize(
    ("resources", "support", "training"),
    [
        ([], True, True),
        ([_consent({"type": "deny", "purpose": [{"system": ACT, "code": "TREAT"}]})], False, True),
        (
            [_consent({"type": "deny", "purpose": [{"system": LOCAL, "code": "decision-support"}]})],
            False,
            True,
        ),
        ([_consent({"type": "deny", "purpose": [{"system": ACT, "code": "HRESCH"}]})], True, False),
        ([_consent({"type": "deny", "purpose": [{"system": LOCAL, "code": "model-training"}]})], True, False),
        ([_consent({"type": "deny"})], False, False),
        ([_consent({"type": "deny"}, scope={"coding": [{"code": "research"}]})], True, False),
        (
            [
                _consent(
                    {
                        "type": "deny",
                        "provision": [{"type": "permit", "purpose": [{"system": ACT, "code": "TREAT"}]}],
                    }
                )
            ],
            True,
            False,
        ),
        (
            [
                _consent(
                    {
                        "type": "permit",
                        "provision": [{"type": "deny", "purpose": [{"system": ACT, "code": "SYSDEV"}]}],
                    }
                )
            ],
            True,
            False,
        ),
        ([_consent({"type": "deny"}, status="inactive")], True, True),
        ([_consent({"type": "deny"}, patient={"reference": "Patient/p2"})], True, True),
        ([_consent({"type": "deny", "period": {"end": "2026-01-01T00:00:00Z"}})], True, True),
        ([_consent({"type": "deny", "period": {"start": "2027-01-01T00:00:00Z"}})], True, True),
        ([_consent({"type": "permit"}), {"resourceType": "OperationOutcome"}], True, True),
    ],
)
def test_consent_decision(resources: list[dict[str, Any]], support: bool, training: bool) -> None:
    decision = consent_decision(resources, "p1", NOW)
    assert (decision.decision_support, decision.training) == (support, training)
    assert decision.code == (
        None if support and training else "decision-support-refused" if not support else "training-refused"
    )
    assert ConsentDecision().code is None
