"""Site go-live of the readmission model on real Diabetes 130-US patients: a small base trained on
some patients, a "site" of others; validation, recalibration and adaptation judged on held-out
site patients, through the same shared steps as the sepsis model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhir_mappings import readmission_feature_spec
from models import ModelRegistry, RiskModel, evaluate_readmission, read_diabetes130, train_readmission
from models.calibration import fit_platt
from models.metrics import auprc, auroc
from models.site import SiteData, adapt_site, recalibrate_site, register_site_version, site_split
from models.site_readmission import READMISSION_SITE, load_readmission_site, validate_readmission_site
from tests.conftest import DATA_DIR, need

pytestmark = pytest.mark.data
SPEC = readmission_feature_spec()


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return read_diabetes130(need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US"))


def _patients(frame: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    ids = frame["patient_nbr"].drop_duplicates().to_numpy()[start:stop]
    return frame[frame["patient_nbr"].isin(ids)].reset_index(drop=True)


@pytest.fixture(scope="module")
def base(diabetes: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, RiskModel]:
    root = tmp_path_factory.mktemp("readmission-base")
    path = root / "base.csv.gz"
    _patients(diabetes, 0, 8000).to_csv(path, index=False)
    registry = ModelRegistry(root / "registry")
    train_readmission(path, registry, num_boost_round=60, progress=False, device="cpu", replicates=20)
    return registry, RiskModel(registry.load("readmission", SPEC), SPEC)


@pytest.fixture(scope="module")
def site_frame(diabetes: pd.DataFrame) -> pd.DataFrame:
    return _patients(diabetes, 10000, 16000)  # none of the base's patients


@pytest.fixture(scope="module")
def site(site_frame: pd.DataFrame) -> SiteData:
    return load_readmission_site(site_frame, SPEC, label="Diabetes 130 patients 10001-16000")


def test_a_file_in_any_format_and_the_table_give_the_same_site(
    site_frame: pd.DataFrame, tmp_path: Path
) -> None:
    csv, parquet = tmp_path / "site.csv.gz", tmp_path / "site.parquet"
    site_frame.to_csv(csv, index=False)
    site_frame.astype({c: str for c in ("race", "diag_1", "diag_2", "diag_3")}).replace(
        {"nan": "?"}
    ).to_parquet(parquet)
    frame = load_readmission_site(site_frame, SPEC)
    for path in (csv, parquet):
        loaded = load_readmission_site(path, SPEC)
        assert np.array_equal(loaded.data.features, frame.data.features, equal_nan=True), path.name
        assert loaded.label == str(path) and len(loaded.fingerprint) == 64
    assert len(np.unique(frame.data.patient)) == len(frame.data.patient)  # one discharge per patient


def test_a_site_without_outcomes_is_refused(site_frame: pd.DataFrame) -> None:
    with pytest.raises(Exception, match="no readmitted column"):
        load_readmission_site(site_frame.drop(columns="readmitted"), SPEC)


def test_validation_writes_the_golive_report(
    base: tuple[ModelRegistry, RiskModel], site: SiteData, tmp_path: Path
) -> None:
    _, model = base
    metrics = validate_readmission_site(model, site, tmp_path, replicates=30)
    for name in ("golive.md", "golive.html", "metrics.json", "model_card.md", "roc.png", "pr.png"):
        assert (tmp_path / name).is_file(), name
    expected = evaluate_readmission(model, site.data, replicates=30)  # type: ignore[arg-type]
    assert metrics["auroc"] == expected["auroc"] and metrics["lace_baseline"] == expected["lace_baseline"]
    stored = json.loads((tmp_path / "metrics.json").read_text())
    checks = {c["check"].split(" (")[0]: c for c in stored["golive"]["checks"]}
    assert stored["golive"]["ready"] == all(c["ok"] for c in checks.values())
    own = model.manifest.metrics["test"]
    first = checks["AUROC within 0.03 of the model's own held-out test"]
    assert first["reference"] == own["auroc"]["estimate"]
    assert first["ok"] == (metrics["auroc"]["estimate"] >= own["auroc"]["estimate"] - 0.03)
    share = next(c for c in stored["golive"]["checks"] if "flagged" in c["check"])
    assert share["site"] == metrics["operating_point"]["flagged_fraction"]
    assert share["ok"] == (0.5 * share["reference"] <= share["site"] <= 1.5 * share["reference"])
    assert "Go-live checks" in (tmp_path / "golive.md").read_text()
    assert "<table>" in (tmp_path / "golive.html").read_text()


def test_recalibration_learns_on_fit_patients_and_is_judged_on_the_others(
    base: tuple[ModelRegistry, RiskModel], site: SiteData
) -> None:
    _, model = base
    result = recalibrate_site(model, site, seed=3, replicates=30, task=READMISSION_SITE)
    d = site.data
    assert d.label is not None
    assert np.array_equal(result.split.fit, site_split(d.patient, 3).fit)
    fit, hold = np.isin(d.patient, result.split.fit), np.isin(d.patient, result.split.holdout)
    raw = 1 / (1 + np.exp(-model.margin(d.features)))
    cal = result.recalibration.calibration
    assert cal == fit_platt(raw[fit], d.label[fit])
    p_fit = np.interp(raw[fit], cal.x, cal.y)
    assert abs((p_fit >= result.recalibration.threshold).mean() - 0.2) < 0.01  # the model's own share
    models = result.comparison["models"]
    assert result.comparison["patients"] == len(result.split.holdout) == hold.sum()
    assert models["base"]["auroc"]["estimate"] == round(
        auroc(d.label[hold], model.predict(d.features[hold])), 4
    )
    p_hold = np.interp(raw[hold], cal.x, cal.y)
    assert models["recalibrated"]["auprc"]["estimate"] == round(auprc(d.label[hold], p_hold), 4)
    assert models["recalibrated"]["flagged_per_100_discharges"] == round(
        100 * float((p_hold >= result.recalibration.threshold).mean()), 2
    )
    # A monotone map keeps the ranking: the paired AUROC difference is exactly 0.
    assert models["recalibrated"]["minus_base"]["auroc"]["estimate"] == 0.0


def test_recalibration_to_a_chosen_share(base: tuple[ModelRegistry, RiskModel], site: SiteData) -> None:
    _, model = base
    result = recalibrate_site(
        model, site, seed=3, target_alerts_per_100_days=10.0, replicates=10, task=READMISSION_SITE
    )
    assert "flags 10 of every 100" in result.recalibration.rule
    assert abs(result.recalibration.fit_figures["fit_flagged_fraction"] - 0.10) < 0.01
    assert result.recalibration.bands is not None and result.recalibration.bands["high"] == pytest.approx(
        result.recalibration.threshold
    )


def test_adaptation_registers_a_candidate_with_lineage(
    base: tuple[ModelRegistry, RiskModel], site: SiteData
) -> None:
    registry, model = base
    adapted = adapt_site(model, site, seed=5, continue_rounds=(5, 15), replicates=20, task=READMISSION_SITE)
    result = adapted.site
    sel = result.selection
    assert set(sel["out_of_fold_auroc"]) == {"continue+5", "continue+15"}  # no `pooled` for readmission
    assert sel["chosen"] == max(sel["out_of_fold_auroc"], key=lambda k: sel["out_of_fold_auroc"][k])
    assert set(result.comparison["models"]) == {"base", "recalibrated", "adapted"}
    extra = int(sel["chosen"].split("+")[1])
    assert result.num_boost_round == model.booster.num_boosted_rounds() + extra  # continued from the base
    active = registry.active_version("readmission")
    manifest = register_site_version(registry, model, site, result, command="cds site adapt")
    assert registry.active_version("readmission") == active  # a candidate, not served
    lineage = manifest.training_data["lineage"]
    assert lineage["kind"] == "adapted" and lineage["status"] == "candidate"
    assert lineage["site_split_seed"] == 5 and lineage["holdout_patients"] == len(result.split.holdout)
    assert lineage["site_data_sha256"] == site.fingerprint and lineage["parent_version"] == model.version
    assert manifest.risk_bands["high"] == pytest.approx(manifest.threshold)
    assert (
        manifest.metrics["fit_flagged_fraction"] == result.recalibration.fit_figures["fit_flagged_fraction"]
    )
    # The registered candidate reproduces its held-out figures when loaded and scored.
    candidate = RiskModel(registry.load("readmission", SPEC, manifest.version), SPEC)
    d = site.data
    assert d.label is not None
    hold = np.isin(d.patient, result.split.holdout)
    got = auroc(d.label[hold], candidate.predict(d.features[hold]))
    assert round(got, 4) == result.comparison["models"]["adapted"]["auroc"]["estimate"]
    assert candidate.booster.num_boosted_rounds() == result.num_boost_round
