"""Server-side state of launches and app sessions, in this process's memory only.

No cookie is needed (an EHR iframe often blocks third-party cookies): a launch is found by its
`state`, which is single-use (taken on the first redirect back; a second use is told apart from
a forged one); each authorization code is exchanged at most once; an app session is found by a
random handle in its URL path, which is ours, not an EHR token, and dies with the session. Access
and refresh tokens live only here: never in a store, a log, a URL or the browser.

Sessions and launches are per process: with `cds serve --workers N` the EHR's redirect must come
back to the worker that started the launch (sticky routing), or run the app on one worker.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .oauth import SmartConfiguration, TokenResponse

__all__ = ["Flow", "FlowStore", "Session", "SessionStore"]


@dataclass
class Flow:
    iss: str
    config: SmartConfiguration
    verifier: str
    nonce: str
    redirect_uri: str
    ehr_launch: bool
    card_hint: str | None  # our own `card` query parameter, a fallback when the EHR sends no context
    created: float = field(default_factory=time.monotonic)


@dataclass
class Session:
    iss: str
    config: SmartConfiguration
    token: TokenResponse
    patient: str
    encounter: str | None
    card_uuid: str
    user: str | None  # fhirUser, relative (`Practitioner/123`)
    created: float = field(default_factory=time.monotonic)
    decisions: dict[tuple[Any, ...], float] = field(default_factory=dict)  # same decision -> same timestamp
    recorded: str | None = None  # what the clinician last recorded, for the confirmation
    trend: Any = None  # computed once per session
    pictures: dict[str, bytes] = field(default_factory=dict)  # rendered SVGs, drawn once per session


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class _Bounded:
    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    def _prune(self, entries: OrderedDict[str, Any], now: float) -> None:
        while entries and (
            len(entries) > self.max_entries or now - self._created(next(iter(entries.values()))) > self.ttl_s
        ):
            entries.popitem(last=False)

    @staticmethod
    def _created(entry: Any) -> float:
        return float(entry.created if hasattr(entry, "created") else entry)


class FlowStore(_Bounded):
    """Pending launches by (a digest of) `state`; states and codes already used, for telling replays apart."""

    def __init__(self, ttl_s: float = 600.0, max_entries: int = 10_000) -> None:
        super().__init__(ttl_s, max_entries)
        self._flows: OrderedDict[str, Flow] = OrderedDict()
        self._used_states: OrderedDict[str, float] = OrderedDict()
        self._used_codes: OrderedDict[str, float] = OrderedDict()

    def start(self, flow: Flow) -> str:
        state = secrets.token_urlsafe(32)
        self._prune(self._flows, time.monotonic())
        self._flows[_digest(state)] = flow
        return state

    def take(self, state: str) -> tuple[Flow | None, str]:
        """(flow, "ok"), or (None, why): "replayed", "expired" or "unknown". Single use either way."""
        now = time.monotonic()
        key = _digest(state)
        if key in self._used_states:
            return None, "replayed"
        flow = self._flows.pop(key, None)
        if flow is None:
            return None, "unknown"
        self._prune(self._used_states, now)
        self._used_states[key] = now
        if now - flow.created > self.ttl_s:
            return None, "expired"
        return flow, "ok"

    def use_code(self, code: str) -> bool:
        """False when this code was presented before (it is then never sent to the EHR again)."""
        now = time.monotonic()
        key = _digest(code)
        if key in self._used_codes:
            return False
        self._prune(self._used_codes, now)
        self._used_codes[key] = now
        return True

    def __len__(self) -> int:
        return len(self._flows)


class SessionStore(_Bounded):
    def __init__(self, ttl_s: float = 3600.0, max_entries: int = 10_000) -> None:
        super().__init__(ttl_s, max_entries)
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def open(self, session: Session) -> str:
        handle = secrets.token_urlsafe(32)
        self._prune(self._sessions, time.monotonic())
        self._sessions[_digest(handle)] = session
        return handle

    def get(self, handle: str) -> Session | None:
        session = self._sessions.get(_digest(handle))
        if session is None or time.monotonic() - session.created > self.ttl_s:
            return None
        return session

    def __len__(self) -> int:
        return len(self._sessions)
