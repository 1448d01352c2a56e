"""One hook call: body -> prefetch or fetch -> de-identified table -> features -> score + SHAP -> card.

The only module that awaits between those steps, and the one that enforces the hook's time
budget, which starts when the call arrives: a slow or failing EHR, a queue of other calls or a
slow store never hold the answer past it (`{"cards": []}`, reason `fhir-unavailable`,
`overloaded` or `budget-spent`). The CPU-heavy steps (parsing the body; mapping, features, score
and SHAP) run on the `Lane`'s threads, never on the event loop. Before anything is fetched, every
id in the context must be a FHIR id (400 otherwise) and `fhirServer` must be one the calling EHR
is bound to (412 otherwise, before any connection). Prefetch semantics (CDS Hooks 2.0):
an absent key is fetched; `null` means no such resource; an OperationOutcome or a value that is
not FHIR means the EHR failed, so the key is fetched; a search Bundle with a `next` link is
completed from the FHIR server. OperationOutcome entries inside a search Bundle (warnings or
partial failures) are skipped and counted (`ehr_outcomes`), so an EHR that keeps failing shows up
in logs and metrics. When data is needed and there is no FHIR server to ask: 412.

Consent (hooks/consent.py, docs/privacy.md): the `consent` key is fetched only when there is a
FHIR server to ask; decision support refused means no score (reason `consent-refused`), training
use refused labels the stored RiskAssessment NOREUSE. Each stored card carries its `card-scored`
audit entry, written in the card's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fhir_mappings import (
    GENERIC,
    Pseudonymizer,
    VendorProfile,
    identity_tokens,
)
from hooks import (
    CARD_EXTENSION,
    CONSENT_KEY,
    ConsentDecision,
    Need,
    NoCard,
    ScoredCard,
    ScoringInput,
    Service,
    check_context_ids,
    consent_decision,
    explanation_link,
    followup_needs,
    plan_fetch,
    template_tokens,
)
from models import RiskModel

from .admission import Deadline, Lane
from .audit import card_audit
from .bodies import parse_model
from .drift import DriftMonitor
from .errors import (
    BadRequest,
    BudgetSpent,
    FHIRServerError,
    FHIRUnavailable,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    PreconditionFailed,
    StoreError,
)
from .fhir_client import FetchBudget, FhirClient
from .lifecycle import Lifecycle, Lineup, in_canary, patient_day
from .metrics import Metrics
from .privacy import labelled_no_reuse
from .schemas import HookRequest, canonical_uuid
from .stores import CardRecord, ModelScore, RecordStore

__all__ = ["HookDeps", "HookOutcome", "answer_hook", "check_request", "count_resources", "run_hook"]

log = logging.getLogger("cds.hook")


@dataclass
class HookDeps:
    fhir: FhirClient
    store: RecordStore
    models: Mapping[str, RiskModel]
    pseudonymizer: Pseudonymizer
    budget_s: float = 2.0
    # Kept back from the FHIR part of the budget for scoring, the store and the reply, so a hung
    # EHR never pushes the answer past `budget_s`.
    reserve_s: float = 0.15
    lane: Lane = field(default_factory=Lane)
    max_json_depth: int = 64
    max_resources: int = 20_000
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    new_uuid: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    profiles: Callable[[str | None, str | None], VendorProfile] = field(
        default=lambda server, issuer: GENERIC
    )
    # (fhirServer, verified issuer) -> may we connect? (Settings.fhir_server_allowed)
    fhir_allowed: Callable[[str, str | None], bool] = field(default=lambda server, issuer: True)
    # CDS_FEEDBACK_COMMENTS=scrubbed: keep keyed hashes of the call's identity words with the card.
    keep_identity_hashes: bool = False
    # CDS_CONSENT_REFUSED_CARD: answer an info card (no score) when decision support is refused.
    consent_refused_card: bool = False
    # Counters (FHIR fetches by issuer, store errors) and the live drift tally; None in unit tests.
    metrics: Metrics | None = None
    drift: DriftMonitor | None = None
    # Shadow and canary versions, kept current from the store (cds/lifecycle.py); None: champions only.
    lifecycle: Lifecycle | None = None


@dataclass
class HookOutcome:
    body: dict[str, Any]
    reason: str  # stable code for logs and metrics: "card", "not-applicable", "fhir-unavailable", ...
    details: dict[str, Any] = field(default_factory=dict)
    # Work for after the answer has been sent (the shadow's score, the lifecycle counters).
    after: Callable[[], Awaitable[None]] | None = None


NO_GUIDANCE: dict[str, Any] = {"cards": []}


def count_resources(prefetch: Mapping[str, Any] | None) -> int:
    """Resources in a prefetch: each value, and each entry of a Bundle."""
    total = 0
    for value in (prefetch or {}).values():
        if isinstance(value, dict):
            entries = value.get("entry")
            total += 1 + (len(entries) if isinstance(entries, list) else 0)
    return total


def _template_fields(service: Service) -> list[str]:
    return [
        t.removeprefix("context.")
        for tpl in service.prefetch.values()
        for t in template_tokens(tpl)
        if t.startswith("context.")
    ]


def check_request(service: Service, request: HookRequest, *, max_resources: int) -> int:
    """What a call must satisfy before anything is fetched: the hook, the context and its ids
    (InvalidIdError, 400), the size of the prefetch. Returns the prefetch's resource count."""
    if request.hook not in service.hooks:
        raise BadRequest(f"service {service.id} does not answer hook {request.hook!r}")
    for name in service.required_context:
        if not isinstance(request.context.get(name), str) or not request.context[name]:
            raise BadRequest(f"context.{name} is required for {request.hook}")
    check_context_ids(request.context, _template_fields(service))
    prefetched = count_resources(request.prefetch)
    if prefetched > max_resources:
        raise PayloadTooLarge(f"the prefetch holds more than {max_resources} resources")
    return prefetched


async def _gather(
    service: Service,
    request: HookRequest,
    deps: HookDeps,
    profile: VendorProfile,
    budget: FetchBudget,
    issuer: str | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """Carry out the pure plan (hooks/fetch_plan.py): fetch what the prefetch left, then the
    follow-ups the first round revealed."""
    plan = plan_fetch(
        service,
        request.context,
        request.prefetch,
        profile=profile,
        has_fhir_server=request.fhirServer is not None,
    )
    fetched, counts = plan.fetched, plan.counts
    await _fetch(plan.needs, plan.partial, fetched, request, deps, counts, budget, issuer)
    await _fetch(
        followup_needs(service, request.context, fetched, profile=profile),
        {},
        fetched,
        request,
        deps,
        counts,
        budget,
        issuer,
    )
    return fetched, counts


_UNREADABLE = object()  # an optional need the EHR could not answer: left out of `fetched`


async def _fetch(
    needs: list[Need],
    partial: Mapping[str, Any],
    fetched: dict[str, Any],
    request: HookRequest,
    deps: HookDeps,
    counts: dict[str, int],
    budget: FetchBudget,
    issuer: str | None = None,
) -> None:
    if not needs:
        return
    if request.fhirServer is None:
        keys = ", ".join(n.key for n in needs)
        raise PreconditionFailed(f"prefetch incomplete ({keys}) and no fhirServer to fetch it from")
    base = request.fhirServer
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None

    async def get(need: Need) -> Any:
        if need.query.is_search:
            if need.key in partial:
                return await deps.fhir.complete(base, partial[need.key], token, budget)
            return await deps.fhir.search(base, need.query, token, budget)
        return await deps.fhir.read(base, need.query, token, budget)

    async def counted(need: Need) -> Any:
        if deps.metrics is None:
            return await get(need)
        try:
            result = await get(need)
        except FHIRUnavailable as exc:
            deps.metrics.fhir_request(issuer, exc.kind or "unavailable")
            raise
        except FHIRServerError:
            deps.metrics.fhir_request(issuer, "error")
            raise
        deps.metrics.fhir_request(issuer, "ok")
        return result

    async def one(need: Need) -> Any:
        if not need.optional:
            return await counted(need)
        try:
            return await counted(need)
        except FHIRUnavailable:
            raise  # a slow or unreachable EHR is the call's problem, not this search's
        except FHIRServerError:  # e.g. an EHR without Consent search: none is known (logged)
            counts[f"{need.key}_unreadable"] = 1
            return _UNREADABLE

    results = await asyncio.gather(*(one(n) for n in needs))
    for need, result in zip(needs, results, strict=True):
        if result is _UNREADABLE:
            continue
        if need.query.is_search:
            fetched[need.key] = result.resources
            counts["ehr_outcomes"] += len(result.outcomes)
        else:
            fetched[need.key] = result
    counts["fetched"] += len(needs)


async def answer_hook(
    service: Service,
    raw: bytes,
    deps: HookDeps,
    *,
    deadline: Deadline,
    launch_url: str | None = None,
    issuer: str | None = None,
) -> HookOutcome:
    """A hook call from its raw body: parsed on a Lane thread, then `run_hook`. At capacity or
    out of time: `{"cards": []}` (an EHR reads it as no guidance) with the reason for the log."""
    try:
        request = await deps.lane.run(
            deadline, lambda: parse_model(raw, HookRequest, max_depth=deps.max_json_depth)
        )
        outcome = await run_hook(
            service, request, deps, deadline=deadline, launch_url=launch_url, issuer=issuer
        )
        if canonical_uuid(request.hookInstance):  # for the log; anything else the EHR sent is not echoed
            outcome.details["hookInstance"] = request.hookInstance
        return outcome
    except Overloaded:
        return HookOutcome(dict(NO_GUIDANCE), "overloaded")
    except BudgetSpent:
        return HookOutcome(dict(NO_GUIDANCE), "budget-spent")


async def run_hook(
    service: Service,
    request: HookRequest,
    deps: HookDeps,
    *,
    deadline: Deadline | None = None,
    launch_url: str | None = None,
    issuer: str | None = None,
) -> HookOutcome:
    """`launch_url`: our explanation app's SMART launch URL; each card then links to it. `issuer`: the
    verified JWT `iss` of the calling EHR, which binds the `fhirServer` it may name and (with it)
    selects its vendor profile. Raises Overloaded/BudgetSpent (see `answer_hook`)."""
    deadline = deadline or Deadline.after(deps.budget_s)
    begun = time.perf_counter()  # the hook's latency for the guardrails: fetch, mapping, scoring, card
    prefetched = check_request(service, request, max_resources=deps.max_resources)
    lineup = deps.lifecycle.lineup(service.model_name) if deps.lifecycle is not None else None
    model = lineup.champion if lineup is not None else deps.models.get(service.model_name)
    if model is None:
        raise ModelNotFound(f"no {service.model_name} model is loaded")
    if request.fhirServer is not None and not deps.fhir_allowed(request.fhirServer, issuer):
        raise PreconditionFailed(
            "fhirServer is not a FHIR server this EHR is configured for; no request was sent"
        )

    profile = deps.profiles(request.fhirServer, issuer)
    try:
        async with asyncio.timeout(max(0.0, deadline.remaining() - min(deps.reserve_s, deps.budget_s / 4))):
            fetched, counts = await _gather(
                service, request, deps, profile, FetchBudget(deps.max_resources - prefetched), issuer
            )
    except (TimeoutError, FHIRUnavailable) as exc:
        # One answer for a slow and an unreachable EHR; the log line tells them apart.
        why = exc.kind if isinstance(exc, FHIRUnavailable) else "timeout"
        if why == "timeout" and deps.metrics is not None and not isinstance(exc, FHIRUnavailable):
            deps.metrics.fhir_request(issuer, "timeout")  # the fetches cut by the budget, once per call
        return HookOutcome(dict(NO_GUIDANCE), "fhir-unavailable", {"fhir": why})
    except FHIRServerError as exc:
        raise PreconditionFailed(f"required data could not be fetched: {exc.message}") from exc

    consent = _consent(request, fetched, deps)
    if not consent.decision_support:
        log.info(
            "no score: the patient declined decision support",
            extra={"event": {"service": service.id, "consent": consent.code}},
        )
        body = {"cards": [_consent_card(service, deps)]} if deps.consent_refused_card else dict(NO_GUIDANCE)
        return HookOutcome(body, "consent-refused", {**counts, "consent": consent.code})

    card_uuid = deps.new_uuid()
    scoring = ScoringInput(
        context=request.context,
        fetched=fetched,
        model=model,
        now=deps.clock(),
        pseudonymizer=deps.pseudonymizer,
        card_uuid=card_uuid,
        source=request.fhirServer or "",
        profile=profile,
    )
    role, canary_error = "champion", None
    if lineup is not None and lineup.canary is not None and isinstance(request.context.get("patientId"), str):
        patient_key = deps.pseudonymizer.pseudonym(
            "Patient", request.context["patientId"], source=request.fhirServer or ""
        )
        if in_canary(service.model_name, lineup.canary.model.version, patient_key, lineup.canary.share):
            role = "canary"
            scoring = replace(scoring, model=lineup.canary.model)
    try:
        scored = await deps.lane.run(
            deadline, service.score, scoring, stage=1
        )  # parsed already: served first
    except (Overloaded, BudgetSpent):
        raise
    except Exception as exc:
        if role != "canary" or lineup is None:
            raise
        # The canary failed: the champion answers (a failure only if the champion fails too).
        canary_error, role = type(exc).__name__, "champion"
        scoring = replace(scoring, model=lineup.champion)
        scored = await deps.lane.run(deadline, service.score, scoring, stage=1)
    model = scoring.model
    if scored is None:
        return HookOutcome(dict(NO_GUIDANCE), "not-applicable", counts)
    if isinstance(scored, NoCard):  # e.g. insufficient-data: the service's reason, and its counts
        if deps.drift is not None:  # a feed that stops shows as calls without a score
            deps.drift.observe_quality(model, issuer, scored.log)
        return HookOutcome(dict(NO_GUIDANCE), scored.reason, {**counts, **scored.log})
    if deps.drift is not None:
        deps.drift.observe(
            model, issuer, None if scored.row is None else scored.row[0], scored.probability, scored.log
        )
    card = scored.card
    if launch_url:
        link = explanation_link(
            launch_url, card_uuid=card_uuid, service_id=service.id, model_version=model.version
        )
        card = {**card, "links": [*card.get("links", ()), link]}

    risk = scored.risk_assessment
    if not consent.training:
        risk = labelled_no_reuse(risk)
    identities: tuple[str, ...] = ()
    if deps.keep_identity_hashes:
        patient = fetched.get("patient")
        tokens = identity_tokens(request.context, patient if isinstance(patient, dict) else None)
        identities = tuple(sorted({deps.pseudonymizer.token_hash(t) for t in tokens}))
    audit = card_audit(
        service_id=service.id,
        card_uuid=card_uuid,
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.manifest.model_sha256,
        features_sha256=scored.features_sha256,
        probability=scored.probability,
        band=scored.band,
        issuer=issuer,
        user_pseudonym=scored.user_pseudonym,
        consent=consent.code,
    )
    reason = "card"
    try:
        async with asyncio.timeout(max(0.01, deadline.remaining())):
            await deps.store.put_card(
                CardRecord(
                    card_uuid,
                    service.id,
                    scored.user_pseudonym,
                    risk,
                    time.time(),
                    tuple(s["uuid"] for s in card.get("suggestions", ())),
                    identities,
                    audit,
                )
            )
    except (TimeoutError, StoreError):
        # The advice still goes out; feedback for this card will be refused as unknown.
        reason = "card-unrecorded"
        if deps.metrics is not None:
            deps.metrics.store_error("put-card")
    details = {**counts, **scored.log}
    if consent.code:
        details["consent"] = consent.code
    after = None
    if lineup is not None and (lineup.challenged or canary_error):
        if lineup.canary is not None and isinstance(card.get("extension"), dict):
            ours = card["extension"].get(CARD_EXTENSION, {})
            card = {**card, "extension": {**card["extension"], CARD_EXTENSION: {**ours, "modelRole": role}}}
        details["model_role"] = role
        after = _challenger_work(
            service,
            deps,
            lineup,
            scoring,
            scored,
            role=role,
            latency_ms=1000 * (time.perf_counter() - begun),
            canary_error=canary_error,
        )
    return HookOutcome({"cards": [card]}, reason, details, after)


def _challenger_work(
    service: Service,
    deps: HookDeps,
    lineup: Lineup,
    scoring: ScoringInput,
    scored: ScoredCard,
    *,
    role: str,
    latency_ms: float,
    canary_error: str | None,
) -> Callable[[], Awaitable[None]]:
    """What is done after the answer went out: the shadow's score of the same data (on the
    lifecycle's own thread), both scores stored under the card's uuid, and the counters."""
    lifecycle = deps.lifecycle
    assert lifecycle is not None
    name = service.model_name
    subject = scored.risk_assessment.get("subject", {})
    patient = subject.get("identifier", {}).get("value") if isinstance(subject, dict) else None

    async def after() -> None:
        created = time.time()
        day = patient_day(patient, created)
        answered = scoring.model
        rows = [
            ModelScore(
                scoring.card_uuid,
                name,
                answered.version,
                service.id,
                role,
                scored.probability,
                scored.band,
                patient,
                created,
            )
        ]
        await lifecycle.counters.add(
            name,
            lineup.counted(answered.version),
            calls=1,
            alerts=int(scored.probability >= answered.threshold),
            latency_ms=latency_ms,
            patient_day=day,
        )
        if deps.metrics is not None and role == "canary":
            deps.metrics.canary_call(service.id, answered.version)
        if canary_error is not None and lineup.canary is not None:
            await lifecycle.counters.add(name, lineup.counted(lineup.canary.model.version), calls=1, errors=1)
            log.warning(
                "canary failed; the champion answered",
                extra={
                    "event": {"model": name, "version": lineup.canary.model.version, "error": canary_error}
                },
            )
        if lineup.shadow is not None and lifecycle.shadow_slot():
            shadow = lineup.shadow.model
            shadow_input = replace(scoring, model=shadow)
            started = time.perf_counter()

            def shadow_score() -> ScoredCard | NoCard | None:
                if scored.row is None:
                    return service.score(shadow_input)
                # The row the champion scored (every loaded version has this code's feature spec).
                p = float(shadow.predict(scored.row)[0])
                return replace(scored, probability=p, band=shadow.band(p), row=None)

            try:
                found = await lifecycle.in_background(shadow_score)
            except Exception as exc:
                found = None
                await lifecycle.counters.add(name, lineup.counted(shadow.version), calls=1, errors=1)
                log.warning(
                    "shadow scoring failed",
                    extra={"event": {"model": name, "version": shadow.version, "error": type(exc).__name__}},
                )
            if isinstance(found, ScoredCard):
                if deps.metrics is not None:
                    deps.metrics.shadow_result(
                        service.id,
                        "shadow",
                        answered.version,
                        shadow.version,
                        agree=found.band == scored.band,
                    )
                rows.append(
                    ModelScore(
                        scoring.card_uuid,
                        name,
                        shadow.version,
                        service.id,
                        "shadow",
                        found.probability,
                        found.band,
                        patient,
                        created,
                    )
                )
                await lifecycle.counters.add(
                    name,
                    lineup.counted(shadow.version),
                    calls=1,
                    alerts=int(found.probability >= shadow.threshold),
                    latency_ms=1000 * (time.perf_counter() - started),
                    patient_day=day,
                )
        lifecycle.record(rows)

    return after


def _consent(request: HookRequest, fetched: Mapping[str, Any], deps: HookDeps) -> ConsentDecision:
    found = fetched.get(CONSENT_KEY)
    patient_id = request.context.get("patientId")
    if not isinstance(found, list) or not isinstance(patient_id, str):
        return ConsentDecision()
    return consent_decision(found, patient_id, deps.clock())


def _consent_card(service: Service, deps: HookDeps) -> dict[str, Any]:
    """The info card a site may prefer to silence when decision support is refused: no score."""
    return {
        "uuid": deps.new_uuid(),
        "summary": "No risk score: the patient has declined the use of their data for decision support",
        "indicator": "info",
        "source": {"label": service.title},
    }
