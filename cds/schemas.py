"""CDS Hooks 2.0 wire models, spelled as the specification spells them: what we receive (hook
requests, feedback) and what we send (discovery, cards), the latter strict so that tests hold
every response to the spec (required fields, allowed values, no null or empty values)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AcceptedSuggestion",
    "Action",
    "Card",
    "CardsResponse",
    "Coding",
    "DiscoveryResponse",
    "FeedbackItem",
    "FeedbackRequest",
    "FhirAuthorization",
    "HookRequest",
    "Link",
    "OverrideReasonFeedback",
    "ServiceDescription",
    "Source",
    "Suggestion",
    "assert_no_empty",
    "canonical_uuid",
]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def canonical_uuid(value: Any) -> str | None:
    """A hookInstance or card uuid in lower case, or None for anything else (which is then never
    echoed into a log or a page)."""
    return value.lower() if isinstance(value, str) and _UUID.fullmatch(value) else None


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1)
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def __repr__(self) -> str:  # the token must never reach a log
        return (
            f"FhirAuthorization(token_type={self.token_type!r}, scope={self.scope!r}, access_token=<hidden>)"
        )

    __str__ = __repr__


_FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"
_CONTEXT_SCHEMA: dict[str, Any] = {
    "properties": {
        "userId": {
            "type": "string",
            "pattern": r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$",
        },
        "patientId": {"type": "string", "pattern": _FHIR_ID},
        "encounterId": {"type": "string", "pattern": _FHIR_ID},
    },
    "required": ["userId", "patientId"],
}


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1, json_schema_extra={"examples": ["patient-view", "encounter-discharge"]})
    hookInstance: str = Field(min_length=1)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    # The fields our hooks read, in the OpenAPI document (the context stays open: hooks differ).
    context: dict[str, Any] = Field(json_schema_extra=_CONTEXT_SCHEMA)
    prefetch: dict[str, Any] | None = None

    @field_validator("fhirServer")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("fhirServer must be an absolute http(s) URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _server_with_authorization(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is given")
        return self


class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")

    system: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None


class OverrideReasonFeedback(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: Coding | None = None
    userComment: str | None = None


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReasonFeedback | None = None
    outcomeTimestamp: datetime

    @field_validator("outcomeTimestamp")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("outcomeTimestamp must carry a time zone (RFC 3339)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackItem:
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("overrideReason is only for overridden outcomes")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only for accepted outcomes")
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required for accepted outcomes")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    feedback: list[FeedbackItem] = Field(min_length=1)


# --- What we send ---------------------------------------------------------------------------


def assert_no_empty(value: Any, path: str = "$") -> None:
    """CDS Hooks: JSON values SHALL NOT be null or empty ("", [], {}) unless the spec says so."""
    if value is None or value == "" or value == [] or value == {}:
        raise ValueError(f"{path} is null or empty")
    if isinstance(value, dict):
        for k, v in value.items():
            assert_no_empty(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_no_empty(v, f"{path}[{i}]")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_empty(cls, data: Any) -> Any:
        if isinstance(data, dict):
            assert_no_empty(data)
        return data


class ServiceDescription(_Out):
    hook: str
    title: str | None = None
    description: str
    id: str = Field(pattern=r"^[A-Za-z0-9._~-]+$")
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None
    extension: dict[str, Any] | None = None


class DiscoveryResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    services: list[ServiceDescription]  # may be empty: a server with no services


class OutCoding(_Out):
    system: str | None = None
    code: str
    display: str | None = None


class ReasonCoding(OutCoding):
    display: str  # overrideReasons: the service MUST populate display


class Source(_Out):
    label: str
    url: str | None = Field(default=None, pattern=r"^https?://")
    icon: str | None = Field(default=None, pattern=r"^https?://")
    topic: OutCoding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _target(self) -> Action:
        if self.type in ("create", "update") and (
            self.resource is None or "resourceType" not in self.resource
        ):
            raise ValueError(f"a {self.type} action needs a FHIR resource")
        return self


class Suggestion(_Out):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(_Out):
    label: str
    url: str = Field(pattern=r"^https?://")
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _app_context_only_for_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only valid for smart links")
        return self


class Card(_Out):
    uuid: str | None = None
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[ReasonCoding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selection(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present")
        return self


class CardsResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cards: list[Card]  # may be empty: no guidance
    systemActions: list[dict[str, Any]] | None = None
