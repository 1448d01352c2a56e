"""What a hook call can use from its prefetch, and what must be fetched: the CDS Hooks 2.0
prefetch rules as one pure function (the pipeline only carries out the plan).

For each of a service's prefetch templates:
- a template the context cannot fill (no `encounterId`) is skipped, as the EHR would;
- a key the EHR did not send, one that is not FHIR, or an OperationOutcome (the EHR failed to
  prefetch) is fetched;
- `null` means the EHR found nothing: an empty search, an absent resource, nothing fetched;
- a read sent as a Bundle holding exactly one resource is that resource (any other count: fetched);
- a search Bundle with a `next` link is a first page to complete; its OperationOutcome entries
  are skipped and counted (`ehr_outcomes`);
- the Consent search is asked only when there is a FHIR server to ask (docs/privacy.md);
- Observation searches the EHR left to us become one search per category the EHR's vendor
  profile names, except categories already prefetched or partly prefetched.
Follow-up reads that only the first round reveals (an ICU bed's Location) are the service's
`followups`, planned by `followup_needs` once the first round is in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_mappings import (
    GENERIC,
    FhirQuery,
    SearchPage,
    VendorProfile,
    observation_queries,
    read_search_page,
)

from .consent import CONSENT_KEY
from .prefetch import render_template
from .service import Service

__all__ = ["FetchPlan", "Need", "followup_needs", "plan_fetch"]


@dataclass(frozen=True)
class Need:
    key: str
    query: FhirQuery
    # An EHR that cannot answer this search (no Consent search) means "none known", not a failed call.
    optional: bool = False


@dataclass
class FetchPlan:
    fetched: dict[str, Any] = field(default_factory=dict)  # key -> resource, or list of resources
    needs: list[Need] = field(default_factory=list)  # what to ask the FHIR server for
    partial: dict[str, SearchPage] = field(default_factory=dict)  # key -> first page to complete
    counts: dict[str, int] = field(default_factory=lambda: {"prefetched": 0, "fetched": 0, "ehr_outcomes": 0})


def _from_prefetch(key: str, query: FhirQuery, value: Any) -> tuple[Any, bool]:
    """(usable value, needs fetching). Search values become a SearchPage."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return None, True  # not FHIR: the EHR failed to prefetch
    if value["resourceType"] == "OperationOutcome":
        return None, True
    if not query.is_search:
        if value["resourceType"] == "Bundle":
            entries = [e.get("resource") for e in value.get("entry") or () if isinstance(e, dict)]
            found = [
                r for r in entries if isinstance(r, dict) and r.get("resourceType") != "OperationOutcome"
            ]
            return (found[0] if len(found) == 1 else None), len(found) != 1
        return value, False
    page = read_search_page(value, f"prefetch.{key}")
    return page, page.next_url is not None


def _observation_needs(
    service: Service, plan: FetchPlan, patient_id: str, profile: VendorProfile
) -> list[Need]:
    keys = service.observation_keys
    needs, partial, fetched = plan.needs, plan.partial, plan.fetched
    if not any(n.key in keys and n.key not in partial for n in needs):
        return needs
    have = {keys[k] for k in keys if k in fetched or k in partial}
    key_of = {category: key for key, category in keys.items()}
    kept = [n for n in needs if n.key not in keys or n.key in partial]
    for category, query in observation_queries(profile, patient_id).items():
        if category not in have:
            kept.append(Need(key_of.get(category, f"observations:{category}"), query))
    return kept


def plan_fetch(
    service: Service,
    context: Mapping[str, Any],
    prefetch: Mapping[str, Any] | None,
    *,
    profile: VendorProfile,
    has_fhir_server: bool,
) -> FetchPlan:
    """What of `prefetch` is usable for `service` and what must be fetched (the rules above).
    Raises InvalidIdError for a context value that is not a FHIR id, MappingError for a prefetch
    Bundle that is not one."""
    prefetch = prefetch or {}
    plan = FetchPlan()
    for key, template in service.prefetch.items():
        query = render_template(template, context)
        if query is None:
            continue  # a token the context cannot fill (e.g. no encounterId)
        if key == CONSENT_KEY and key not in prefetch and not has_fhir_server:
            continue  # nothing to ask: no Consent is known
        if key in prefetch:
            if prefetch[key] is None:
                plan.fetched[key] = [] if query.is_search else None
                plan.counts["prefetched"] += 1
                continue
            value, missing = _from_prefetch(key, query, prefetch[key])
            if not missing:
                if query.is_search:
                    plan.fetched[key] = value.resources
                    plan.counts["ehr_outcomes"] += len(value.outcomes)
                else:
                    plan.fetched[key] = value
                plan.counts["prefetched"] += 1
                continue
            if query.is_search and value is not None:
                plan.partial[key] = value  # a first page to complete
        plan.needs.append(Need(key, query, optional=key == CONSENT_KEY))
    patient_id = context.get("patientId")
    if isinstance(patient_id, str):
        plan.needs = _observation_needs(service, plan, patient_id, profile)
    return plan


def followup_needs(
    service: Service,
    context: Mapping[str, Any],
    fetched: Mapping[str, Any],
    *,
    profile: VendorProfile = GENERIC,
) -> list[Need]:
    """The second round: reads the first round's resources reveal (none for most services), with
    the stay chosen as the scoring will choose it (the vendor profile's encounter classes)."""
    if service.followups is None:
        return []
    return [Need(key, query) for key, query in service.followups(context, fetched, profile).items()]
