"""Which model versions the servers serve, and the only writers of that state: `cds models
activate | promote | rollback | retire` and the canary guardrails (cds/lifecycle.py).

The record store's registry state (champion per model, and each version's status: candidate,
shadow, canary, active, retired), shared by every worker and machine, wins over the file
registry's `ACTIVE` pointer, which each machine has its own copy of. Every change is an audit
entry with the actor and the reason. A promotion to canary or active passes the gate first
(models/gate.py: held-out comparison with the champion, subgroup gaps, golden set, loads and
scores as the server loads it); a failed gate refuses it and says why.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import (
    GateCheck,
    GatePolicy,
    GateReport,
    ModelError,
    ModelNotFound,
    ModelRegistry,
    PromotionRefused,
    RiskModel,
    check_golden,
    golden_check,
    judge,
    load_golden,
    model_task,
    sepsis_held_out_pair,
    serving_device,
    task_held_out_pair,
)
from models.site import site_table_seed

from .errors import BadRequest, StoreError
from .logs import scrub_message
from .stores import RecordStore, StatusChange

__all__ = [
    "PROMOTION_TARGETS",
    "Promotion",
    "activate_model",
    "check_actor",
    "promote",
    "retire",
    "rollback",
    "run_gate",
    "stored_versions",
]

log = logging.getLogger("cds.models")

PROMOTION_TARGETS = ("shadow", "canary", "active")
_ACTOR = re.compile(r"[A-Za-z0-9._@:+-]{1,64}")
REASON_MAX_CHARS = 500
DEFAULT_POLICY = GatePolicy()


async def stored_versions(store: RecordStore) -> dict[str, str]:
    """The versions set in the store; none (the `ACTIVE` files decide) when it cannot be read, so a
    database outage at start does not stop the hooks."""
    try:
        return await store.active_versions()
    except StoreError:
        log.warning(
            "served model versions could not be read from the record store: using the registry's ACTIVE files"
        )
        return {}


async def activate_model(store: RecordStore, registry: ModelRegistry, model: str, version: str) -> str | None:
    """Serve `version` of `model` (running servers switch within CDS_MODEL_POLL_S); return the version
    it replaces. The version must load with this code's features, or every server would refuse it.
    No gate: the operator's override (`cds models promote --to active` is the gated path)."""
    if version not in registry.versions(model):
        raise ModelNotFound(f"no {model} version {version} in the registry at {registry.root}")
    registry.load(model, model_task(model).feature_spec(), version)  # FeatureSchemaMismatch, bad sha256
    return await store.set_active_version(model, version)


def check_actor(actor: str) -> str:
    """An operator's account name, not free text: letters, digits and `._@:+-`, at most 64."""
    if not _ACTOR.fullmatch(actor):
        raise BadRequest("--actor must be an account name (letters, digits, ._@:+-; at most 64 characters)")
    return actor


def _reason(reason: str) -> str:
    """Free text, so scrubbed of identifier-shaped strings (as log lines are) and bounded."""
    return scrub_message(reason.strip())[:REASON_MAX_CHARS]


def serving_model(registry: ModelRegistry, model: str, version: str | None) -> RiskModel:
    """A version loaded exactly as a server loads it (cds/lifecycle.py, cds/app.py)."""
    spec = model_task(model).feature_spec()
    return RiskModel(registry.load(model, spec, version), spec, device=serving_device(), nthread=1)


@dataclass
class Promotion:
    report: GateReport
    change: StatusChange | None = None
    notes: list[str] = field(default_factory=list)


def run_gate(
    registry: ModelRegistry,
    model: str,
    version: str,
    target: str,
    *,
    active_version: str | None,
    data: Path | None,
    patients: int | None = None,
    policy: GatePolicy = DEFAULT_POLICY,
) -> GateReport:
    """The gate for promoting `version` to `target`: loads and scores as served, the golden set,
    and (canary, active) the held-out comparison with the active version on the same patients."""
    report = GateReport(model, version, active_version)
    try:
        candidate = serving_model(registry, model, version)
    except ModelError as exc:
        report.checks.append(GateCheck("loads as served", None, "no", "loads", False, str(exc)))
        return report
    task = model_task(model)
    golden = load_golden(model)
    if golden is None:
        report.checks.append(GateCheck("loads as served", None, "yes", "loads", True))
        report.checks.append(GateCheck("golden set", None, "-", f"none defined for {model}", True))
    else:
        try:
            results = check_golden(candidate, task, golden)
        except Exception as exc:  # any failure to score is the finding
            report.checks.append(
                GateCheck("loads and scores as served", None, "no", "scores", False, type(exc).__name__)
            )
            return report
        report.checks.append(GateCheck("loads and scores as served", None, "yes", "scores + SHAP", True))
        report.checks.append(golden_check(results))
    if target not in ("canary", "active"):
        return report
    if data is None or not data.exists():
        report.checks.append(
            GateCheck("held-out comparison", None, None, "required", False, f"no held-out data at {data}")
        )
        return report
    active = (
        serving_model(registry, model, active_version)
        if active_version and active_version != version
        else None
    )
    if model == "sepsis":
        a, c, n = sepsis_held_out_pair(active, candidate, data, patients=patients)
    else:
        from models.site_readmission import readmission_site_pair

        pair = readmission_site_pair(active, candidate, data) if model == "readmission" else None
        a, c, n = pair if pair is not None else task_held_out_pair(task, active, candidate, data)
    site_seed = site_table_seed(candidate.manifest)
    where = f"site held-out half, seed {site_seed}" if site_seed is not None else None
    where = where or f"seed {candidate.manifest.seed}"
    report.checks.append(GateCheck("held-out patients", n, n, f"{data.name}, {where}", n > 0))
    judge(report, a, c, policy)
    return report


async def _champion(store: RecordStore, registry: ModelRegistry, model: str) -> str | None:
    served = await stored_versions(store)
    if model in served:
        return served[model]
    try:
        return registry.active_version(model)
    except ModelNotFound:
        return None


async def promote(
    store: RecordStore,
    registry: ModelRegistry,
    model: str,
    version: str,
    target: str,
    *,
    actor: str,
    reason: str,
    share: float = 0.1,
    data: Path | None = None,
    patients: int | None = None,
    policy: GatePolicy = DEFAULT_POLICY,
) -> Promotion:
    """Gate, then set the status; PromotionRefused (with the report) when the gate fails."""
    if target not in PROMOTION_TARGETS:
        raise BadRequest(f"--to must be one of {', '.join(PROMOTION_TARGETS)}")
    if version not in registry.versions(model):
        raise ModelNotFound(f"no {model} version {version} in the registry at {registry.root}")
    if target == "canary" and not 0.0 < share <= 0.5:
        raise BadRequest("--share must be above 0 and at most 0.5 (beyond that, promote to active)")
    champion = await _champion(store, registry, model)
    if target != "active" and champion == version:
        raise BadRequest(f"{model} v{version} is the active version; it cannot also be its own {target}")
    report = run_gate(
        registry, model, version, target, active_version=champion, data=data, patients=patients, policy=policy
    )
    if not report.passed:
        refused = PromotionRefused(
            f"{model} v{version} not promoted to {target}: " + "; ".join(report.failures())
        )
        refused.report = report  # type: ignore[attr-defined]
        raise refused
    audit: dict[str, Any] = {
        "actor": check_actor(actor),
        "reason": _reason(reason),
        "action": "promote",
        "gate": {"passed": True, "checks": {c.name: c.passed for c in report.checks}},
    }
    change = await store.set_version_status(
        model, version, target, share=share if target == "canary" else 0.0, audit=audit
    )
    file_champion = champion if target == "active" and champion != version else None
    if file_champion is not None and change is not None and file_champion not in change.displaced:
        # The champion came from the registry's ACTIVE file, so the store had no status to retire:
        # record it, or `cds models list` would call the version it replaced a candidate.
        await store.set_version_status(
            model,
            file_champion,
            "retired",
            audit={"actor": audit["actor"], "reason": audit["reason"], "action": "displaced", "by": version},
        )
    return Promotion(report, change)


async def rollback(
    store: RecordStore,
    registry: ModelRegistry,
    model: str,
    *,
    actor: str,
    reason: str,
    to: str | None = None,
) -> tuple[str, StatusChange | None]:
    """The champion before this one (or `to`) becomes active again; the current one is retired. No
    gate (it served before), but it must still load with this code."""
    target = to or await store.previous_active(model)
    if target is None:  # the first champion the store named replaced the registry's ACTIVE file's
        file_champion = registry.active_version(model) if registry.versions(model) else None
        if file_champion is not None and file_champion != (await stored_versions(store)).get(model):
            target = file_champion
    if target is None:
        raise ModelError(f"{model} has no previous active version to roll back to (give --to)")
    serving_model(registry, model, target)
    change = await store.set_version_status(
        model,
        target,
        "active",
        audit={"actor": check_actor(actor), "reason": _reason(reason), "action": "rollback"},
    )
    return target, change


async def retire(
    store: RecordStore, model: str, version: str, *, actor: str, reason: str
) -> StatusChange | None:
    """End a shadow or canary (or a candidate); the champion is replaced by rollback or promotion."""
    served = await stored_versions(store)
    if served.get(model) == version:
        raise BadRequest(f"{model} v{version} is the active version: roll back or promote another instead")
    return await store.set_version_status(
        model,
        version,
        "retired",
        audit={"actor": check_actor(actor), "reason": _reason(reason), "action": "retire"},
    )
