"""Counters, histograms and gauges through prometheus-client, exposed at /metrics.

Labels are service ids, model names and versions, reason codes, endpoint families and the
*configured* issuer of the calling EHR (an `iss` from CDS_AUTH_ISSUERS, "other" for anything
else, "none" with caller authentication off): never anything about a patient or a clinician
(tests/cds/test_metrics.py checks it). Each Metrics has its own CollectorRegistry, so several
apps in one process (tests) do not collide.

Several workers (`cds serve --workers N`): the command sets PROMETHEUS_MULTIPROC_DIR to a fresh
folder before the workers start; prometheus-client then keeps each worker's values in files there
and /metrics (answered by any worker) sums them. Gauges say how they combine across workers
(`livesum` for in-flight counts, `max` for degraded flags, `mostrecent` for the drift gauges,
which one worker per host recomputes). Gauges that are
read from the objects owning them (queue length, in flight, degraded, spooled cards) are refreshed
on each scrape and by `refresh()` every few seconds, so the other workers' figures are current too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

__all__ = ["CONTENT_TYPE", "EXPORTED", "MULTIPROC_ENV", "Metrics", "issuer_labeller", "multiprocess_dir"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def issuer_labeller(configured: Iterable[str]) -> Callable[[str | None], str]:
    """The issuer label: a configured `iss` as configured, else "other"; "none" without auth."""
    known = frozenset(configured)

    def label(issuer: str | None) -> str:
        if issuer is None:
            return "none"
        return issuer if issuer in known else "other"

    return label


# Every metric family the server exports (deploy/ dashboards and alerts may name only these).
EXPORTED: dict[str, str] = {
    "cds_hook_calls_total": "Hook calls answered, by service and reason code",
    "cds_hook_seconds": "Hook call latency in seconds, by service",
    "cds_ehr_operation_outcomes_total": "OperationOutcome entries skipped in EHR search Bundles",
    "cds_fhir_requests_total": "FHIR reads and searches (with their pages), by issuer and outcome",
    "cds_fhir_errors_total": "FHIR fetches that failed, by configured issuer and kind",
    "cds_feedback_items_total": "Feedback items, by service and store status",
    "cds_feedback_outcomes_total": "Feedback items, by service, outcome and override reason code",
    "cds_feedback_flags_total": "Feedback items recorded with a flag, by service and flag",
    "cds_refused_at_capacity_total": "Calls refused at capacity, by endpoint family",
    "cds_auth_failures_total": "Callers refused, by reason code",
    "cds_store_errors_total": "Record store operations that failed, by operation",
    "cds_model_serving": "1 for each model version this server serves, by model, version and role",
    "cds_shadow_agreement_total": "Challenger (shadow or canary) scores beside the champion's, by agreement",
    "cds_canary_calls_total": "Hook calls answered by a canary version, by service and version",
    "cds_model_events_total": "Model lineup changes and guardrail rollbacks, by model and event",
    "cds_shadow_skipped": "Shadow scorings skipped because the shadow queue was full (this host)",
    "cds_drift_psi": "Population stability index of live traffic against the training reference",
    "cds_drift_features_over_threshold": "Features whose PSI is over the warning threshold",
    "cds_drift_missing_share_delta": "Largest change in a feature's missing share against the reference",
    "cds_drift_unmapped_share": "Share of Observations whose code or unit was not mapped",
    "cds_drift_warning": "1 while a drift or data-quality threshold is crossed",
    "cds_drift_calls": "Scored calls in the drift window",
    "cds_degraded": "1 while a dependency is degraded, by component",
    "cds_hook_queue_waiting": "Hook calls waiting for a CPU thread",
    "cds_store_spooled_cards": "Cards in the local spool while the record store is down",
    "cds_in_flight": "Calls in flight, by endpoint family",
}


class Metrics:
    def __init__(self, issuers: Iterable[str] = ()) -> None:
        self.issuer = issuer_labeller(issuers)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        d = EXPORTED
        self.calls = Counter("cds_hook_calls", d["cds_hook_calls_total"], ["service", "reason"], registry=r)
        self.latency = Histogram(
            "cds_hook_seconds", d["cds_hook_seconds"], ["service"], buckets=_BUCKETS, registry=r
        )
        self.outcomes = Counter(
            "cds_ehr_operation_outcomes", d["cds_ehr_operation_outcomes_total"], ["service"], registry=r
        )
        self.fhir = Counter(
            "cds_fhir_requests", d["cds_fhir_requests_total"], ["issuer", "outcome"], registry=r
        )
        self.fhir_errors = Counter(
            "cds_fhir_errors", d["cds_fhir_errors_total"], ["issuer", "kind"], registry=r
        )
        self.feedback = Counter(
            "cds_feedback_items", d["cds_feedback_items_total"], ["service", "status"], registry=r
        )
        self.feedback_outcomes = Counter(
            "cds_feedback_outcomes",
            d["cds_feedback_outcomes_total"],
            ["service", "outcome", "reason"],
            registry=r,
        )
        self.feedback_flags = Counter(
            "cds_feedback_flags", d["cds_feedback_flags_total"], ["service", "flag"], registry=r
        )
        self.refused = Counter(
            "cds_refused_at_capacity", d["cds_refused_at_capacity_total"], ["endpoint"], registry=r
        )
        self.auth_failures = Counter(
            "cds_auth_failures", d["cds_auth_failures_total"], ["reason"], registry=r
        )
        self.store_errors = Counter(
            "cds_store_errors", d["cds_store_errors_total"], ["operation"], registry=r
        )
        self.serving = Gauge(
            "cds_model_serving",
            d["cds_model_serving"],
            ["model", "version", "role"],
            registry=r,
            multiprocess_mode="max",
        )
        # Written after each answer by the shadow/canary machinery (cds/pipeline.py, cds/lifecycle.py).
        self.shadow_agreement = Counter(
            "cds_shadow_agreement",
            d["cds_shadow_agreement_total"],
            ["service", "role", "champion", "challenger", "agreement"],
            registry=r,
        )
        self.canary_calls = Counter(
            "cds_canary_calls", d["cds_canary_calls_total"], ["service", "version"], registry=r
        )
        self.model_events = Counter(
            "cds_model_events", d["cds_model_events_total"], ["model", "event"], registry=r
        )
        self.shadow_skipped = Gauge(
            "cds_shadow_skipped", d["cds_shadow_skipped"], registry=r, multiprocess_mode="livesum"
        )
        drift = ["model", "issuer"]
        self.drift_psi = Gauge(
            "cds_drift_psi",
            d["cds_drift_psi"],
            [*drift, "variable"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.drift_over = Gauge(
            "cds_drift_features_over_threshold",
            d["cds_drift_features_over_threshold"],
            drift,
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.drift_missing = Gauge(
            "cds_drift_missing_share_delta",
            d["cds_drift_missing_share_delta"],
            drift,
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.drift_unmapped = Gauge(
            "cds_drift_unmapped_share",
            d["cds_drift_unmapped_share"],
            drift,
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.drift_warning = Gauge(
            "cds_drift_warning", d["cds_drift_warning"], drift, registry=r, multiprocess_mode="mostrecent"
        )
        self.drift_calls = Gauge(
            "cds_drift_calls", d["cds_drift_calls"], drift, registry=r, multiprocess_mode="mostrecent"
        )
        self.degraded = Gauge(
            "cds_degraded", d["cds_degraded"], ["component"], registry=r, multiprocess_mode="max"
        )
        self.waiting = Gauge(
            "cds_hook_queue_waiting", d["cds_hook_queue_waiting"], registry=r, multiprocess_mode="livesum"
        )
        self.spooled = Gauge(
            "cds_store_spooled_cards", d["cds_store_spooled_cards"], registry=r, multiprocess_mode="max"
        )
        self.in_flight = Gauge(
            "cds_in_flight", d["cds_in_flight"], ["endpoint"], registry=r, multiprocess_mode="livesum"
        )
        self._readers: list[Callable[[], None]] = []
        self._degraded: list[Callable[[], dict[str, bool]]] = []

    # --- gauges read from their owners --------------------------------------------------
    def watch(self, **owners: Any) -> None:
        """Gauges read from `lane` (waiting), `hook_gate` and `feedback_gate` (in flight),
        `store` (degraded, cards in the local spool) and `lifecycle` (the versions served in each
        role, shadow scorings skipped)."""
        lifecycle = owners.get("lifecycle")
        if lifecycle is not None:
            self._readers.append(lambda: self._lineups(lifecycle))
        lane = owners.get("lane")
        if lane is not None:
            self._readers.append(lambda: self.waiting.set(lane.waiting))
        store = owners.get("store")
        if store is not None:
            self._readers.append(lambda: self.spooled.set(store.health().spooled))
            self.degraded_source(lambda: {"record-store": store.health().degraded})
        for name in ("hook_gate", "feedback_gate"):
            gate = owners.get(name)
            if gate is not None:
                child = self.in_flight.labels(name.removesuffix("_gate"))
                self._readers.append(lambda g=gate, c=child: c.set(g.in_flight))

    def _lineups(self, lifecycle: Any) -> None:
        self.shadow_skipped.set(lifecycle.shadow_skipped)
        if lifecycle.lineups:
            self.serving.clear()  # a retired or replaced version is no longer served
        for model, lineup in list(lifecycle.lineups.items()):
            self.model_serving(model, lineup.champion.version)
            for role, challenger in (("canary", lineup.canary), ("shadow", lineup.shadow)):
                if challenger is not None:
                    self.model_serving(model, challenger.model.version, role)

    def degraded_source(self, source: Callable[[], dict[str, bool]]) -> None:
        """`source()` -> {component: degraded?}, e.g. the replay store falling back from Redis."""
        self._degraded.append(source)

    def refresh(self) -> None:
        """Set the read gauges from their owners (on scrape, and periodically for other workers)."""
        for read in self._readers:
            read()
        for source in self._degraded:
            for component, degraded in source().items():
                self.degraded.labels(component).set(int(degraded))

    def close(self) -> None:
        """This worker is going: its live gauges no longer count (multi-process mode)."""
        if multiprocess_dir():
            prometheus_multiprocess.mark_process_dead(os.getpid())

    # --- events ---------------------------------------------------------------------
    def hook(self, service: str, reason: str, seconds: float) -> None:
        self.calls.labels(service, reason).inc()
        self.latency.labels(service).observe(seconds)

    def ehr_outcomes(self, service: str, n: int) -> None:
        if n:
            self.outcomes.labels(service).inc(n)

    def fhir_request(self, issuer: str | None, outcome: str) -> None:
        """`outcome`: "ok", or an error kind ("timeout", "connect", "error")."""
        label = self.issuer(issuer)
        self.fhir.labels(label, outcome).inc()
        if outcome != "ok":
            self.fhir_errors.labels(label, outcome).inc()

    def feedback_item(
        self,
        service: str,
        status: str,
        flags: Iterable[str] = (),
        *,
        outcome: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.feedback.labels(service, status).inc()
        if outcome is not None:
            self.feedback_outcomes.labels(service, outcome, reason or "none").inc()
        for flag in flags:
            self.feedback_flags.labels(service, flag).inc()

    def overloaded(self, endpoint: str) -> None:
        self.refused.labels(endpoint).inc()

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def model_serving(self, model: str, version: str, role: str = "champion") -> None:
        self.serving.labels(model, version, role).set(1)

    def model_event(self, model: str, event: str) -> None:
        """A lineup change or a guardrail rollback (cds/lifecycle.py)."""
        self.model_events.labels(model, event).inc()

    def canary_call(self, service: str, version: str) -> None:
        self.canary_calls.labels(service, version).inc()

    def shadow_result(self, service: str, role: str, champion: str, challenger: str, *, agree: bool) -> None:
        """One challenger score beside the champion's (`role`: shadow | canary)."""
        self.shadow_agreement.labels(
            service, role, champion, challenger, "agree" if agree else "disagree"
        ).inc()

    # --- exposition -------------------------------------------------------------------
    def render(self) -> bytes:
        self.refresh()
        if multiprocess_dir():
            merged = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
