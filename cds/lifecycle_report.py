"""`cds shadow report` and `cds canary report`: how a challenger compares with the champion on the
same live patients, from the scores kept beside each card (`model_score`), the clinicians' feedback
(Provenance) and the shared counters. Aggregates only: no card uuid or pseudonym leaves here.

An alert is a score in the `high` band (the band at or above the version's alert threshold); a
patient-day is one patient (pseudonym) on one UTC date with at least one score.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from models import auroc, bootstrap_by_group

from .lifecycle import Counters, canary_run
from .stores import ModelScore, RecordStore

__all__ = ["Outcomes", "canary_report", "outcome_auroc", "shadow_report"]

ALERT_BAND = "high"
# pseudonym -> the Sepsis-3 onset (epoch seconds), None for a patient who had no sepsis; patients
# not in it have no known outcome and are left out of the outcome figures.
Outcomes = Mapping[str, float | None]
HORIZON_S = 6 * 3600.0  # PhysioNet 2019: a score counts as positive from 6 h before the onset on
_LABEL = "positive when scored at or after onset - 6 h (PhysioNet 2019), else negative"


def _labels(scores: Sequence[ModelScore], outcomes: Outcomes) -> np.ndarray:
    onsets = [outcomes[s.patient] if s.patient is not None else None for s in scores]
    return np.array(
        [
            1.0 if o is not None and s.created >= o - HORIZON_S else 0.0
            for s, o in zip(scores, onsets, strict=True)
        ]
    )


def outcome_auroc(
    scored: Sequence[Sequence[ModelScore]], outcomes: Outcomes, *, replicates: int = 200, seed: int = 0
) -> dict[str, Any]:
    """AUROC of each score column on the same cards, with 95 % intervals by patient bootstrap, and
    the difference of the last column against the first (paired: the same resamples). `scored`:
    one row per card, each row the scores to compare (the answer, then a shadow); cards of patients
    without a known outcome are left out."""
    rows = [r for r in scored if r[0].patient is not None and r[0].patient in outcomes]
    found: dict[str, Any] = {
        "label": _LABEL,
        "cards": len(rows),
        "patients": len({r[0].patient for r in rows}),
    }
    if not rows:
        return found
    label = _labels([r[0] for r in rows], outcomes)
    found["positive_cards"] = int(label.sum())
    if label.min() == label.max():
        found["auroc"] = "needs both septic and not septic cards"
        return found
    groups = np.array([r[0].patient for r in rows])
    columns = [np.array([r[i].probability for r in rows]) for i in range(len(rows[0]))]

    def each(p: np.ndarray) -> dict[str, float]:
        return bootstrap_by_group(
            lambda idx: auroc(label[idx], p[idx]), groups, replicates=replicates, seed=seed
        ).as_dict()

    found["auroc"] = [each(p) for p in columns]
    if len(columns) > 1:
        first, last = columns[0], columns[-1]
        found["auroc_difference"] = bootstrap_by_group(
            lambda idx: auroc(label[idx], last[idx]) - auroc(label[idx], first[idx]),
            groups,
            replicates=replicates,
            seed=seed,
        ).as_dict()
    return found


def _distribution(p: Sequence[float]) -> dict[str, float | int]:
    if not p:
        return {"n": 0}
    a = np.asarray(p, dtype=np.float64)
    q = np.quantile(a, [0.1, 0.5, 0.9, 0.99])
    return {
        "n": len(a),
        "mean": round(float(a.mean()), 5),
        "p10": round(float(q[0]), 5),
        "p50": round(float(q[1]), 5),
        "p90": round(float(q[2]), 5),
        "p99": round(float(q[3]), 5),
    }


def _alert_rate(rows: Iterable[ModelScore]) -> dict[str, float | int]:
    rows = list(rows)
    days = {(r.patient, datetime.fromtimestamp(r.created, UTC).date()) for r in rows if r.patient}
    alerts = sum(r.band == ALERT_BAND for r in rows)
    return {
        "scores": len(rows),
        "alerts": alerts,
        "patient_days": len(days),
        "alerts_per_100_patient_days": round(100.0 * alerts / len(days), 2) if days else 0.0,
    }


async def _feedback(store: RecordStore, cards: set[str]) -> dict[str, tuple[str, str | None]]:
    """card uuid -> (outcome, override reason code) for the cards in `cards`."""
    found: dict[str, tuple[str, str | None]] = {}
    async for provenance in store.iter_resources("Provenance"):
        for target in provenance.get("target", ()):
            ref = str(target.get("reference", ""))
            uuid = ref.removeprefix("RiskAssessment/")
            if uuid not in cards:
                continue
            outcome = provenance.get("activity", {}).get("coding", [{}])[0].get("code", "unknown")
            reasons = provenance.get("reason") or [{}]
            codings = reasons[0].get("coding") or [{}]
            found[uuid] = (str(outcome), codings[0].get("code"))
    return found


def _overrides(cards: Iterable[str], feedback: Mapping[str, tuple[str, str | None]]) -> dict[str, Any]:
    cards = list(cards)
    given = [feedback[c] for c in cards if c in feedback]
    overridden = [reason or "no-reason" for outcome, reason in given if outcome == "overridden"]
    return {
        "cards": len(cards),
        "feedback": len(given),
        "overridden": len(overridden),
        "override_rate": round(len(overridden) / len(given), 4) if given else None,
        "by_reason": dict(sorted(Counter(overridden).items())),
    }


async def shadow_report(
    store: RecordStore, model: str, *, since: float = 0.0, outcomes: Outcomes | None = None
) -> dict[str, Any]:
    """Per shadow version: band agreement with the answer given on the same card, both score
    distributions, alert rates, the champion's override rates where the shadow agreed or not, and
    with `outcomes`, the AUROC of both on the same cards (and its paired difference)."""
    rows = await store.model_scores(model, since)
    by_card: dict[str, dict[str, ModelScore]] = defaultdict(dict)
    for r in rows:
        by_card[r.card_uuid]["shadow" if r.role == "shadow" else "answer"] = r
    pairs = [(c["answer"], c["shadow"]) for c in by_card.values() if "answer" in c and "shadow" in c]
    feedback = await _feedback(store, {a.card_uuid for a, _ in pairs})
    out: dict[str, Any] = {"model": model, "since": since, "shadows": {}}
    for version in sorted({s.version for _, s in pairs}):
        mine = [(a, s) for a, s in pairs if s.version == version]
        agree = [a.card_uuid for a, s in mine if a.band == s.band]
        differ = [a.card_uuid for a, s in mine if a.band != s.band]
        confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for a, s in mine:
            confusion[a.band][s.band] += 1
        answered = _alert_rate(a for a, _ in mine)
        shadowed = _alert_rate(s for _, s in mine)
        out["shadows"][version] = {
            "pairs": len(mine),
            "answered_by": dict(sorted(Counter(f"v{a.version} ({a.role})" for a, _ in mine).items())),
            "band_agreement": round(len(agree) / len(mine), 4) if mine else None,
            "bands_answer_vs_shadow": {k: dict(v) for k, v in sorted(confusion.items())},
            "alert_rate": {"answer": answered, "shadow": shadowed},
            "alert_rate_difference_per_100_patient_days": round(
                shadowed["alerts_per_100_patient_days"] - answered["alerts_per_100_patient_days"], 2
            ),
            "score_distribution": {
                "answer": _distribution([a.probability for a, _ in mine]),
                "shadow": _distribution([s.probability for _, s in mine]),
                "mean_absolute_difference": round(
                    float(np.mean([abs(a.probability - s.probability) for a, s in mine])), 5
                )
                if mine
                else None,
            },
            "overrides_of_the_answer": {
                "where_shadow_agreed": _overrides(agree, feedback),
                "where_shadow_differed": _overrides(differ, feedback),
            },
        }
        if outcomes is not None:
            joined = outcome_auroc(mine, outcomes)
            if isinstance(joined.get("auroc"), list):
                joined["auroc"] = dict(zip(("answer", "shadow"), joined["auroc"], strict=True))
                joined["auroc_difference"] = {"shadow_minus_answer": joined.pop("auroc_difference")}
            out["shadows"][version]["outcomes"] = joined
    if outcomes is None:
        out["outcomes"] = "not joined: give --outcomes (pseudonym, onset) for AUROC on these patients"
    return out


async def canary_report(
    store: RecordStore,
    model: str,
    *,
    counters: Counters | None = None,
    since: float = 0.0,
    outcomes: Outcomes | None = None,
) -> dict[str, Any]:
    """Per version that answered (champion and canary): patients, alert rate, score distribution,
    override rates by reason; with the shared counters (errors, hook p99) of the canary running
    now, when given; with `outcomes`, each version's AUROC on the patients it answered for (not
    the same patients: a shadow compares versions on the same cards)."""
    rows = [r for r in await store.model_scores(model, since) if r.role in ("champion", "canary")]
    feedback = await _feedback(store, {r.card_uuid for r in rows})
    live = [s for s in await store.version_states() if s.model == model and s.status == "canary"]
    run = canary_run(live[0].updated_at) if live else ""  # the counters of the canary running now
    versions: dict[str, Any] = {}
    for version in sorted({r.version for r in rows}):
        mine = [r for r in rows if r.version == version]
        entry: dict[str, Any] = {
            "role": sorted({r.role for r in mine}),
            "patients": len({r.patient for r in mine if r.patient}),
            "alert_rate": _alert_rate(mine),
            "score_distribution": _distribution([r.probability for r in mine]),
            "overrides": _overrides([r.card_uuid for r in mine], feedback),
        }
        if counters is not None:
            entry["counters"] = (await counters.snapshot(model, version + run)).as_dict()
        if outcomes is not None:
            joined = outcome_auroc([(r,) for r in mine], outcomes)
            if isinstance(joined.get("auroc"), list):
                joined["auroc"] = joined["auroc"][0]
            entry["outcomes"] = joined
        versions[version] = entry
    out: dict[str, Any] = {
        "model": model,
        "since": since,
        "canary_now": {"version": live[0].version, "share": live[0].share} if live else None,
        "versions": versions,
    }
    champions = [v for v, e in versions.items() if "champion" in e["role"]]
    canaries = [v for v, e in versions.items() if "canary" in e["role"]]
    if champions and canaries:
        c, k = versions[champions[-1]], versions[canaries[-1]]
        out["alert_rate_difference_per_100_patient_days"] = round(
            k["alert_rate"]["alerts_per_100_patient_days"] - c["alert_rate"]["alerts_per_100_patient_days"], 2
        )
    if outcomes is None:
        out["outcomes"] = "not joined: give --outcomes (pseudonym, onset) for AUROC on these patients"
    return out
