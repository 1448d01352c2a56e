"""Site go-live on real set A patients: a small base model trained on the first patients, a "site"
of other patients; validation, recalibration and adaptation judged on held-out site patients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhir_mappings import sepsis_feature_spec
from models import (
    ModelError,
    ModelRegistry,
    RiskModel,
    alert_burden,
    challenge_auc,
    evaluate_sepsis,
    train_booster,
    train_sepsis,
    utility_table,
)
from models.calibration import (
    ISOTONIC_MIN_POSITIVE_GROUPS,
    calibration_intercept_slope,
    fit_isotonic,
    fit_platt,
)
from models.site import (
    SiteData,
    adapt_site,
    base_development_data,
    compare_on_holdout,
    frame_fingerprint,
    load_site,
    recalibrate_site,
    register_site_version,
    site_holdout,
    site_split,
    threshold_for_alert_rate,
    validate_site,
)

pytestmark = pytest.mark.data
SPEC = sepsis_feature_spec()


@pytest.fixture(scope="module")
def base(set_a_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, RiskModel]:
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    train_sepsis(
        set_a_path, registry, patients=300, num_boost_round=15, folds=2, progress=False, device="cpu"
    )
    return registry, RiskModel(registry.load("sepsis", SPEC), SPEC)


@pytest.fixture(scope="module")
def site_frame(set_a: pd.DataFrame) -> pd.DataFrame:
    ids = set_a["patient"].unique()[1000:1400]  # none of the base's 300 patients
    return set_a[set_a["patient"].isin(ids)].reset_index(drop=True)


@pytest.fixture(scope="module")
def site(site_frame: pd.DataFrame) -> SiteData:
    return load_site(site_frame, SPEC, label="set A patients 1001-1400")


def test_site_split_is_patient_disjoint_and_reproducible(site: SiteData) -> None:
    a, b = site_split(site.data.patient, 7), site_split(site.data.patient, 7)
    assert np.array_equal(a.fit, b.fit) and np.array_equal(a.holdout, b.holdout)
    assert not set(a.fit) & set(a.holdout)
    assert set(a.fit) | set(a.holdout) == set(np.unique(site.data.patient))
    assert not np.array_equal(site_split(site.data.patient, 8).fit, a.fit)


def test_the_table_and_its_file_give_the_same_site(site_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "site.parquet"
    site_frame.to_parquet(path)
    from_file, from_frame = load_site(path, SPEC), load_site(site_frame, SPEC)
    assert np.array_equal(from_file.data.features, from_frame.data.features, equal_nan=True)
    assert from_frame.fingerprint == frame_fingerprint(site_frame)
    assert frame_fingerprint(site_frame.assign(HR=site_frame["HR"] + 1)) != from_frame.fingerprint


def test_validation_writes_the_golive_report(
    base: tuple[ModelRegistry, RiskModel], site: SiteData, tmp_path: Path
) -> None:
    _, model = base
    metrics = validate_site(model, site, tmp_path, replicates=30)
    for name in ("golive.md", "golive.html", "metrics.json", "model_card.md", "roc.png", "calibration.png"):
        assert (tmp_path / name).is_file(), name
    expected = evaluate_sepsis(model, site.data, replicates=30)
    assert metrics["auroc_ci"] == expected["auroc_ci"] and metrics["utility_ci"] == expected["utility_ci"]
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["golive"]["ready"] == all(c["ok"] for c in stored["golive"]["checks"])
    slope = next(c for c in stored["golive"]["checks"] if "slope" in c["check"])
    assert slope["ok"] == (0.8 <= metrics["calibration"]["slope"] <= 1.25)
    assert "Go-live checks" in (tmp_path / "golive.md").read_text()
    assert "<table>" in (tmp_path / "golive.html").read_text()


def test_recalibration_learns_on_fit_patients_and_is_judged_on_the_others(
    base: tuple[ModelRegistry, RiskModel], site: SiteData
) -> None:
    _, model = base
    result = recalibrate_site(model, site, seed=3, replicates=30)
    d = site.data
    assert d.label is not None
    fit, hold = np.isin(d.patient, result.split.fit), np.isin(d.patient, result.split.holdout)
    raw = 1 / (1 + np.exp(-model.margin(d.features)))
    septic = len(np.unique(d.patient[fit][d.label[fit] == 1]))
    fitted = fit_isotonic if septic >= ISOTONIC_MIN_POSITIVE_GROUPS else fit_platt
    assert result.recalibration.calibration == fitted(raw[fit], d.label[fit])
    assert result.recalibration.rule.startswith("isotonic" if fitted is fit_isotonic else "Platt")
    assert (
        result.comparison["patients"] == len(result.split.holdout) and result.comparison["rows"] == hold.sum()
    )
    base_auroc = challenge_auc(d.label[hold], model.predict(d.features[hold]))[0]
    assert result.comparison["models"]["base"]["auroc"]["estimate"] == round(base_auroc, 4)
    p_recal = np.interp(raw[hold], result.recalibration.calibration.x, result.recalibration.calibration.y)
    utility = utility_table(d.label[hold], d.patient[hold]).normalized(
        p_recal >= result.recalibration.threshold
    )
    assert result.comparison["models"]["recalibrated"]["utility"]["estimate"] == round(utility, 4)


def test_recalibration_to_a_target_alert_rate(base: tuple[ModelRegistry, RiskModel], site: SiteData) -> None:
    _, model = base
    result = recalibrate_site(model, site, seed=3, target_alerts_per_100_days=15.0, replicates=10)
    d = site.data
    fit = np.isin(d.patient, result.split.fit)
    raw = 1 / (1 + np.exp(-model.margin(d.features[fit])))
    cal = result.recalibration.calibration
    p = np.interp(raw, cal.x, cal.y)
    assert (
        alert_burden(p >= result.recalibration.threshold, d.patient[fit])["alerts_per_100_patient_days"] <= 15
    )
    assert "15 alerts" in result.recalibration.rule


def test_threshold_for_alert_rate_rises_as_the_target_falls(site: SiteData) -> None:
    rng = np.random.default_rng(0)
    p = rng.random(len(site.data.patient))
    t = [threshold_for_alert_rate(p, site.data.patient, target) for target in (200.0, 50.0, 5.0)]
    assert t[0] <= t[1] <= t[2]


def test_paired_comparison_of_a_model_with_itself_is_zero(site: SiteData) -> None:
    d = site.data
    assert d.label is not None
    p = np.random.default_rng(1).random(len(d.label))
    out = compare_on_holdout(
        {"base": p, "same": p.copy()}, {"base": 0.9, "same": 0.9}, d.label, d.patient, replicates=20
    )
    delta = out["models"]["same"]["minus_base"]
    assert delta["auroc"] == {"estimate": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}
    assert delta["utility"]["ci95_low"] == delta["utility"]["ci95_high"] == 0.0


def test_continued_boosting_starts_from_the_base_and_leaves_it_alone(
    base: tuple[ModelRegistry, RiskModel], site: SiteData
) -> None:
    _, model = base
    d = site.data
    assert d.label is not None
    before = bytes(model.booster.save_raw(raw_format="ubj"))
    rounds = model.booster.num_boosted_rounds()
    params = {k: v for k, v in model.manifest.params.items() if k != "device"}
    more = train_booster(
        d.features,
        d.label,
        params=params,
        num_boost_round=4,
        xgb_model=model.booster,
        progress=False,
        device="cpu",
    )
    assert more.booster.num_boosted_rounds() == rounds + 4
    assert bytes(model.booster.save_raw(raw_format="ubj")) == before
    first = more.booster.inplace_predict(d.features[:50], iteration_range=(0, rounds), missing=np.nan)
    assert np.allclose(first, 1 / (1 + np.exp(-model.margin(d.features[:50]))), atol=1e-6)


def test_adaptation_registers_a_candidate_with_lineage(
    base: tuple[ModelRegistry, RiskModel], site: SiteData, set_a_path: Path
) -> None:
    registry, model = base
    pooled_base = base_development_data(model, set_a_path, SPEC, patients=100)
    assert not set(np.unique(pooled_base.patient)) & set(np.unique(site.data.patient))
    adapted = adapt_site(model, site, seed=5, base_data=pooled_base, continue_rounds=(3, 6), replicates=20)
    result = adapted.site
    sel = result.selection
    assert set(sel["out_of_fold_utility"]) == {"continue+3", "continue+6", "pooled(w=3)"}
    assert sel["chosen"] == max(
        sel["out_of_fold_utility"], key=lambda k: (sel["out_of_fold_utility"][k], sel["out_of_fold_auroc"][k])
    )
    assert set(result.comparison["models"]) == {"base", "recalibrated", "adapted"}
    active = registry.active_version("sepsis")
    manifest = register_site_version(registry, model, site, result, command="cds site adapt")
    assert registry.active_version("sepsis") == active  # a candidate, not served
    assert manifest.parent_version == model.version and manifest.created_by == "cds site adapt"
    lineage = manifest.training_data["lineage"]
    assert lineage["site_data_sha256"] == site.fingerprint == manifest.training_data["sha256"]
    assert lineage["site_split_seed"] == 5 and lineage["holdout_patients"] == len(result.split.holdout)
    assert lineage["parent_model_sha256"] == model.manifest.model_sha256 and lineage["status"] == "candidate"
    # The registered candidate reproduces its held-out figures when loaded and scored.
    candidate = RiskModel(registry.load("sepsis", SPEC, manifest.version), SPEC)
    d = site.data
    assert d.label is not None
    hold = np.isin(d.patient, result.split.holdout)
    auroc = challenge_auc(d.label[hold], candidate.predict(d.features[hold]))[0]
    assert round(auroc, 4) == result.comparison["models"]["adapted"]["auroc"]["estimate"]


def test_the_simulated_site_blanks_only_what_it_says(site_frame: pd.DataFrame) -> None:
    from benchmarks.site_adaptation import NEVER_REPORTED, VITALS, sparse_charting

    shifted = sparse_charting(site_frame)
    odd = site_frame["hour"] % 2 == 1
    assert shifted.loc[odd, list(VITALS)].isna().all().all()
    even = ~odd
    assert shifted.loc[even, list(VITALS)].equals(site_frame.loc[even, list(VITALS)])
    assert shifted.loc[site_frame["hour"] % 4 != 0, "Temp"].isna().all()
    assert shifted[list(NEVER_REPORTED)].isna().all().all()
    untouched = [c for c in site_frame.columns if c not in (*VITALS, "Temp", *NEVER_REPORTED)]
    assert shifted[untouched].equals(site_frame[untouched])


def test_a_small_site_gets_a_platt_map_that_holds_on_its_other_patients(
    base: tuple[ModelRegistry, RiskModel], site: SiteData
) -> None:
    """400 site patients (~15 septic in the fit half): the isotonic map overfits them, Platt holds."""
    _, model = base
    result = recalibrate_site(model, site, seed=3, replicates=10)
    d = site.data
    assert d.label is not None
    fit, hold = np.isin(d.patient, result.split.fit), np.isin(d.patient, result.split.holdout)
    assert len(np.unique(d.patient[fit][d.label[fit] == 1])) < ISOTONIC_MIN_POSITIVE_GROUPS
    raw = 1 / (1 + np.exp(-model.margin(d.features)))

    def held_slope(cal: object) -> float:
        p = np.interp(raw[hold], cal.x, cal.y)  # type: ignore[attr-defined]
        return calibration_intercept_slope(d.label[hold], p)[1]

    platt, isotonic = result.recalibration.calibration, fit_isotonic(raw[fit], d.label[fit])
    assert platt.method == "platt"
    assert abs(held_slope(platt) - 1) < abs(held_slope(isotonic) - 1)


def test_the_gate_re_derives_a_site_versions_held_out_half(
    base: tuple[ModelRegistry, RiskModel], site_frame: pd.DataFrame, tmp_path: Path, set_a_path: Path
) -> None:
    registry, model = base
    path = tmp_path / "site.parquet"
    site_frame.to_parquet(path)
    site = load_site(path, SPEC)
    manifest = register_site_version(
        registry, model, site, recalibrate_site(model, site, seed=5, replicates=5), command="test"
    )
    held = site_holdout(manifest, path, site.data.patient)
    assert held is not None and np.array_equal(held, site_split(site.data.patient, 5).holdout)
    assert site_holdout(model.manifest, path, site.data.patient) is None  # not a site version
    with pytest.raises(ModelError, match="gate it on the site data it was fitted on"):
        site_holdout(manifest, set_a_path, site.data.patient)
    # Pseudonyms, as `cds site import` writes them, not integers.
    renamed = site_frame.assign(patient=np.array([f"en-{p:08x}" for p in site_frame["patient"]]))
    renamed.to_parquet(path)
    named = load_site(path, SPEC)
    manifest = register_site_version(
        registry, model, named, recalibrate_site(model, named, seed=5, replicates=5), command="test"
    )
    held = site_holdout(manifest, path, named.data.patient)
    assert held is not None and np.array_equal(held, site_split(named.data.patient, 5).holdout)
    assert str(held[0]).startswith("en-")
