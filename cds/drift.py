"""Live drift and data quality: each scored call's feature row and score are binned against the
model's training reference (models/drift_reference.py) and tallied in process; every few seconds
the tallies go to a shared store (Redis when CDS_REDIS_URL is set, else a SQLite file beside the
record store), so several workers and instances add up. Reports and the warning state read the
store: PSI per feature and for the score over a window, missing shares against the reference, and
the share of Observations whose code or unit was not mapped (or whose value was implausible),
per model version and per configured EHR issuer.

Hot path: `observe` is one vectorised comparison of the row with the bin edges and one indexed
add under a lock (p50 ~15 us for the sepsis model's 252 features, benchmarks/bench_drift.py); no
I/O. Tallied: bin counts, call counts, and mapping counts by code ("system|code") and by
"variable|unit" (capped per time bucket); never a value, a patient or a clinician.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models import DriftReference, RiskModel, psi

from .metrics import Metrics, issuer_labeller
from .settings import Settings

__all__ = [
    "DriftBackend",
    "DriftMonitor",
    "DriftThresholds",
    "RedisDriftBackend",
    "SqliteDriftBackend",
    "open_drift_backend",
    "parse_since",
    "summarize",
]

log = logging.getLogger("cds.drift")

PURGE_EVERY_S = 600.0
MAX_QUALITY_KEYS = 200  # distinct codes / variable|unit pairs kept per bucket and key


@dataclass(frozen=True)
class DriftThresholds:
    psi: float = 0.2  # PSI at or above which a feature or the score is drifting
    missing: float = 0.2  # change in a feature's missing share (absolute) that is a warning
    unmapped: float = 0.05  # share of Observations unmapped (code or unit) that is a warning
    min_calls: int = 30  # fewer scored calls in the window: too few to judge, no warning


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO time, or a duration back from now: 90m, 24h, 7d."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return now - timedelta(seconds=float(match.group(1)) * unit)
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --- the in-process tally --------------------------------------------------------------------


class _Binner:
    """A model version's reference as arrays: edges padded with +inf, the missing column last."""

    def __init__(self, reference: DriftReference) -> None:
        self.reference = reference
        widest = max((len(f.edges) for f in reference.features), default=0)
        self.missing_col = widest + 1
        self.edges = np.full((len(reference.features), max(1, widest)), np.inf)
        for i, f in enumerate(reference.features):
            self.edges[i, : len(f.edges)] = f.edges
        self.rows = np.arange(len(reference.features))
        self.score_edges = np.asarray(reference.score.edges, dtype=np.float64)
        names = [f.name for f in reference.features]
        self.units = [(names.index(flag), unit) for flag, unit in ICU_UNITS.items() if flag in names]

    def icu_unit(self, row: np.ndarray | None) -> str | None:
        """MICU or SICU when the scored row's unit flag says so, else None."""
        if row is None:
            return None
        x = np.asarray(row).ravel()
        return next((unit for i, unit in self.units if x[i] == 1), None)

    def feature_bins(self, row: np.ndarray) -> np.ndarray:
        x = np.asarray(row, dtype=np.float64).ravel()
        bins = (x[:, None] > self.edges).sum(axis=1)
        bins[np.isnan(x)] = self.missing_col
        return bins

    def score_bin(self, probability: float) -> int:
        return int(np.searchsorted(self.score_edges, probability, side="left"))


@dataclass
class _Tally:
    features: np.ndarray
    score: np.ndarray
    counts: Counter[str] = field(default_factory=Counter)

    def fields(self) -> dict[str, int]:
        out = {k: int(v) for k, v in self.counts.items() if v}
        rows, cols = np.nonzero(self.features)
        for r, c, n in zip(rows.tolist(), cols.tolist(), self.features[rows, cols].tolist(), strict=True):
            out[f"f{r}:{c}"] = int(n)
        for c in np.nonzero(self.score)[0].tolist():
            out[f"s:{c}"] = int(self.score[c])
        return out


# model, version, source, bucket start (epoch seconds); the source is the issuer label, followed by
# "@MICU" or "@SICU" when the scored row names its ICU unit (Unit1/Unit2), so that a report can
# sum the tallies per issuer and per ICU unit alike.
Key = tuple[str, str, str, int]
ICU_UNITS = {"Unit1": "MICU", "Unit2": "SICU"}  # the canonical table's unit flags


def split_source(source: str) -> tuple[str, str]:
    """(issuer label, ICU unit or "unknown") of a tally's source."""
    issuer, _, unit = source.partition("@")
    return issuer, unit or "unknown"


class DriftBackend(Protocol):
    async def add(self, batches: Mapping[Key, Mapping[str, int]]) -> None: ...
    async def read(self, since: float, *, by_bucket: bool = True) -> dict[Key, dict[str, int]]:
        """Tallies since `since`; `by_bucket=False`: summed over the buckets (bucket 0)."""
        ...

    async def claim(self, name: str, ttl_s: float) -> bool:
        """True for one caller per `ttl_s` (across the processes sharing the store)."""
        ...

    async def close(self) -> None: ...


class DriftMonitor:
    def __init__(
        self,
        models: Mapping[str, RiskModel],
        backend: DriftBackend,
        *,
        issuers: Iterable[str] = (),
        bucket_s: float = 300.0,
        clock: Any = time.time,
    ) -> None:
        self.backend = backend
        self.bucket_s = bucket_s
        self.label = issuer_labeller(issuers)
        self._clock = clock
        self._lock = threading.Lock()
        self._tallies: dict[Key, _Tally] = {}
        self._binners: dict[tuple[str, str], _Binner] = {}
        self.references: dict[tuple[str, str], DriftReference] = {}
        for model in models.values():
            self.add_model(model)

    def add_model(self, model: RiskModel) -> None:
        reference = model.manifest.reference
        if reference is None:
            log.warning(
                "model has no drift reference: `cds drift reference` adds one",
                extra={"event": {"model": model.name, "version": model.version}},
            )
            return
        key = (model.name, model.version)
        self._binners[key] = _Binner(reference)
        self.references[key] = reference

    def _tally(
        self, model: RiskModel, issuer: str | None, row: np.ndarray | None = None
    ) -> tuple[_Tally, _Binner] | None:
        binner = self._binners.get((model.name, model.version))
        if binner is None:
            return None
        bucket = int(self._clock() // self.bucket_s * self.bucket_s)
        unit = binner.icu_unit(row)
        source = self.label(issuer) if unit is None else f"{self.label(issuer)}@{unit}"
        key = (model.name, model.version, source, bucket)
        tally = self._tallies.get(key)
        if tally is None:
            shape = (len(binner.rows), binner.missing_col + 1)
            tally = self._tallies[key] = _Tally(
                np.zeros(shape, dtype=np.int64), np.zeros(binner.score_edges.size + 1, dtype=np.int64)
            )
        return tally, binner

    def observe(
        self,
        model: RiskModel,
        issuer: str | None,
        features: np.ndarray | None,
        probability: float,
        report: Mapping[str, Any],
    ) -> None:
        """One scored call (hot path: no I/O)."""
        with self._lock:
            found = self._tally(model, issuer, features)
            if found is None:
                return
            tally, binner = found
            if features is not None:
                tally.features[binner.rows, binner.feature_bins(features)] += 1
                tally.score[binner.score_bin(probability)] += 1
                tally.counts["scored"] += 1
            _quality(tally.counts, report)

    def observe_quality(self, model: RiskModel, issuer: str | None, report: Mapping[str, Any]) -> None:
        """A call answered without a score (e.g. too little data): its mapping counts still count."""
        with self._lock:
            found = self._tally(model, issuer)
            if found is not None:
                found[0].counts["unscored"] += 1
                _quality(found[0].counts, report)

    def take(self) -> dict[Key, dict[str, int]]:
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        return {key: tally.fields() for key, tally in tallies.items()}

    async def flush(self) -> None:
        batches = self.take()
        if not batches:
            return
        try:
            await self.backend.add(batches)
        except Exception as exc:  # a down store loses this batch only; the hook path never waits
            log.warning("drift tallies not stored", extra={"event": {"error": type(exc).__name__}})

    async def summary(self, since: float, thresholds: DriftThresholds, **kw: Any) -> dict[str, Any]:
        await self.flush()
        return summarize(await self.backend.read(since), self.references, thresholds, since=since, **kw)

    async def run(
        self,
        metrics: Metrics | None,
        thresholds: DriftThresholds,
        *,
        flush_s: float = 5.0,
        evaluate_s: float = 60.0,
        window_s: float = 86400.0,
    ) -> None:
        """Background loop of one worker: flush, and every `evaluate_s` (one worker of the host,
        by a claim in the store) set the drift gauges from the window's totals."""
        warned: set[tuple[str, str]] = set()
        claim = f"evaluate:{socket.gethostname()}"  # one worker per host sets the gauges each round
        while True:
            await asyncio.sleep(flush_s)
            await self.flush()
            if metrics is None:
                continue
            try:
                if not await self.backend.claim(claim, evaluate_s * 0.9):
                    continue
                since = self._clock() - window_s
                rows = await self.backend.read(since, by_bucket=False)
                # Off the event loop: a day of tallies is ~10^5 counts to add up.
                summary = await asyncio.to_thread(
                    summarize, rows, self.references, thresholds, since=since, timeline=False
                )
            except Exception as exc:
                log.warning("drift state not read", extra={"event": {"error": type(exc).__name__}})
                continue
            warned = set_gauges(metrics, summary, warned)


def _quality(counts: Counter[str], report: Mapping[str, Any]) -> None:
    counts["calls"] += 1
    observations = report.get("observations")
    if isinstance(observations, int):
        counts["obs"] += observations
    for name, prefix in (("unmapped_codes", "c:"), ("unit_errors", "u:"), ("implausible", "p:")):
        found = report.get(name)
        if not isinstance(found, Mapping):
            continue
        for what, n in found.items():
            counts[name] += int(n)
            key = prefix + str(what)
            if key in counts or len(counts) < MAX_QUALITY_KEYS:
                counts[key] += int(n)


# --- shared stores ---------------------------------------------------------------------------


class SqliteDriftBackend:
    """One SQLite file for the workers of one host (the embedded default)."""

    def __init__(self, path: Path, *, retention_s: float = 35 * 86400) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention_s = retention_s
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS drift_counts (model TEXT, version TEXT, issuer TEXT, "
                "bucket INTEGER, field TEXT, n INTEGER, PRIMARY KEY (model, version, issuer, bucket, field))"
            )
            db.execute("CREATE INDEX IF NOT EXISTS drift_counts_bucket ON drift_counts (bucket)")
            db.execute("CREATE TABLE IF NOT EXISTS drift_claims (name TEXT PRIMARY KEY, until REAL)")
        self._purged = 0.0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def _add(self, batches: Mapping[Key, Mapping[str, int]]) -> None:
        rows = [(*key, f, n) for key, fields in batches.items() for f, n in fields.items()]
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO drift_counts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT "
                "(model, version, issuer, bucket, field) DO UPDATE SET n = n + excluded.n",
                rows,
            )
            if time.time() - self._purged > PURGE_EVERY_S:  # old buckets go now and then, not every flush
                db.execute("DELETE FROM drift_counts WHERE bucket < ?", (time.time() - self.retention_s,))
                self._purged = time.time()
            db.execute("COMMIT")
        finally:
            db.close()

    def _read(self, since: float, by_bucket: bool) -> dict[Key, dict[str, int]]:
        db = self._connect()
        try:
            found: dict[Key, dict[str, int]] = {}
            if by_bucket:
                query = "SELECT model, version, issuer, bucket, field, n FROM drift_counts WHERE bucket >= ?"
            else:
                query = (
                    "SELECT model, version, issuer, 0, field, SUM(n) FROM drift_counts WHERE bucket >= ? "
                    "GROUP BY model, version, issuer, field"
                )
            for model, version, issuer, bucket, name, n in db.execute(query, (int(since // 1),)):
                found.setdefault((model, version, issuer, int(bucket)), {})[name] = int(n)
            return found
        finally:
            db.close()

    def _claim(self, name: str, ttl_s: float) -> bool:
        db = self._connect()
        try:
            now = time.time()
            db.execute("INSERT OR IGNORE INTO drift_claims VALUES (?, 0)", (name,))
            done = db.execute(
                "UPDATE drift_claims SET until = ? WHERE name = ? AND until < ?", (now + ttl_s, name, now)
            )
            return done.rowcount == 1
        finally:
            db.close()

    async def add(self, batches: Mapping[Key, Mapping[str, int]]) -> None:
        await asyncio.to_thread(self._add, batches)

    async def read(self, since: float, *, by_bucket: bool = True) -> dict[Key, dict[str, int]]:
        return await asyncio.to_thread(self._read, since, by_bucket)

    async def claim(self, name: str, ttl_s: float) -> bool:
        return await asyncio.to_thread(self._claim, name, ttl_s)

    async def close(self) -> None:
        return None


class RedisDriftBackend:
    """Shared by every worker and instance: one hash per (model, version, issuer, bucket), indexed
    by bucket in a sorted set; both expire after the retention."""

    def __init__(
        self, url: str, *, prefix: str = "cds:", timeout_s: float = 0.5, retention_s: float = 35 * 86400
    ):
        from .degraded import redis_client

        self._redis = redis_client(url, timeout_s=timeout_s, decode_responses=True)
        self._index = f"{prefix}drift:index"
        self._prefix = f"{prefix}drift:"
        self.retention_s = retention_s

    def _key(self, key: Key) -> str:
        return self._prefix + json.dumps(list(key), separators=(",", ":"))

    async def add(self, batches: Mapping[Key, Mapping[str, int]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        ttl = int(self.retention_s)
        for key, fields in batches.items():
            name = self._key(key)
            for f, n in fields.items():
                pipe.hincrby(name, f, n)
            pipe.expire(name, ttl)
            pipe.zadd(self._index, {name: key[3]})
        pipe.zremrangebyscore(self._index, "-inf", time.time() - self.retention_s)
        await pipe.execute()

    async def claim(self, name: str, ttl_s: float) -> bool:
        done = await self._redis.set(
            self._prefix + "claim:" + name, "1", nx=True, px=max(1, int(1000 * ttl_s))
        )
        return bool(done)

    async def read(self, since: float, *, by_bucket: bool = True) -> dict[Key, dict[str, int]]:
        names = await self._redis.zrangebyscore(self._index, int(since // 1), "+inf")
        if not names:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        found: dict[Key, dict[str, int]] = {}
        for name, fields in zip(names, await pipe.execute(), strict=True):
            if not fields:
                continue
            model, version, issuer, bucket = json.loads(name[len(self._prefix) :])
            key = (model, version, issuer, int(bucket) if by_bucket else 0)
            into = found.setdefault(key, {})
            for k, v in fields.items():
                into[k] = into.get(k, 0) + int(v)
        return found

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def open_drift_backend(settings: Settings) -> DriftBackend:
    if settings.redis_url:
        return RedisDriftBackend(
            settings.redis_url,
            prefix=settings.redis_prefix,
            timeout_s=max(0.5, settings.redis_timeout_s),
        )
    return SqliteDriftBackend(settings.drift_path)


# --- the report's numbers --------------------------------------------------------------------


def _sum(rows: Iterable[Mapping[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for fields in rows:
        total.update(fields)
    return total


def _live_bins(
    total: Mapping[str, int], prefix: str, n_value_bins: int, missing_col: int | None
) -> np.ndarray:
    counts = [total.get(f"{prefix}{c}", 0) for c in range(n_value_bins)]
    if missing_col is not None:
        counts.append(total.get(f"{prefix}{missing_col}", 0))
    return np.asarray(counts, dtype=np.float64)


def _judge(
    total: Mapping[str, int], reference: DriftReference, thresholds: DriftThresholds
) -> dict[str, Any]:
    """PSI and missing shares of one group of tallies against the reference."""
    scored = int(total.get("scored", 0))
    widest = max((len(f.edges) for f in reference.features), default=0)
    features = []
    for i, f in enumerate(reference.features):
        live = _live_bins(total, f"f{i}:", len(f.edges) + 1, widest + 1)
        live_missing = float(live[-1] / scored) if scored else 0.0
        features.append(
            {
                "feature": f.name,
                "psi": round(psi(f.fractions, live), 4),
                "missing_reference": f.missing,
                "missing_live": round(live_missing, 4),
                "reference": f.fractions,
                "live": [round(float(v / scored), 4) for v in live] if scored else [],
                "edges": f.edges,
            }
        )
    score_live = _live_bins(total, "s:", len(reference.score.edges) + 1, None)
    score_ref = reference.score.fractions[:-1]  # the score is never missing
    obs = int(total.get("obs", 0))
    unmapped = int(total.get("unmapped_codes", 0)) + int(total.get("unit_errors", 0))
    quality = {
        "observations": obs,
        "unmapped_share": round(unmapped / obs, 4) if obs else 0.0,
        "unmapped_code_share": round(total.get("unmapped_codes", 0) / obs, 4) if obs else 0.0,
        "unit_error_share": round(total.get("unit_errors", 0) / obs, 4) if obs else 0.0,
        "implausible_share": round(total.get("implausible", 0) / obs, 4) if obs else 0.0,
        "by_unit": _top(total, "u:", obs),
        "by_code": _top(total, "c:", obs),
        "implausible_by_variable": _top(total, "p:", obs),
    }
    judged = scored >= thresholds.min_calls
    drifting = [f for f in features if f["psi"] >= thresholds.psi]
    missing_moves = [
        f for f in features if abs(f["missing_live"] - f["missing_reference"]) >= thresholds.missing
    ]
    score_psi = round(psi(score_ref, score_live), 4)
    warnings = []
    if judged:
        if score_psi >= thresholds.psi:
            warnings.append(f"score PSI {score_psi:.2f}")
        for f in sorted(drifting, key=lambda f: -f["psi"])[:10]:
            warnings.append(f"{f['feature']} PSI {f['psi']:.2f}")
        for f in missing_moves[:10]:
            warnings.append(f"{f['feature']} missing {f['missing_reference']:.0%} -> {f['missing_live']:.0%}")
    if obs and quality["unmapped_share"] >= thresholds.unmapped:
        warnings.append(f"{quality['unmapped_share']:.1%} of Observations unmapped (code or unit)")
    return {
        "calls": int(total.get("calls", 0)),
        "scored": scored,
        "unscored": int(total.get("unscored", 0)),
        "judged": judged,
        "score": {
            "psi": score_psi,
            "edges": reference.score.edges,
            "reference": score_ref,
            "live": [round(float(v / scored), 4) for v in score_live] if scored else [],
        },
        "features": sorted(features, key=lambda f: -f["psi"]),
        "max_feature_psi": max((f["psi"] for f in features), default=0.0),
        "features_over_threshold": len(drifting),
        "max_missing_delta": round(
            max((abs(f["missing_live"] - f["missing_reference"]) for f in features), default=0.0), 4
        ),
        "quality": quality,
        "warning": bool(warnings),
        "warnings": warnings,
    }


def _top(total: Mapping[str, int], prefix: str, obs: int, k: int = 10) -> list[dict[str, Any]]:
    found = sorted(
        ((k[len(prefix) :], n) for k, n in total.items() if k.startswith(prefix)), key=lambda t: -t[1]
    )
    return [{"key": key, "count": n, "share": round(n / obs, 4) if obs else 0.0} for key, n in found[:k]]


def summarize(
    rows: Mapping[Key, Mapping[str, int]],
    references: Mapping[tuple[str, str], DriftReference],
    thresholds: DriftThresholds,
    *,
    since: float,
    until: float | None = None,
    timeline: bool = True,
    slots: int = 24,
) -> dict[str, Any]:
    """The report's data: per model version, all issuers together and each issuer, plus a
    timeline (score PSI, largest feature PSI, unmapped share per time slot and issuer)."""
    until = until if until is not None else time.time()
    out: dict[str, Any] = {
        "since": datetime.fromtimestamp(since, UTC).isoformat(),
        "until": datetime.fromtimestamp(until, UTC).isoformat(),
        "thresholds": thresholds.__dict__,
        "models": [],
        "warnings": [],
    }
    groups: dict[tuple[str, str], dict[str, list[tuple[int, Mapping[str, int]]]]] = {}
    units: dict[tuple[str, str], dict[str, list[Mapping[str, int]]]] = {}
    for (model, version, source, bucket), fields in rows.items():
        issuer, unit = split_source(source)
        groups.setdefault((model, version), {}).setdefault(issuer, []).append((bucket, fields))
        units.setdefault((model, version), {}).setdefault(unit, []).append(fields)
    for (model, version), by_issuer in sorted(groups.items()):
        reference = references.get((model, version))
        if reference is None:
            continue
        everyone = _judge(_sum(f for rows_ in by_issuer.values() for _, f in rows_), reference, thresholds)
        issuers = {
            issuer: _judge(_sum(f for _, f in found), reference, thresholds)
            for issuer, found in sorted(by_issuer.items())
        }
        by_unit = {
            unit: _judge(_sum(found), reference, thresholds)
            for unit, found in sorted(units[(model, version)].items())
        }
        entry: dict[str, Any] = {
            "model": model,
            "version": version,
            "reference": {"source": reference.source, "rows": reference.rows},
            "all": everyone,
            "issuers": issuers,
            "icu_units": by_unit,  # all issuers together, per ICU unit of the scored row
        }
        if timeline:
            entry["timeline"] = _timeline(by_issuer, reference, thresholds, since, until, slots)
        out["models"].append(entry)
        for issuer, judged in issuers.items():
            for warning in judged["warnings"]:
                out["warnings"].append(
                    {"model": model, "version": version, "issuer": issuer, "what": warning}
                )
    return out


def _timeline(
    by_issuer: Mapping[str, list[tuple[int, Mapping[str, int]]]],
    reference: DriftReference,
    thresholds: DriftThresholds,
    since: float,
    until: float,
    slots: int,
) -> dict[str, Any]:
    width = max(1.0, (until - since) / slots)
    starts = [since + i * width for i in range(slots)]
    series: dict[str, dict[str, list[float | None]]] = {}
    for issuer, found in by_issuer.items():
        per_slot: list[list[Mapping[str, int]]] = [[] for _ in range(slots)]
        for bucket, fields in found:
            per_slot[min(slots - 1, max(0, int((bucket - since) // width)))].append(fields)
        psi_s: list[float | None] = []
        psi_f: list[float | None] = []
        unmapped: list[float | None] = []
        calls: list[float | None] = []
        for fields in per_slot:
            if not fields:
                psi_s.append(None), psi_f.append(None), unmapped.append(None), calls.append(0)
                continue
            judged = _judge(_sum(fields), reference, DriftThresholds(min_calls=0))
            calls.append(judged["scored"])
            psi_s.append(judged["score"]["psi"] if judged["scored"] else None)
            psi_f.append(judged["max_feature_psi"] if judged["scored"] else None)
            unmapped.append(
                judged["quality"]["unmapped_share"] if judged["quality"]["observations"] else None
            )
        series[issuer] = {
            "score_psi": psi_s,
            "max_feature_psi": psi_f,
            "unmapped_share": unmapped,
            "scored": calls,
        }
    return {"starts": [datetime.fromtimestamp(s, UTC).isoformat() for s in starts], "issuers": series}


def set_gauges(
    metrics: Metrics, summary: Mapping[str, Any], warned: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Drift gauges from a summary; a warning state entered or left is logged once."""
    now_warned: set[tuple[str, str]] = set()
    for entry in summary["models"]:
        model = entry["model"]
        for issuer, judged in entry["issuers"].items():
            metrics.drift_psi.labels(model, issuer, "score").set(judged["score"]["psi"])
            metrics.drift_psi.labels(model, issuer, "max-feature").set(judged["max_feature_psi"])
            metrics.drift_over.labels(model, issuer).set(judged["features_over_threshold"])
            metrics.drift_missing.labels(model, issuer).set(judged["max_missing_delta"])
            metrics.drift_unmapped.labels(model, issuer).set(judged["quality"]["unmapped_share"])
            metrics.drift_warning.labels(model, issuer).set(int(judged["warning"]))
            metrics.drift_calls.labels(model, issuer).set(judged["scored"])
            if judged["warning"]:
                now_warned.add((model, issuer))
                if (model, issuer) not in warned:
                    log.warning(
                        "drift warning",
                        extra={"event": {"model": model, "issuer": issuer, "why": judged["warnings"][:5]}},
                    )
    for model, issuer in warned - now_warned:
        log.info("drift warning cleared", extra={"event": {"model": model, "issuer": issuer}})
    return now_warned
