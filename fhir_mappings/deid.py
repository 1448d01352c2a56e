"""De-identification: the only place real identities are seen, and what leaves instead.

HIPAA Safe Harbor: identities leave as keyed pseudonyms (HMAC-SHA256 with a secret key from
settings), ages as whole years with 90 standing for "90 or older", and times only relative to
the ICU start. The key is never logged; `repr` hides it.

Free text (a clinician's override comment) is kept only when a site opts in, and then only
through `scrub_free_text`: the identifiers the hook call knew (`identity_tokens`, kept as keyed
hashes, never as text) and identifier-shaped strings (dates, phone numbers, emails, MRN-like
tokens, titled names, URLs) are replaced by `[removed]`. docs/privacy.md says what it misses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any

__all__ = ["AGE_CAP", "REMOVED", "Pseudonymizer", "age_in_years", "identity_tokens", "scrub_free_text"]

AGE_CAP = 90
REMOVED = "[removed]"


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

    def token_hash(self, token: str) -> str:
        """A keyed hash of one word of an identity (case-folded), to recognise it later in free text."""
        digest = hmac.new(self._key, f"token\x1f{token.casefold()}".encode(), hashlib.sha256).hexdigest()
        return digest[:24]


def age_in_years(birth: date, at: date) -> int:
    """Completed years at `at`, capped at 90 (Safe Harbor: ages over 89 are aggregated)."""
    years = at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
    return max(0, min(years, AGE_CAP))


# Words of free text: FHIR ids keep their dots and dashes, emails their @.
_WORD = re.compile(r"[\w][\w.@+-]*[\w]|[\w]", re.UNICODE)
_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_SHAPES = [
    re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),  # email
    re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I),  # URL
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[T ][\d:.]+Z?)?\b"),  # ISO date (time)
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),  # 17/04/1951, 4.17.51
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}(?:\s+\d{{2,4}})?\b", re.I),  # 17 April 1951
    re.compile(rf"\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{2,4}})?\b", re.I),  # April 17, 1951
    re.compile(r"(?<![\w])\+?\(?\d[\d\s().-]{5,}\d\b"),  # phone, SSN, long numbers with separators
    re.compile(
        r"(?i)\b(?:mrn|mr|id|no|nr|number|acct|account|ssn|nhs|bed|room)\s*[:#.]?\s*[a-z]*\d[\w-]*"
    ),  # MRN 123
    re.compile(r"#\s*\d[\w-]*"),  # #123
    re.compile(r"\b(?=[a-z0-9-]*\d)(?=[a-z0-9-]*[a-z])[a-z0-9-]{5,}\b", re.I),  # MRN-like: letters and digits
    re.compile(r"\b\d{4,}\b"),  # a bare number of 4+ digits (years, record numbers)
    # A title and the capitalised words after it: Mrs Smith, Dr. Jane Doe.
    re.compile(r"\b(?:mr|mrs|ms|miss|mx|dr|prof|sr|sra|herr|frau)\.?\s+(?:[A-Z][\w'-]*\s*){1,3}", re.I),
]


def _identity_words(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield from (w for w in _WORD.findall(value) if len(w) > 1)
        if "/" in value:
            yield value.rsplit("/", 1)[-1]
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _identity_words(v)
    elif isinstance(value, list):
        for v in value:
            yield from _identity_words(v)


def identity_tokens(context: Mapping[str, Any], patient: Mapping[str, Any] | None) -> set[str]:
    """The words that identify this call's patient, encounter and user: the context's ids and
    the Patient's name, identifiers, telecom, address and birth date."""
    found: set[str] = set()
    for name in ("patientId", "encounterId", "userId"):
        found.update(_identity_words(context.get(name)))
    if isinstance(patient, Mapping):
        for field in ("id", "name", "identifier", "telecom", "address", "birthDate", "contact"):
            found.update(_identity_words(patient.get(field)))
    return {w for w in found if len(w) > 1 and w.casefold() not in _COMMON}


# Words of an identity that are not identifying by themselves (FHIR codes in those fields).
_COMMON = frozenset(
    {
        "official",
        "usual",
        "home",
        "work",
        "mobile",
        "phone",
        "email",
        "temp",
        "old",
        "patient",
        "practitioner",
        "encounter",
        "mr",
        "mrn",
    }
)


def scrub_free_text(text: str, is_known: Callable[[str], bool] = lambda word: False) -> str:
    """`text` with identifier-shaped strings and known identity words (`is_known(word)`) removed."""
    for shape in _SHAPES:
        text = shape.sub(REMOVED, text)

    def word(match: re.Match[str]) -> str:
        return REMOVED if is_known(match.group(0)) else match.group(0)

    text = _WORD.sub(word, text)
    return re.sub(rf"(?:{re.escape(REMOVED)}[\s,;.]*){{2,}}", REMOVED + " ", text).strip()
