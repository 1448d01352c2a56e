"""Retraining from served records: RiskAssessments written by the real builder from real scores of
set A patients, feedback Provenances and outcomes, joined by pseudonym."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fhir_mappings import Pseudonymizer, build_provenance, build_risk_assessment, sepsis_feature_spec
from models import (
    HORIZON_HOURS,
    SEPSIS_OUTCOME,
    ModelRegistry,
    RiskModel,
    load_sepsis_data,
    train_sepsis,
)
from models.retrain import override_report, register_retrained, retrain_from_served, served_table

pytestmark = pytest.mark.data
SPEC = sepsis_feature_spec()
START = datetime(2026, 1, 1, tzinfo=UTC)
REASONS = ("not-clinically-relevant", "already-treating")


@pytest.fixture(scope="module")
def served(set_a_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small store's export: every 6th ICU hour of 150 patients scored by a real (small) model;
    cards at or above the threshold get feedback, alternately overridden (two reasons) and accepted."""
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    train_sepsis(
        set_a_path, registry, patients=300, num_boost_round=15, folds=2, progress=False, device="cpu"
    )
    model = RiskModel(registry.load("sepsis", SPEC), SPEC)
    ids = pd.read_parquet(set_a_path, columns=["patient"])["patient"].unique()[2000:2150]
    data = load_sepsis_data(set_a_path, SPEC, only=ids)
    assert data.label is not None
    pseudo = Pseudonymizer(b"k" * 32)
    keep = data.hour % 6 == 0
    risk_assessments, provenances, expected = [], [], []
    for n, i in enumerate(np.flatnonzero(keep)):
        p = float(model.predict(data.features[i : i + 1])[0])
        card = str(uuid.UUID(int=n + 1))
        explanation = model.explain(data.features[i])
        pseudonym = pseudo.pseudonym("Patient", str(data.patient[i]))
        risk_assessments.append(
            build_risk_assessment(
                card_uuid=card,
                service_id="sepsis-risk",
                pseudonym=pseudonym,
                occurrence=START + timedelta(hours=int(data.hour[i])),
                icu_hour=int(data.hour[i]),
                model_name="sepsis",
                model_version=model.version,
                probability=p,
                band=model.band(p),
                outcome_code=SEPSIS_OUTCOME,
                horizon_hours=HORIZON_HOURS,
                base_value=explanation.base_value,
                contributions=explanation.contributions,
                # Half recorded as the hook records them now (the whole scored row), half as
                # RiskAssessments recorded before the feature-values extension.
                feature_values=data.features[i] if n % 2 == 0 else None,
                feature_spec_hash=SPEC.spec_hash,
            )
        )
        outcome = None
        if p >= model.threshold:
            outcome = "overridden" if len(provenances) % 2 == 0 else "accepted"
            reason = REASONS[len(provenances) // 2 % 2] if outcome == "overridden" else None
            provenances.append(
                build_provenance(
                    card_uuid=card,
                    outcome=outcome,
                    outcome_timestamp=START,
                    practitioner_pseudonym=None,
                    override_reason={"system": "http://example.org/reasons", "code": reason}
                    if reason
                    else None,
                    user_comment=None,
                )
            )
        expected.append(
            (card, pseudonym, int(data.label[i]), outcome, explanation, n % 2 == 0, data.features[i])
        )
    outcomes = []
    for pid in np.unique(data.patient):
        rows = data.patient == pid
        labelled = data.hour[rows][data.label[rows] == 1]
        onset = START + timedelta(hours=int(labelled.min()) + 6) if len(labelled) else pd.NaT
        outcomes.append({"pseudonym": pseudo.pseudonym("Patient", str(pid)), "onset": onset})
    return {
        "model": model,
        "registry": registry,
        "risk_assessments": risk_assessments,
        "provenances": provenances,
        "outcomes": pd.DataFrame(outcomes),
        "expected": expected,
    }


def test_served_records_join_features_feedback_and_outcomes(served: dict[str, Any]) -> None:
    table = served_table(
        served["risk_assessments"],
        served["provenances"],
        served["outcomes"],
        SPEC.names,
        feature_spec_hash=SPEC.spec_hash,
    )
    assert len(table) == len(served["expected"])
    by_card = table.set_index("card")
    for card, pseudonym, label, outcome, explanation, whole, x in served["expected"]:
        row = by_card.loc[card]
        assert row["pseudonym"] == pseudonym
        assert row["label"] == label  # onset - 6 h reproduces SepsisLabel at the served hour
        assert (row["feedback"] if isinstance(row["feedback"], str) else None) == outcome
        assert row["overridden"] == (outcome == "overridden")
        assert row["all_features"] == whole
        if whole:  # the scored row itself, bit for bit
            np.testing.assert_array_equal(row[list(SPEC.names)].to_numpy(np.float32), x)
            continue
        recorded = sorted(explanation.contributions, key=lambda c: -abs(c.shap))[:20]
        for c in recorded:
            if c.value is not None:
                assert row[c.feature] == pytest.approx(c.value, abs=1e-5)
        others = set(SPEC.names) - {c.feature for c in recorded}
        assert all(np.isnan(row[f]) for f in others)  # not recorded: missing, never guessed


def test_overrides_are_reported_by_reason_unit_and_version(served: dict[str, Any]) -> None:
    table = served_table(served["risk_assessments"], served["provenances"], served["outcomes"], SPEC.names)
    report = override_report(table)
    overridden = [e for e in served["expected"] if e[3] == "overridden"]
    assert report["overridden"] == len(overridden) > 0
    assert report["with_feedback"] == len(served["provenances"])
    assert sum(v["overridden"] for v in report["by_reason"].values()) == len(overridden)
    assert set(report["by_reason"]) <= set(REASONS)
    assert report["by_model_version"][served["model"].version]["overridden"] == len(overridden)
    assert sum(v["feedback"] for v in report["by_unit"].values()) == len(served["provenances"])
    septic_later = sum(1 for e in overridden if e[2] == 1)
    assert sum(v["septic_later"] for v in report["by_reason"].values()) == septic_later


def test_unknown_outcomes_are_not_labels(served: dict[str, Any]) -> None:
    outcomes = served["outcomes"].iloc[10:]
    table = served_table(served["risk_assessments"], served["provenances"], outcomes, SPEC.names)
    unknown = ~table["pseudonym"].isin(outcomes["pseudonym"])
    assert unknown.any() and table.loc[unknown, "label"].isna().all()
    assert table.loc[~unknown, "label"].notna().all()


def test_retraining_registers_a_candidate_and_uses_feedback_only_if_it_helps(served: dict[str, Any]) -> None:
    model, registry = served["model"], served["registry"]
    table = served_table(served["risk_assessments"], served["provenances"], served["outcomes"], SPEC.names)
    result = retrain_from_served(model, table, rounds=(3, 6), replicates=20)
    scores = result.selection["out_of_fold_auroc"]
    chosen = result.selection["chosen"]
    best_unweighted = max(v for k, v in scores.items() if k.startswith("weight=1,"))
    picked = scores[f"weight={chosen['override_weight']:g},rounds={chosen['extra_rounds']}"]
    if chosen["override_weight"] != 1.0:
        assert picked > best_unweighted
    else:
        assert picked == best_unweighted
    assert set(result.comparison["models"]) == {"served", "base_on_recorded_features", "retrained"}
    active = registry.active_version("sepsis")
    manifest = register_retrained(registry, model, result, data_label="served records")
    assert registry.active_version("sepsis") == active
    assert manifest.parent_version == model.version and manifest.created_by == "cds site retrain"
    assert manifest.training_data["lineage"]["kind"] == "retrained-from-served"
    candidate = RiskModel(registry.load("sepsis", SPEC, manifest.version), SPEC)
    assert (
        candidate.booster.num_boosted_rounds() == model.booster.num_boosted_rounds() + chosen["extra_rounds"]
    )


def test_cds_site_retrain_reads_a_feedback_export(served: dict[str, Any], tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    export = tmp_path / "export"
    export.mkdir()
    for name, resources in (
        ("RiskAssessment", served["risk_assessments"]),
        ("Provenance", served["provenances"]),
    ):
        (export / f"{name}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    outcomes = tmp_path / "outcomes.csv"
    frame = served["outcomes"].copy()
    frame["onset"] = [t.isoformat() if isinstance(t, datetime) else "" for t in frame["onset"]]
    frame.to_csv(outcomes, index=False)
    registry = served["registry"]
    active, versions = registry.active_version("sepsis"), registry.versions("sepsis")
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "site", "retrain", "sepsis", "--export", str(export)]
        + [
            "--outcomes",
            str(outcomes),
            "--out",
            str(tmp_path / "out"),
            "--rounds",
            "3",
            "--replicates",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CDS_MODEL_DIR": str(registry.root)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "candidate" and report["version"] not in versions
    assert report["version"] in registry.versions("sepsis") and registry.active_version("sepsis") == active
    assert report["overrides"]["overridden"] == sum(1 for e in served["expected"] if e[3] == "overridden")
    assert (tmp_path / "out" / "retraining.json").is_file()


def test_the_recorded_row_re_scores_to_the_served_probability(served: dict[str, Any]) -> None:
    """With the whole row recorded, the base re-scored on served records is what was served; a row
    recorded with another feature spec is not read as this one's."""
    model = served["model"]
    table = served_table(
        served["risk_assessments"],
        served["provenances"],
        served["outcomes"],
        SPEC.names,
        feature_spec_hash=SPEC.spec_hash,
    )
    whole = table[table["all_features"]]
    assert len(whole) > 0
    rescored = model.predict(whole[list(SPEC.names)].to_numpy(np.float32))
    np.testing.assert_allclose(rescored, whole["probability"].to_numpy(), rtol=0, atol=1e-7)
    other = served_table(
        served["risk_assessments"],
        served["provenances"],
        served["outcomes"],
        SPEC.names,
        feature_spec_hash="x",
    )
    assert not other["all_features"].any()
