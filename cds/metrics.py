"""In-process counters and latency histograms, exposed as Prometheus text at /metrics.

Labels are service ids and reason codes only: nothing about a patient. Gauges (calls in flight,
calls waiting for a CPU thread, degraded dependencies) are read from the objects that own them
when /metrics is scraped.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Metrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()  # (service, reason)
        self.feedback: Counter[tuple[str, str]] = Counter()  # (service, status)
        self.feedback_flags: Counter[tuple[str, str]] = Counter()  # (service, flag)
        self.auth_failures: Counter[str] = Counter()  # reason code
        self.outcomes: Counter[str] = Counter()  # service -> OperationOutcome entries skipped in EHR Bundles
        self.refused: Counter[str] = Counter()  # endpoint family -> calls refused at capacity
        self.model_events: Counter[tuple[str, str]] = Counter()  # (model, lineup-changed | rollback)
        self._lifecycle: Any = None
        self._hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(_BUCKETS) + 1))
        self._sum: Counter[str] = Counter()
        self._gauges: dict[str, Callable[[], float]] = {}
        self._degraded: list[Callable[[], dict[str, bool]]] = []

    def watch(self, **owners: Any) -> None:
        """Gauges read from `lane` (waiting), `hook_gate` and `feedback_gate` (in flight) and
        `store` (degraded, cards in the local spool)."""
        if owners.get("lifecycle") is not None:
            self._lifecycle = owners["lifecycle"]
        lane = owners.get("lane")
        if lane is not None:
            self._gauges["cds_hook_queue_waiting"] = lambda: lane.waiting
        store = owners.get("store")
        if store is not None:
            self._gauges["cds_store_spooled_cards"] = lambda: store.health().spooled
            self.degraded_source(lambda: {"record-store": store.health().degraded})
        for name in ("hook_gate", "feedback_gate"):
            gate = owners.get(name)
            if gate is not None:
                family = name.removesuffix("_gate")
                self._gauges[f'cds_in_flight{{endpoint="{family}"}}'] = lambda g=gate: g.in_flight

    def degraded_source(self, source: Callable[[], dict[str, bool]]) -> None:
        """`source()` -> {component: degraded?}, e.g. the replay store falling back from Redis."""
        self._degraded.append(source)

    def hook(self, service: str, reason: str, seconds: float) -> None:
        with self._lock:
            self.calls[(service, reason)] += 1
            buckets = self._hist[service]
            for i, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            buckets[-1] += 1
            self._sum[service] += seconds

    def ehr_outcomes(self, service: str, n: int) -> None:
        if n:
            with self._lock:
                self.outcomes[service] += n

    def feedback_item(self, service: str, status: str, flags: Iterable[str] = ()) -> None:
        with self._lock:
            self.feedback[(service, status)] += 1
            for flag in flags:
                self.feedback_flags[(service, flag)] += 1

    def model_event(self, model: str, event: str) -> None:
        """A lineup change or a guardrail rollback (cds/lifecycle.py)."""
        with self._lock:
            self.model_events[(model, event)] += 1

    def overloaded(self, endpoint: str) -> None:
        with self._lock:
            self.refused[endpoint] += 1

    def auth_failure(self, reason: str) -> None:
        with self._lock:
            self.auth_failures[reason] += 1

    def render(self) -> str:
        lines = ["# TYPE cds_hook_calls_total counter"]
        with self._lock:
            for (service, reason), n in sorted(self.calls.items()):
                lines.append(f'cds_hook_calls_total{{service="{service}",reason="{reason}"}} {n}')
            lines.append("# TYPE cds_hook_seconds histogram")
            for service, buckets in sorted(self._hist.items()):
                for bound, n in zip(_BUCKETS, buckets, strict=False):
                    lines.append(f'cds_hook_seconds_bucket{{service="{service}",le="{bound}"}} {n}')
                lines.append(f'cds_hook_seconds_bucket{{service="{service}",le="+Inf"}} {buckets[-1]}')
                lines.append(f'cds_hook_seconds_count{{service="{service}"}} {buckets[-1]}')
                lines.append(f'cds_hook_seconds_sum{{service="{service}"}} {self._sum[service]:.6f}')
            lines.append("# TYPE cds_ehr_operation_outcomes_total counter")
            for service, n in sorted(self.outcomes.items()):
                lines.append(f'cds_ehr_operation_outcomes_total{{service="{service}"}} {n}')
            lines.append("# TYPE cds_feedback_items_total counter")
            for (service, status), n in sorted(self.feedback.items()):
                lines.append(f'cds_feedback_items_total{{service="{service}",status="{status}"}} {n}')
            lines.append("# TYPE cds_feedback_flags_total counter")
            for (service, flag), n in sorted(self.feedback_flags.items()):
                lines.append(f'cds_feedback_flags_total{{service="{service}",flag="{flag}"}} {n}')
            lines.append("# TYPE cds_refused_at_capacity_total counter")
            for endpoint, n in sorted(self.refused.items()):
                lines.append(f'cds_refused_at_capacity_total{{endpoint="{endpoint}"}} {n}')
            lines.append("# TYPE cds_auth_failures_total counter")
            for reason, n in sorted(self.auth_failures.items()):
                lines.append(f'cds_auth_failures_total{{reason="{reason}"}} {n}')
        lines.append("# TYPE cds_model_events_total counter")
        with self._lock:
            for (model, event), n in sorted(self.model_events.items()):
                lines.append(f'cds_model_events_total{{model="{model}",event="{event}"}} {n}')
        if self._lifecycle is not None:
            lines.append("# TYPE cds_model_serving gauge")
            for model, lineup in sorted(self._lifecycle.lineups.items()):
                served = [("champion", lineup.champion.version)]
                served += [
                    (role, c.model.version)
                    for role, c in (("canary", lineup.canary), ("shadow", lineup.shadow))
                    if c
                ]
                for role, version in served:
                    lines.append(f'cds_model_serving{{model="{model}",role="{role}",version="{version}"}} 1')
            lines.append("# TYPE cds_shadow_skipped_total counter")
            lines.append(f"cds_shadow_skipped_total {self._lifecycle.shadow_skipped}")
        lines.append("# TYPE cds_degraded gauge")
        for source in self._degraded:
            for component, degraded in sorted(source().items()):
                lines.append(f'cds_degraded{{component="{component}"}} {int(degraded)}')
        for name, read in sorted(self._gauges.items()):
            lines.append(f"{name} {read()}")
        return "\n".join(lines) + "\n"
