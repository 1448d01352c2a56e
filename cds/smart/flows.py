"""Server-side state of launches and app sessions, shared by every worker: in Redis when
`CDS_REDIS_URL` is set, otherwise in an embedded SQLite file under `CDS_VAR_DIR` (shared by the
workers of one machine). The EHR's redirect back and the app's later requests may reach any
worker.

No cookie is needed (an EHR iframe often blocks third-party cookies): a launch is found by its
`state`, which is single-use (taken on the first redirect back; a second use is told apart from
a forged one); each authorization code is exchanged at most once; an app session is found by a
random handle in its URL path, which is ours, not an EHR token, and dies with the session.

Access and refresh tokens never reach a store readable: each launch and session is kept sealed
(AES-GCM) under a key derived from its own `state` or handle, which only the browser holding it
knows, and filed under a digest of it. So Redis or the file holds ciphertext and digests only;
nothing in a store, a log, a URL or the browser's JavaScript can be turned back into a token.
A worker keeps the sessions it has opened as objects while the shared record has not changed
(the pictures and trend it drew stay with that worker).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..degraded import redis_client
from ..errors import StoreError
from .oauth import SmartConfiguration, TokenResponse

__all__ = ["Flow", "FlowStore", "RedisKV", "Session", "SessionStore", "SharedKV", "SqliteKV", "shared_kv"]

_GRACE_S = 600.0  # a launch is kept this long past its TTL, so "expired" is told apart from "unknown"
_LOCAL_SESSIONS = 2_000  # sessions one worker keeps as objects


@dataclass
class Flow:
    iss: str
    config: SmartConfiguration
    verifier: str
    nonce: str
    redirect_uri: str
    ehr_launch: bool
    card_hint: str | None  # our own `card` query parameter, a fallback when the EHR sends no context
    created: float = field(default_factory=time.time)


@dataclass
class Session:
    iss: str
    config: SmartConfiguration
    token: TokenResponse
    patient: str
    encounter: str | None
    card_uuid: str
    user: str | None  # fhirUser, relative (`Practitioner/123`)
    created: float = field(default_factory=time.time)
    decisions: dict[tuple[Any, ...], float] = field(default_factory=dict)  # same decision -> same timestamp
    recorded: str | None = None  # what the clinician last recorded, for the confirmation
    # This worker's own, never shared or stored:
    trend: Any = field(default=None, compare=False)  # computed once per session
    pictures: dict[str, bytes] = field(default_factory=dict, compare=False)  # SVGs, drawn once
    handle: str = field(default="", repr=False, compare=False)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _seal(secret: str, payload: dict[str, Any]) -> bytes:
    key = hashlib.sha256(b"cds-smart-seal\x1f" + secret.encode()).digest()
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, json.dumps(payload, separators=(",", ":")).encode(), None)


def _unseal(secret: str, blob: bytes) -> dict[str, Any]:
    key = hashlib.sha256(b"cds-smart-seal\x1f" + secret.encode()).digest()
    value: dict[str, Any] = json.loads(AESGCM(key).decrypt(blob[:12], blob[12:], None))
    return value


def _config_dict(c: SmartConfiguration) -> dict[str, Any]:
    return {
        "issuer": c.issuer,
        "authorization_endpoint": c.authorization_endpoint,
        "token_endpoint": c.token_endpoint,
        "jwks_uri": c.jwks_uri,
        "capabilities": sorted(c.capabilities),
        "scopes_supported": sorted(c.scopes_supported),
        "fetched": c.fetched,
    }


def _config(d: dict[str, Any]) -> SmartConfiguration:
    return SmartConfiguration(
        **{
            **d,
            "capabilities": frozenset(d["capabilities"]),
            "scopes_supported": frozenset(d["scopes_supported"]),
        }
    )


class SharedKV(Protocol):
    """Bytes by key with a time to live, shared by the workers."""

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def take(self, key: str) -> bytes | None: ...  # get and delete, atomically
    async def add(self, key: str, value: bytes, ttl_s: float) -> bool: ...  # only if absent
    async def close(self) -> None: ...


class SqliteKV:
    """The embedded store: one SQLite file (WAL) for the workers of one machine."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS smart_kv "
                "(key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL)"
            )
        os.chmod(path, 0o600)

    def _run(self, fn: Any) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                result = fn(self._db, time.time())
                self._db.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"SMART session store failed ({type(exc).__name__})") from exc

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        def do(db: sqlite3.Connection, now: float) -> None:
            db.execute("DELETE FROM smart_kv WHERE expires < ?", (now,))
            db.execute("INSERT OR REPLACE INTO smart_kv VALUES (?, ?, ?)", (key, value, now + ttl_s))

        await asyncio.to_thread(self._run, do)

    async def get(self, key: str) -> bytes | None:
        def do(db: sqlite3.Connection, now: float) -> bytes | None:
            row = db.execute(
                "SELECT value FROM smart_kv WHERE key = ? AND expires >= ?", (key, now)
            ).fetchone()
            return None if row is None else bytes(row[0])

        result: bytes | None = await asyncio.to_thread(self._run, do)
        return result

    async def take(self, key: str) -> bytes | None:
        def do(db: sqlite3.Connection, now: float) -> bytes | None:
            row = db.execute("SELECT value, expires FROM smart_kv WHERE key = ?", (key,)).fetchone()
            db.execute("DELETE FROM smart_kv WHERE key = ?", (key,))
            return None if row is None or row[1] < now else bytes(row[0])

        result: bytes | None = await asyncio.to_thread(self._run, do)
        return result

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        def do(db: sqlite3.Connection, now: float) -> bool:
            db.execute("DELETE FROM smart_kv WHERE key = ? AND expires < ?", (key, now))
            done = db.execute("INSERT OR IGNORE INTO smart_kv VALUES (?, ?, ?)", (key, value, now + ttl_s))
            return done.rowcount == 1

        result: bool = await asyncio.to_thread(self._run, do)
        return result

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisKV:
    def __init__(self, url: str, *, prefix: str, timeout_s: float) -> None:
        self.prefix = prefix + "smart:"
        self._redis = redis_client(url, timeout_s=timeout_s)

    async def _do(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import redis.exceptions

        try:
            return await getattr(self._redis, name)(*args, **kwargs)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"SMART session store failed ({type(exc).__name__})") from exc

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._do("set", self.prefix + key, value, px=max(1, int(1000 * ttl_s)))

    async def get(self, key: str) -> bytes | None:
        value = await self._do("get", self.prefix + key)
        return None if value is None else bytes(value)

    async def take(self, key: str) -> bytes | None:
        value = await self._do("getdel", self.prefix + key)
        return None if value is None else bytes(value)

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        return bool(await self._do("set", self.prefix + key, value, nx=True, px=max(1, int(1000 * ttl_s))))

    async def close(self) -> None:
        await self._redis.aclose()


def shared_kv(
    redis_url: str | None, var_dir: Path, *, prefix: str = "cds:", timeout_s: float = 0.25
) -> SharedKV:
    """Redis when configured, the embedded SQLite file otherwise."""
    if redis_url:
        return RedisKV(redis_url, prefix=prefix, timeout_s=timeout_s)
    return SqliteKV(var_dir / "smart-sessions.sqlite3")


class FlowStore:
    """Pending launches by (a digest of) `state`; states and codes already used, for telling replays apart."""

    def __init__(self, kv: SharedKV, ttl_s: float = 600.0) -> None:
        self.kv = kv
        self.ttl_s = ttl_s
        self._pending: OrderedDict[str, float] = OrderedDict()  # launches this worker started, not taken

    async def start(self, flow: Flow) -> str:
        state = secrets.token_urlsafe(32)
        payload = {
            **{
                k: getattr(flow, k)
                for k in ("iss", "verifier", "nonce", "redirect_uri", "ehr_launch", "card_hint")
            },
            "config": _config_dict(flow.config),
            "created": flow.created,
        }
        await self.kv.put(f"flow:{_digest(state)}", _seal(state, payload), self.ttl_s + _GRACE_S)
        self._pending[_digest(state)] = time.time()
        while len(self._pending) > _LOCAL_SESSIONS:
            self._pending.popitem(last=False)
        return state

    async def take(self, state: str) -> tuple[Flow | None, str]:
        """(flow, "ok"), or (None, why): "replayed", "expired" or "unknown". Single use either way."""
        key = _digest(state)
        if await self.kv.get(f"used-state:{key}") is not None:
            return None, "replayed"
        blob = await self.kv.take(f"flow:{key}")
        self._pending.pop(key, None)
        if blob is None:
            return None, "unknown"
        await self.kv.add(f"used-state:{key}", b"1", self.ttl_s + 2 * _GRACE_S)
        try:
            d = _unseal(state, blob)
        except Exception:
            return None, "unknown"
        flow = Flow(**{**d, "config": _config(d["config"])})
        if time.time() - flow.created > self.ttl_s:
            return None, "expired"
        return flow, "ok"

    async def use_code(self, code: str) -> bool:
        """False when this code was presented before (it is then never sent to the EHR again)."""
        return await self.kv.add(f"used-code:{_digest(code)}", b"1", self.ttl_s + 2 * _GRACE_S)

    def __len__(self) -> int:
        """Launches this worker started that are still pending (what a refused callback must not spend)."""
        cutoff = time.time() - self.ttl_s - _GRACE_S
        return sum(1 for t in self._pending.values() if t >= cutoff)


class SessionStore:
    def __init__(self, kv: SharedKV, ttl_s: float = 3600.0) -> None:
        self.kv = kv
        self.ttl_s = ttl_s
        # digest -> (digest of the shared record it was read from, the object): this worker's copies
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._versions: dict[str, str] = {}

    @staticmethod
    def _payload(s: Session) -> dict[str, Any]:
        t = s.token
        return {
            "iss": s.iss,
            "config": _config_dict(s.config),
            "token": {
                "access_token": t.access_token,
                "expires_at": t.expires_at,
                "scope": t.scope,
                "refresh_token": t.refresh_token,
                "id_token": t.id_token,
                "context": t.context,
            },
            "patient": s.patient,
            "encounter": s.encounter,
            "card_uuid": s.card_uuid,
            "user": s.user,
            "created": s.created,
            "decisions": [[*k, v] for k, v in s.decisions.items()],
            "recorded": s.recorded,
        }

    @staticmethod
    def _session(d: dict[str, Any]) -> Session:
        return Session(
            iss=d["iss"],
            config=_config(d["config"]),
            token=TokenResponse(**d["token"]),
            patient=d["patient"],
            encounter=d["encounter"],
            card_uuid=d["card_uuid"],
            user=d["user"],
            created=d["created"],
            decisions={tuple(x[:-1]): float(x[-1]) for x in d["decisions"]},
            recorded=d["recorded"],
        )

    async def open(self, session: Session) -> str:
        handle = secrets.token_urlsafe(32)
        session.handle = handle
        await self.save(session)
        return handle

    async def save(self, session: Session) -> None:
        """Write the session back for every worker (after a refresh, a decision)."""
        key = _digest(session.handle)
        blob = _seal(session.handle, self._payload(session))
        remaining = self.ttl_s - (time.time() - session.created)
        await self.kv.put(f"session:{key}", blob, max(1.0, remaining))
        self._keep(key, hashlib.sha256(blob).hexdigest(), session)

    def _keep(self, key: str, version: str, session: Session) -> None:
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        self._versions[key] = version
        while len(self._sessions) > _LOCAL_SESSIONS:
            old, _ = self._sessions.popitem(last=False)
            self._versions.pop(old, None)

    def cached(self, handle: str) -> Session | None:
        """This worker's copy of a session, if it holds one (tests look at what it keeps)."""
        return self._sessions.get(_digest(handle))

    async def get(self, handle: str) -> Session | None:
        key = _digest(handle)
        blob = await self.kv.get(f"session:{key}")
        if blob is None:
            self._sessions.pop(key, None)
            return None
        version = hashlib.sha256(blob).hexdigest()
        session = self._sessions.get(key)
        if session is None or self._versions.get(key) != version:
            try:
                fresh = self._session(_unseal(handle, blob))
            except Exception:
                return None
            fresh.handle = handle
            if session is not None:  # another worker changed it: keep what this one drew
                fresh.pictures, fresh.trend = session.pictures, session.trend
            session = fresh
            self._keep(key, version, session)
        if time.time() - session.created > self.ttl_s:
            return None
        return session

    def __len__(self) -> int:
        """Sessions this worker opened or read (a refused callback opens none)."""
        return len(self._sessions)
