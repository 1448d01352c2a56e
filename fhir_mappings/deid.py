"""De-identification: the only place real identities are seen, and what leaves instead.

HIPAA Safe Harbor: identities leave as keyed pseudonyms (HMAC-SHA256 with a secret key from
settings), ages as whole years with 90 standing for "90 or older", and times only relative to
the ICU start. The key is never logged; `repr` hides it.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date

__all__ = ["AGE_CAP", "Pseudonymizer", "age_in_years"]

AGE_CAP = 90


class Pseudonymizer:
    """Keyed, stable pseudonyms: the same (kind, source, id) always gives the same token."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<hidden>)"

    def pseudonym(self, kind: str, identifier: str, *, source: str = "") -> str:
        """`kind` is the resource type; `source` the FHIR base, so two EHRs' ids never collide."""
        message = f"{kind}\x1f{source.rstrip('/')}\x1f{identifier}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()
        return f"{kind[:2].lower()}-{digest[:32]}"


def age_in_years(birth: date, at: date) -> int:
    """Completed years at `at`, capped at 90 (Safe Harbor: ages over 89 are aggregated)."""
    years = at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
    return max(0, min(years, AGE_CAP))
