"""Which versions a running server scores with, and how challengers are tried on live traffic.

The record store's version statuses (`model_version`, shared by every worker and machine) say, per
model, the champion (`active`), at most one `canary` with its share of patients, and at most one
`shadow`. Each server reads them every `CDS_MODEL_POLL_S` (one small SELECT) and, when they
changed, loads the new versions on a thread and swaps them in with one assignment per model: a
call in flight finishes with the lineup it started with, the next one gets the new lineup, and no
call fails or waits for a load. A version that does not load is logged and not served.

- Canary: a patient whose keyed pseudonym hashes (with the canary's version) below its share is
  answered by the canary for as long as it runs (sticky, and monotone when the share grows).
- Shadow: after the answer has gone out (a background task of the response), the shadow version
  scores the same fetched data on a thread of its own; its score and band are stored beside the
  champion's under the same card uuid (`model_score`) and never shown.
- Guardrails: per version, counters of calls, errors, alerts, patient-days, hook latency and
  feedback (Redis when `CDS_REDIS_URL` is set, so every worker counts into the same numbers; else
  this process only). Each poll compares the canary with the champion; a breach retires the canary
  (compare-and-set in the store, so one worker writes the audit entry), logs it and counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from models import ModelError, ModelRegistry, RiskModel, model_task, serving_device

from .errors import StoreError
from .logs import log_event
from .stores import ModelScore, RecordStore

__all__ = [
    "Challenger",
    "CounterSnapshot",
    "Counters",
    "GuardrailPolicy",
    "Lifecycle",
    "Lineup",
    "MemoryCounters",
    "RedisCounters",
    "breaches",
    "canary_run",
    "in_canary",
    "open_counters",
]

log = logging.getLogger("cds.lifecycle")

LATENCY_SAMPLES = 1000  # per version: the p99 is over the latest this many scorings


@dataclass(frozen=True)
class Challenger:
    model: RiskModel
    share: float = 0.0  # canary only


@dataclass(frozen=True)
class Lineup:
    """One model's versions as served now; replaced as a whole, never edited."""

    champion: RiskModel
    canary: Challenger | None = None
    shadow: Challenger | None = None
    # Which canary run the counters belong to (its status change time): a new canary, or a new
    # share, starts the guardrails' counts afresh, for the canary and the champion alike.
    run: str = ""

    @property
    def challenged(self) -> bool:
        return self.canary is not None or self.shadow is not None

    def counted(self, version: str) -> str:
        """The counters' key of `version` in this run."""
        return version + self.run


def canary_run(updated_at: float) -> str:
    return f"@{int(updated_at * 1000)}"


def in_canary(model: str, version: str, patient: str, share: float) -> bool:
    """Sticky assignment: the same patient, version and share always give the same answer, and a
    patient in the canary at 10 % stays in it at 25 %."""
    digest = hashlib.sha256(f"{model}\x1f{version}\x1f{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


# --- counters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CounterSnapshot:
    calls: int = 0
    errors: int = 0
    alerts: int = 0
    feedback: int = 0
    overrides: int = 0
    patient_days: int = 0
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def alerts_per_100_patient_days(self) -> float:
        return 100.0 * self.alerts / self.patient_days if self.patient_days else 0.0

    @property
    def override_rate(self) -> float:
        return self.overrides / self.feedback if self.feedback else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "alerts": self.alerts,
            "patient_days": self.patient_days,
            "alerts_per_100_patient_days": round(self.alerts_per_100_patient_days, 2),
            "hook_p99_ms": None if self.p99_ms is None else round(self.p99_ms, 2),
            "feedback": self.feedback,
            "overrides": self.overrides,
            "override_rate": round(self.override_rate, 4),
        }


class Counters(Protocol):
    async def add(
        self,
        model: str,
        version: str,
        *,
        calls: int = 0,
        errors: int = 0,
        alerts: int = 0,
        feedback: int = 0,
        overrides: int = 0,
        latency_ms: float | None = None,
        patient_day: str | None = None,
    ) -> None: ...
    async def snapshot(self, model: str, version: str) -> CounterSnapshot: ...
    async def reset(self, model: str, version: str) -> None: ...
    async def close(self) -> None: ...


def _p99(samples: Sequence[float]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class MemoryCounters:
    """This process's counters: right for one worker, and for tests of one app."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._latency: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._days: dict[tuple[str, str], set[str]] = defaultdict(set)

    async def add(
        self,
        model: str,
        version: str,
        *,
        calls: int = 0,
        errors: int = 0,
        alerts: int = 0,
        feedback: int = 0,
        overrides: int = 0,
        latency_ms: float | None = None,
        patient_day: str | None = None,
    ) -> None:
        key = (model, version)
        for name, n in (
            ("calls", calls),
            ("errors", errors),
            ("alerts", alerts),
            ("feedback", feedback),
            ("overrides", overrides),
        ):
            if n:
                self._counts[key][name] += n
        if latency_ms is not None:
            samples = self._latency[key]
            samples.append(latency_ms)
            del samples[:-LATENCY_SAMPLES]
        if patient_day is not None:
            self._days[key].add(patient_day)

    async def snapshot(self, model: str, version: str) -> CounterSnapshot:
        key = (model, version)
        c = self._counts.get(key, {})
        return CounterSnapshot(
            calls=c.get("calls", 0),
            errors=c.get("errors", 0),
            alerts=c.get("alerts", 0),
            feedback=c.get("feedback", 0),
            overrides=c.get("overrides", 0),
            patient_days=len(self._days.get(key, ())),
            p99_ms=_p99(self._latency.get(key, [])),
        )

    async def reset(self, model: str, version: str) -> None:
        for table in (self._counts, self._latency, self._days):
            table.pop((model, version), None)  # type: ignore[attr-defined]

    async def close(self) -> None:
        return None


class RedisCounters:
    """Counters every worker and machine shares: a hash of counts, a capped list of latencies and a
    HyperLogLog of patient-days per version, under `<prefix>lifecycle:<model>:<version>:`. Keys
    hold pseudonymous day keys only (hashed again), never an identifier. A failing Redis loses
    counts, never a hook: each write is bounded by the client's timeout and its error swallowed."""

    def __init__(self, url: str, *, prefix: str = "cds:", timeout_s: float = 0.25) -> None:
        from .degraded import redis_client

        self._redis = redis_client(url, timeout_s=timeout_s)
        self.prefix = prefix
        self._warned = False

    def _key(self, model: str, version: str, what: str) -> str:
        return f"{self.prefix}lifecycle:{model}:{version}:{what}"

    def _failed(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("lifecycle counters: Redis unavailable (%s); counts are lost", type(exc).__name__)

    async def add(
        self,
        model: str,
        version: str,
        *,
        calls: int = 0,
        errors: int = 0,
        alerts: int = 0,
        feedback: int = 0,
        overrides: int = 0,
        latency_ms: float | None = None,
        patient_day: str | None = None,
    ) -> None:
        import redis.exceptions

        pipe = self._redis.pipeline(transaction=False)
        counts = self._key(model, version, "counts")
        for name, n in (
            ("calls", calls),
            ("errors", errors),
            ("alerts", alerts),
            ("feedback", feedback),
            ("overrides", overrides),
        ):
            if n:
                pipe.hincrby(counts, name, n)
        if latency_ms is not None:
            latency = self._key(model, version, "latency")
            pipe.lpush(latency, f"{latency_ms:.3f}")
            pipe.ltrim(latency, 0, LATENCY_SAMPLES - 1)
        if patient_day is not None:
            pipe.pfadd(
                self._key(model, version, "days"), hashlib.sha256(patient_day.encode()).hexdigest()[:16]
            )
        try:
            await pipe.execute()
            self._warned = False
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(exc)

    async def snapshot(self, model: str, version: str) -> CounterSnapshot:
        import redis.exceptions

        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._key(model, version, "counts"))
        pipe.lrange(self._key(model, version, "latency"), 0, -1)
        pipe.pfcount(self._key(model, version, "days"))
        try:
            counts, latency, days = await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(exc)
            return CounterSnapshot()
        c = {k.decode(): int(v) for k, v in counts.items()}
        return CounterSnapshot(
            calls=c.get("calls", 0),
            errors=c.get("errors", 0),
            alerts=c.get("alerts", 0),
            feedback=c.get("feedback", 0),
            overrides=c.get("overrides", 0),
            patient_days=int(days),
            p99_ms=_p99([float(x) for x in latency]),
        )

    async def reset(self, model: str, version: str) -> None:
        import redis.exceptions

        try:
            await self._redis.delete(*(self._key(model, version, w) for w in ("counts", "latency", "days")))
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        await self._redis.aclose()


def open_counters(redis_url: str | None, *, prefix: str = "cds:", timeout_s: float = 0.25) -> Counters:
    if redis_url:
        return RedisCounters(redis_url, prefix=prefix, timeout_s=timeout_s)
    return MemoryCounters()


# --- guardrails --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardrailPolicy:
    min_calls: int = 30
    max_error_rate: float = 0.05
    max_latency_ratio: float = 2.0
    max_alert_ratio: float = 1.5
    min_feedback: int = 20
    max_override_ratio: float = 1.5
    # Floors under the champion's figures, so a champion that happened to be at zero does not
    # make any canary alert or override a breach.
    alert_floor_per_100_patient_days: float = 1.0
    override_floor: float = 0.05
    latency_floor_ms: float = 5.0

    @classmethod
    def from_settings(cls, settings: Any) -> GuardrailPolicy:
        return cls(
            min_calls=settings.canary_min_calls,
            max_error_rate=settings.canary_max_error_rate,
            max_latency_ratio=settings.canary_max_latency_ratio,
            max_alert_ratio=settings.canary_max_alert_ratio,
            min_feedback=settings.canary_min_feedback,
            max_override_ratio=settings.canary_max_override_ratio,
        )


def breaches(champion: CounterSnapshot, canary: CounterSnapshot, policy: GuardrailPolicy) -> list[str]:
    """The guardrails the canary breaks (codes with figures), judged once it has `min_calls`."""
    if canary.calls < policy.min_calls:
        return []
    found = []
    if canary.error_rate > policy.max_error_rate:
        found.append(f"error-rate {canary.error_rate:.3f} > {policy.max_error_rate}")
    if canary.p99_ms is not None and champion.p99_ms is not None:
        bound = policy.max_latency_ratio * max(champion.p99_ms, policy.latency_floor_ms)
        if canary.p99_ms > bound:
            found.append(f"latency-p99 {canary.p99_ms:.1f} ms > {bound:.1f} ms")
    if champion.patient_days and canary.patient_days:
        base = max(champion.alerts_per_100_patient_days, policy.alert_floor_per_100_patient_days)
        bound = policy.max_alert_ratio * base
        if canary.alerts_per_100_patient_days > bound:
            found.append(
                f"alert-rate {canary.alerts_per_100_patient_days:.1f} > {bound:.1f} per 100 patient-days"
            )
    if canary.feedback >= policy.min_feedback and champion.feedback >= policy.min_feedback:
        bound = policy.max_override_ratio * max(champion.override_rate, policy.override_floor)
        if canary.override_rate > bound:
            found.append(f"override-rate {canary.override_rate:.3f} > {bound:.3f}")
    return found


# --- the served lineup -------------------------------------------------------------------------


def _desired(
    active: Mapping[str, str], states: Sequence[Any], names: Sequence[str]
) -> dict[str, tuple[str | None, tuple[str, float, float] | None, str | None]]:
    """model -> (champion version or None for the registry's ACTIVE file, canary, shadow)."""
    out: dict[str, tuple[str | None, tuple[str, float, float] | None, str | None]] = {}
    for name in names:
        canary = next(
            ((s.version, s.share, s.updated_at) for s in states if s.model == name and s.status == "canary"),
            None,
        )
        shadow = next((s.version for s in states if s.model == name and s.status == "shadow"), None)
        out[name] = (active.get(name), canary, shadow)
    return out


@dataclass
class Lifecycle:
    """The lineups of one server process, kept current from the record store."""

    store: RecordStore
    registry: ModelRegistry
    models: MutableMapping[str, RiskModel]  # the champions: HookDeps.models and the SMART app's, same dict
    counters: Counters = field(default_factory=MemoryCounters)
    policy: GuardrailPolicy = field(default_factory=GuardrailPolicy)
    shadow_queue: int = 8
    on_event: Callable[[str, str], None] = field(default=lambda model, event: None)  # metrics hook
    load: Callable[[str, str | None], RiskModel] | None = None
    lineups: dict[str, Lineup] = field(default_factory=dict)
    _wanted: dict[str, Any] = field(default_factory=dict)
    _cache: dict[tuple[str, str], RiskModel] = field(default_factory=dict)
    _pending_shadow: int = 0
    shadow_skipped: int = 0
    _tasks: set[asyncio.Future[None]] = field(default_factory=set)
    _scores: list[ModelScore] = field(default_factory=list)  # written in batches (one commit each)
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="cds-challenger")
    )

    def __post_init__(self) -> None:
        for name, model in self.models.items():
            self.lineups[name] = Lineup(model)
            self._cache[(name, model.version)] = model
            self._wanted[name] = (model.version, None, None)

    def _load(self, name: str, version: str | None) -> RiskModel:
        if self.load is not None:
            return self.load(name, version)
        spec = model_task(name).feature_spec()
        return RiskModel(self.registry.load(name, spec, version), spec, device=serving_device(), nthread=1)

    async def _model(self, name: str, version: str | None) -> RiskModel:
        if version is not None and (name, version) in self._cache:
            return self._cache[(name, version)]
        loaded = await asyncio.to_thread(self._load, name, version)
        self._cache[(name, loaded.version)] = loaded
        return loaded

    async def refresh(self) -> bool:
        """Read the statuses; load and swap in what changed. True when a lineup changed."""
        try:
            active = await self.store.active_versions()
            states = await self.store.version_states()
        except StoreError:
            return False  # keep serving what is loaded; the next poll tries again
        changed = False
        for name, wanted in _desired(active, states, list(self.models)).items():
            current = self.lineups.get(name)
            champion_v, canary, shadow = wanted
            if current is not None and self._wanted.get(name) == wanted:
                continue
            try:
                champion = (
                    current.champion
                    if current is not None and champion_v in (None, current.champion.version)
                    else await self._model(name, champion_v)
                )
                lineup = Lineup(
                    champion,
                    Challenger(await self._model(name, canary[0]), canary[1]) if canary else None,
                    Challenger(await self._model(name, shadow)) if shadow else None,
                    canary_run(canary[2]) if canary else "",
                )
            except (ModelError, OSError, ValueError) as exc:
                if self._wanted.get(name) != ("failed", wanted):
                    log_event(
                        log,
                        "model version not served: it does not load",
                        model=name,
                        wanted=str(wanted),
                        error=type(exc).__name__,
                    )
                self._wanted[name] = ("failed", wanted)
                continue
            self.models[name] = lineup.champion  # one assignment each: calls see old or new, never half
            self.lineups[name] = lineup
            self._wanted[name] = wanted
            keep = {champion.version, *(c.model.version for c in (lineup.canary, lineup.shadow) if c)}
            self._cache = {k: m for k, m in self._cache.items() if k[0] != name or k[1] in keep}
            changed = True
            log_event(
                log,
                "model lineup",
                model=name,
                champion=lineup.champion.version,
                canary=lineup.canary.model.version if lineup.canary else None,
                canary_share=lineup.canary.share if lineup.canary else None,
                shadow=lineup.shadow.model.version if lineup.shadow else None,
            )
            self.on_event(name, "lineup-changed")
        return changed

    def lineup(self, name: str) -> Lineup | None:
        return self.lineups.get(name)

    async def check_guardrails(self) -> list[tuple[str, str, list[str]]]:
        """Retire every canary that breaks a guardrail; return (model, version, breaches) of those."""
        rolled = []
        for name, lineup in list(self.lineups.items()):
            if lineup.canary is None:
                continue
            version = lineup.canary.model.version
            champion = await self.counters.snapshot(name, lineup.counted(lineup.champion.version))
            canary = await self.counters.snapshot(name, lineup.counted(version))
            found = breaches(champion, canary, self.policy)
            if not found:
                continue
            try:
                change = await self.store.set_version_status(
                    name,
                    version,
                    "retired",
                    audit={
                        "actor": "guardrail",
                        "reason": "; ".join(found),
                        "action": "rollback",
                        "canary": canary.as_dict(),
                        "champion": champion.as_dict(),
                    },
                    expect="canary",
                )
            except StoreError:
                continue  # the next poll tries again
            if change is not None:  # this process wrote it (another worker may have been first)
                log.warning(
                    "canary rolled back by its guardrails",
                    extra={"event": {"model": name, "version": version, "breaches": found}},
                )
                self.on_event(name, "rollback")
                rolled.append((name, version, found))
        if rolled:
            await self.refresh()
        return rolled

    def record(self, scores: Sequence[ModelScore]) -> None:
        """Keep challenger scores for the next batch write: one commit (one fsync with SQLite) per
        poll, not one per call beside the card's own."""
        self._scores.extend(scores)

    async def flush(self) -> int:
        batch, self._scores = self._scores, []
        if not batch:
            return 0
        try:
            await self.store.put_model_scores(batch)
        except StoreError:
            log.warning("challenger scores not recorded: the record store failed (%d lost)", len(batch))
            return 0
        return len(batch)

    async def run(self, interval_s: float) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
                await self.refresh()
                await self.check_guardrails()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a poll must never end the loop
                log.warning("lifecycle poll failed (%s)", type(exc).__name__)

    # --- what a hook call reports, after its answer ----------------------------------------

    async def spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        """Start `work` detached (kept until done): called once the answer has been sent, so the
        connection's next request does not wait for it either (a coroutine function, so Starlette
        runs it on the event loop, not on a thread)."""
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the detached work started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def shadow_slot(self) -> bool:
        """Room for one more shadow scoring? Beyond `shadow_queue` waiting, the shadow is skipped."""
        if self._pending_shadow >= self.shadow_queue:
            self.shadow_skipped += 1
            return False
        self._pending_shadow += 1
        return True

    async def in_background(self, fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            self._pending_shadow -= 1

    async def note_feedback(self, model: str, by_version: Mapping[str, tuple[int, int]]) -> None:
        """Feedback (items, overrides) on cards answered by each version, while a canary runs."""
        lineup = self.lineups.get(model)
        run = lineup.run if lineup is not None else ""
        for version, (items, overrides) in by_version.items():
            await self.counters.add(model, version + run, feedback=items, overrides=overrides)

    async def close(self) -> None:
        await self.settle()
        await self.flush()
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self.counters.close()


def patient_day(patient: str | None, at: float) -> str | None:
    """The key one patient-day counts under (pseudonym and UTC date)."""
    if not patient:
        return None
    return f"{patient}\x1f{datetime.fromtimestamp(at, UTC).date().isoformat()}"


def now() -> float:
    return time.time()
