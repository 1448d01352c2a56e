"""The SMART explanation app's logic, one object built at start and handed to routes as a FastAPI
dependency: launch (EHR or standalone), the EHR's redirect back, the app page's content, feedback.

Order on the redirect back, each step before anything is sent or kept: the state is taken (single
use; replayed, expired and forged states each get their own page), the EHR's `error` is shown,
the code is marked used (a replay is never sent again), the code is exchanged with the PKCE
verifier, the id_token is verified, the card is found and checked to be about the launch's
patient. Only then is a session opened; any failure leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from fhir_mappings import Pseudonymizer, is_fhir_id
from hooks import SERVICES
from models import RiskModel

from ..feedback import FeedbackRules, record_feedback
from ..fhir_client import FhirClient
from ..logs import log_event
from ..schemas import FeedbackRequest, canonical_uuid
from ..settings import Settings, SmartEhr
from ..stores import CardRecord, RecordStore
from .errors import (
    CardNotForPatient,
    CardNotFound,
    EhrRefused,
    LaunchExpired,
    MissingLaunchContext,
    ReplayedCode,
    ReplayedState,
    SessionExpired,
    TokenRefused,
    UnknownIssuer,
    UnknownState,
)
from .explain import CardView, card_view
from .flows import Flow, FlowStore, Session, SessionStore, SharedKV, shared_kv
from .oauth import (
    SmartConfiguration,
    authorization_url,
    discover,
    exchange_code,
    new_pkce,
    refresh,
    scopes_for,
    verify_id_token,
)
from .trend import sepsis_trend

__all__ = ["SmartApp"]

log = logging.getLogger("cds.smart")

_DISCOVERY_TTL_S = 300.0


def card_from_context(context: dict[str, Any], hint: str | None) -> str | None:
    """The card to explain: the token response's `appContext` (CDS Hooks passes the card link's
    appContext there: a JSON string, here `{"cardUuid": ...}`), else a `RiskAssessment` in
    `fhirContext`, else our own `card` launch parameter."""
    app_context = context.get("appContext")
    if isinstance(app_context, str):
        try:
            app_context = json.loads(app_context)
        except ValueError:
            app_context = canonical_uuid(app_context)
    if isinstance(app_context, dict) and (found := canonical_uuid(app_context.get("cardUuid"))):
        return found
    if isinstance(app_context, str):
        return app_context
    for item in context.get("fhirContext") or ():
        if isinstance(item, dict):
            ref = item.get("reference")
            if (
                isinstance(ref, str)
                and ref.startswith("RiskAssessment/")
                and (found := canonical_uuid(ref.split("/", 1)[1]))
            ):
                return found
            if item.get("type") == "RiskAssessment" and (found := canonical_uuid(item.get("id"))):
                return found
    return canonical_uuid(hint)


def relative_user(fhir_user: Any, iss: str) -> str | None:
    """`fhirUser` may be absolute (`<base>/Practitioner/1`) or relative (`Practitioner/1`)."""
    if not isinstance(fhir_user, str):
        return None
    parts = fhir_user.removeprefix(iss.rstrip("/") + "/").rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] in (
        "Practitioner",
        "PractitionerRole",
        "Patient",
        "RelatedPerson",
        "Person",
    ):
        if is_fhir_id(parts[-1]):
            return f"{parts[-2]}/{parts[-1]}"
    return None


@dataclass
class SmartApp:
    settings: Settings
    http: httpx.AsyncClient
    fhir: FhirClient
    store: RecordStore
    models: dict[str, RiskModel]
    pseudonymizer: Pseudonymizer
    flows: FlowStore = field(init=False)
    sessions: SessionStore = field(init=False)
    _configs: dict[str, SmartConfiguration] = field(default_factory=dict, init=False)

    kv: SharedKV | None = None  # default: Redis when CDS_REDIS_URL is set, else the embedded file

    def __post_init__(self) -> None:
        if self.kv is None:
            self.kv = shared_kv(
                self.settings.redis_url,
                self.settings.var_dir,
                prefix=self.settings.redis_prefix,
                timeout_s=max(self.settings.redis_timeout_s, 1.0),
            )
        self.flows = FlowStore(self.kv, ttl_s=self.settings.smart_flow_ttl_s)
        self.sessions = SessionStore(self.kv, ttl_s=self.settings.smart_session_ttl_s)

    async def close(self) -> None:
        if self.kv is not None:
            await self.kv.close()

    # --- where we are and who may frame us ---------------------------------------------------
    def redirect_uri(self, request_base: str) -> str:
        base = self.settings.public_url.rstrip("/") if self.settings.public_url else request_base.rstrip("/")
        return f"{base}/smart/callback"

    def frame_origins(self, iss: str | None = None) -> tuple[str, ...]:
        ehrs = [e for e in self.settings.smart_ehrs if iss is None or e.iss == iss]
        return tuple(o for e in ehrs for o in e.frame_origins)

    def _ehr(self, iss: str | None) -> SmartEhr:
        ehr = self.settings.smart_ehr(iss) if iss else None
        if ehr is None:
            raise UnknownIssuer("launch from an EHR that is not configured")
        return ehr

    async def _config(self, ehr: SmartEhr) -> SmartConfiguration:
        cached = self._configs.get(ehr.iss)
        if cached is not None and time.time() - cached.fetched < _DISCOVERY_TTL_S:
            return cached
        config = await discover(self.http, ehr.iss, timeout_s=self.settings.smart_timeout_s)
        self._configs[ehr.iss] = config
        return config

    # --- launch --------------------------------------------------------------------------------
    async def launch(
        self, *, iss: str | None, launch: str | None, card: str | None, request_base: str
    ) -> str:
        """The EHR's authorize URL to send the browser to (EHR launch with `launch`, else standalone)."""
        if not iss:
            raise MissingLaunchContext("no iss: the app must be launched from an EHR")
        ehr = self._ehr(iss)
        config = await self._config(ehr)
        verifier, challenge = new_pkce()
        nonce = new_pkce()[0][:32]
        redirect_uri = self.redirect_uri(request_base)
        flow = Flow(
            ehr.iss,
            config,
            verifier,
            nonce,
            redirect_uri,
            ehr_launch=launch is not None,
            card_hint=canonical_uuid(card),
        )
        state = await self.flows.start(flow)
        scope = scopes_for(config, ehr_launch=launch is not None, online_access=ehr.online_access)
        log_event(log, "smart launch", ehr_launch=launch is not None, card_hint=flow.card_hint is not None)
        return authorization_url(
            config,
            ehr,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            challenge=challenge,
            nonce=nonce,
            launch=launch,
        )

    # --- the EHR's redirect back ------------------------------------------------------------
    async def callback(self, params: dict[str, str]) -> str:
        """The new session's handle."""
        state = params.get("state")
        if not state:
            raise UnknownState("the redirect back carries no state")
        flow, why = await self.flows.take(state)
        if flow is None:
            log_event(log, "smart callback refused", reason=f"state-{why}")
            raise {"replayed": ReplayedState, "expired": LaunchExpired}.get(why, UnknownState)(f"state {why}")
        if "error" in params:
            error = params["error"] if re.fullmatch(r"[a-z_]{1,40}", params["error"]) else "unknown"
            log_event(log, "smart callback refused", reason="ehr-error", ehr_error=error)
            raise EhrRefused(f"the EHR answered {error}", ehr_error=error)
        code = params.get("code")
        if not code:
            raise EhrRefused("the EHR sent neither a code nor an error", ehr_error="no_code")
        if not await self.flows.use_code(code):
            log_event(log, "smart callback refused", reason="code-replayed")
            raise ReplayedCode("code presented twice")
        ehr = self._ehr(flow.iss)
        timeout = self.settings.smart_timeout_s
        try:
            token = await exchange_code(
                self.http,
                ehr,
                flow.config,
                code=code,
                verifier=flow.verifier,
                redirect_uri=flow.redirect_uri,
                timeout_s=timeout,
            )
        except TokenRefused as exc:
            log_event(log, "smart callback refused", reason="token-refused", ehr_error=exc.ehr_error)
            raise
        user = None
        if token.id_token is not None:
            try:
                claims = await verify_id_token(
                    self.http, ehr, flow.config, token.id_token, nonce=flow.nonce, timeout_s=timeout
                )
            except Exception:
                log_event(log, "smart callback refused", reason="bad-id-token")
                raise
            user = relative_user(claims.get("fhirUser") or claims.get("profile"), ehr.iss)
        patient = token.context.get("patient")
        if not is_fhir_id(patient):
            raise MissingLaunchContext("the token response names no patient")
        encounter = token.context.get("encounter")
        encounter = encounter if is_fhir_id(encounter) else None
        card_uuid = card_from_context(token.context, flow.card_hint)
        if card_uuid is None:
            raise MissingLaunchContext("no card in the launch context")
        await self._card_for(ehr, card_uuid, patient)  # before a session exists
        session = Session(ehr.iss, flow.config, token, patient, encounter, card_uuid, user)
        handle = await self.sessions.open(session)
        log_event(
            log,
            "smart session opened",
            ehr_launch=flow.ehr_launch,
            refresh=token.refresh_token is not None,
            id_token=token.id_token is not None,
        )
        return handle

    async def _card_for(self, ehr: SmartEhr, card_uuid: str, patient: str) -> tuple[CardRecord, CardView]:
        cards = await self.store.get_cards([card_uuid])
        record = cards.get(card_uuid)
        if record is None or record.service_id not in SERVICES:
            raise CardNotFound("no such card")
        service = SERVICES[record.service_id]
        model = self.models.get(service.model_name)
        labels = {f.name: (f.label, f.unit) for f in model.manifest.features} if model else {}
        view = card_view(card_uuid, record.service_id, record.risk_assessment, labels)
        sources = {ehr.iss, *ehr.card_sources, ""}
        if view.subject not in {self.pseudonymizer.pseudonym("Patient", patient, source=s) for s in sources}:
            log_event(log, "smart card refused", reason="card-not-for-patient")
            raise CardNotForPatient("the card's patient is not the launch's")
        return record, view

    # --- the session -------------------------------------------------------------------------
    async def session(self, handle: str) -> Session:
        session = await self.sessions.get(handle)
        if session is None:
            raise SessionExpired("unknown or expired session")
        token = session.token
        if token.expires_at is not None and token.expires_at - time.time() < 30:
            if token.refresh_token is None:
                raise SessionExpired("the access token expired and the EHR offered no refresh")
            try:
                renewed = await refresh(
                    self.http,
                    self._ehr(session.iss),
                    session.config,
                    token.refresh_token,
                    timeout_s=self.settings.smart_timeout_s,
                )
            except TokenRefused as exc:
                log_event(log, "smart refresh refused", ehr_error=exc.ehr_error)
                raise SessionExpired("the EHR refused to refresh the access token") from exc
            # a refresh token that is not rotated stays the one to use next time
            session.token = (
                renewed
                if renewed.refresh_token
                else dataclasses.replace(renewed, refresh_token=token.refresh_token)
            )
            await self.sessions.save(session)  # every worker uses the refreshed token now
            log_event(log, "smart token refreshed")
        return session

    async def card(self, session: Session) -> tuple[CardRecord, CardView]:
        return await self._card_for(self._ehr(session.iss), session.card_uuid, session.patient)

    async def trend(self, session: Session, view: CardView) -> tuple[Any, str | None]:
        """(Trend or None, why not). Computed once per session."""
        if view.service_id != "sepsis-risk":
            return None, None
        if session.trend is None:
            model = self.models.get("sepsis")
            if model is None:
                return None, "The sepsis model is not loaded."
            try:
                session.trend = (
                    await asyncio.wait_for(
                        sepsis_trend(
                            self.fhir,
                            session.iss,
                            session.token.access_token,
                            patient_id=session.patient,
                            encounter_id=session.encounter,
                            model=model,
                            pseudonymizer=self.pseudonymizer,
                            now=datetime.now(UTC),
                            profile=self.settings.vendor_profile(session.iss),
                        ),
                        timeout=4 * self.settings.smart_timeout_s,
                    )
                    or "none"
                )
            except Exception as exc:  # the page still shows the card; the log says why (type only)
                log_event(log, "smart trend failed", error=type(exc).__name__)
                return None, "The trend could not be computed from the EHR's data just now."
        return (None, None) if session.trend == "none" else (session.trend, None)

    def decided_by(self, session: Session) -> str:
        """Who decides in the app: the signed-in SMART `fhirUser`, as the keyed pseudonym the hook
        path gives the same user (keyed by the EHR's FHIR base), never the id itself. Without an
        id_token the app does not know who it is: "" (the Provenance says "unknown user"), not the
        user the hook call named."""
        if session.user is None:
            return ""
        kind = session.user.split("/", 1)[0]
        return self.pseudonymizer.pseudonym(kind, session.user, source=session.iss)

    async def record(self, session: Session, record: CardRecord, decision: str, comment: str | None) -> str:
        """Feedback through the same code path as CDS Hooks feedback (one Provenance per card). The
        same decision sent again in a session keeps its first timestamp, so it changes nothing."""
        service = SERVICES[record.service_id]
        comment = (comment or "").strip() or None
        if decision == "agree":
            if not record.suggestion_uuids:
                raise MissingLaunchContext("agreement needs a suggestion to accept")
            item: dict[str, Any] = {
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": s} for s in record.suggestion_uuids],
            }
            said = "agreed (suggestion accepted)"
        else:
            index = (
                int(decision.removeprefix("override:")) if re.fullmatch(r"override:\d{1,2}", decision) else -1
            )
            if not 0 <= index < len(service.override_reasons):
                raise MissingLaunchContext("unknown override reason")
            reason = service.override_reasons[index]
            item = {
                "outcome": "overridden",
                "overrideReason": {
                    "reason": reason.coding(),
                    **({"userComment": comment} if comment else {}),
                },
            }
            said = f"overridden: {reason.display}"
        key = (decision, comment)
        at = session.decisions.setdefault(key, time.time())
        body = FeedbackRequest.model_validate(
            {
                "feedback": [
                    {
                        "card": record.card_uuid,
                        "outcomeTimestamp": datetime.fromtimestamp(at, UTC).isoformat(),
                        **item,
                    }
                ]
            }
        )
        result = await record_feedback(
            service,
            body,
            self.store,
            now=datetime.now(UTC),
            rules=FeedbackRules.from_settings(self.settings),
            pseudonymizer=self.pseudonymizer,
            decided_by=self.decided_by(session),
        )
        status = result["results"][0]["status"]
        log_event(log, "smart feedback", service=service.id, status=status, outcome=item["outcome"])
        session.recorded = said
        await self.sessions.save(session)
        return status
