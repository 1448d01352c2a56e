"""Risk bands (models/bands.py): each band's PPV and sensitivity measured on validation data, a
`very-high` band only where the data shows a PPV worth interrupting for, levels that set the card's
indicator (above the threshold an alert, `critical` only from the PPV target), the committed
manifests measured again from the data, and a site's bands from CDS_RISK_BANDS checked at start."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from pydantic import ValidationError

from cds import Settings
from cds.app import load_models, site_bands
from demo_ehr import patient_view_request
from fhir_mappings import Pseudonymizer
from hooks import SEPSIS, ScoredCard, ScoringInput
from models import (
    ALERT,
    BELOW,
    INTERRUPT,
    ModelRegistry,
    RiskBands,
    RiskModel,
    band_report,
    model_task,
    with_interrupt_band,
)
from models.bands import interrupt_bound
from testkit.helpers import synthetic_stay
from tests.conftest import DATA_DIR, need


def _scores() -> tuple[np.ndarray, np.ndarray]:
    """1,000 scores: 900 at 0.01 (9 positives), 60 at 0.2 (12), 40 at 0.5 (20)."""
    p = np.r_[np.full(900, 0.01), np.full(60, 0.2), np.full(40, 0.5)]
    y = np.r_[np.zeros(891), np.ones(9), np.zeros(48), np.ones(12), np.zeros(20), np.ones(20)]
    return p, y


def test_each_band_s_ppv_and_sensitivity_are_counted_from_the_scores() -> None:
    p, y = _scores()
    report = band_report({"low": 0.0, "high": 0.1, "very-high": 0.4}, p, y, measured_on="made up")
    low, high, very = report.bands
    assert (report.rows, report.positives) == (1000, 41)
    assert (low.rows, low.positives, low.ppv, low.sensitivity) == (900, 9, 0.01, 1.0)
    assert (high.rows, high.positives, high.ppv) == (60, 12, 0.2)
    assert high.sensitivity == round(32 / 41, 4)  # positives in this band or above
    assert (very.rows, very.positives, very.ppv, very.sensitivity) == (40, 20, 0.5, round(20 / 41, 4))
    empty = band_report({"low": 0.0, "top": 0.9}, p, y, measured_on="made up").bands[1]
    assert empty.rows == 0 and empty.ppv is None and empty.sensitivity == 0.0


def test_a_very_high_band_only_where_ppv_reaches_the_target_on_enough_positives() -> None:
    p, y = _scores()
    # From 0.5: PPV 0.5 on 20 positives; from 0.2: 32/100 = 0.32 on 32 positives.
    assert interrupt_bound(p, y, 0.1, critical_ppv=0.3, min_positives=30) == 0.2
    assert interrupt_bound(p, y, 0.1, critical_ppv=0.3, min_positives=10) == 0.2  # the lowest such cut
    assert interrupt_bound(p, y, 0.1, critical_ppv=0.4, min_positives=10) == 0.5
    assert interrupt_bound(p, y, 0.1, critical_ppv=0.4, min_positives=30) is None  # too few positives
    assert interrupt_bound(p, y, 0.3, critical_ppv=0.3, min_positives=10) == 0.5  # never below threshold
    bands = with_interrupt_band({"low": 0.0, "high": 0.1}, p, y, 0.1, critical_ppv=0.4)
    assert bands == {"low": 0.0, "high": 0.1}  # 0.5 is reached on 20 positives only: no band
    bands = with_interrupt_band({"low": 0.0, "high": 0.1}, p, y, 0.1, critical_ppv=0.3)
    assert bands == {"low": 0.0, "high": 0.1, "very-high": 0.2}


def test_levels_alert_above_the_threshold_and_interrupt_only_from_the_ppv_target() -> None:
    bands = RiskBands.build(
        [("low", 0.0, 0.01, 1.0), ("moderate", 0.02, 0.05, 0.8), ("high", 0.04, 0.12, 0.6)]
        + [("very-high", 0.2, 0.31, 0.1)],
        threshold=0.04,
        measured_on="x",
        critical_ppv=0.3,
    )
    assert [b.level for b in bands.bands] == [BELOW, BELOW, ALERT, INTERRUPT]
    assert bands.band(0.039).name == "moderate" and bands.band(0.04).name == "high"
    assert bands.band(0.9).name == "very-high" and bands.band(0.0).name == "low"
    # The same bands under a stricter site target: nothing interrupts.
    strict = RiskBands.build(
        [(b.name, b.lower, b.ppv, b.sensitivity) for b in bands.bands],
        threshold=0.04,
        measured_on="x",
        critical_ppv=0.5,
    )
    assert [b.level for b in strict.bands] == [BELOW, BELOW, ALERT, ALERT]
    for bad in ([("low", 0.1, None, None)], [("low", 0.0, 1.2, None)], [("low", 0.0, None, None)] * 2):
        with pytest.raises(ValueError):
            RiskBands.build(bad, threshold=0.04, measured_on="x")


def _model(name: str) -> RiskModel:
    spec = model_task(name).feature_spec()
    return RiskModel(ModelRegistry().load(name, spec), spec, nthread=1)


def test_the_committed_models_carry_their_band_report_and_sepsis_alerts_without_interrupting() -> None:
    sepsis, readmission = _model("sepsis"), _model("readmission")
    for model in (sepsis, readmission):
        report = model.manifest.band_report
        assert report is not None and [b.name for b in report.bands] == list(model.manifest.risk_bands)
        assert sum(b.rows for b in report.bands) == report.rows
        assert sum(b.positives for b in report.bands) == report.positives
        assert model.bands.named("high") is not None and model.band_level("high") in (ALERT, INTERRUPT)
        assert model.band_level("low") == BELOW
    # Sepsis: no band of the held-out hours reaches PPV 0.3, so a high score is a warning, not critical.
    assert "very-high" not in sepsis.manifest.risk_bands and sepsis.band_level("high") == ALERT
    high = sepsis.manifest.band_report.stats("high")  # type: ignore[union-attr]
    assert high is not None and high.ppv is not None and high.ppv < 0.3
    # Readmission: its validation discharges show a band from which PPV reaches 0.3.
    very = readmission.manifest.band_report.stats("very-high")  # type: ignore[union-attr]
    assert very is not None and very.ppv is not None and very.ppv >= 0.3 and very.positives >= 30
    assert readmission.band_level("very-high") == INTERRUPT and readmission.band_level("high") == ALERT


def test_a_high_sepsis_score_is_a_warning_card_stating_its_band_s_validation() -> None:
    model = _model("sepsis")
    body = patient_view_request(synthetic_stay(hours=30))
    fetched = {
        k: [e["resource"] for e in v["entry"]] if v.get("resourceType") == "Bundle" else v
        for k, v in body["prefetch"].items()
    }
    scored = SEPSIS.score(
        ScoringInput(
            context=body["context"],
            fetched=fetched,
            model=model,
            now=datetime.now(UTC),
            pseudonymizer=Pseudonymizer(b"bands-test-key-0123456789abcdef"),
            card_uuid=str(uuid.uuid4()),
            source="",
        )
    )
    assert isinstance(scored, ScoredCard) and scored.band == "high"
    data = scored.card["extension"]["org.cds-ml.risk"]
    assert scored.card["indicator"] == "warning" and data["bandLevel"] == ALERT
    high = model.bands.named("high")
    assert high is not None and data["bandValidation"]["ppv"] == high.ppv
    assert "held-out test patients" in data["bandValidation"]["measuredOn"]


def test_the_committed_band_reports_are_measured_again_from_the_data() -> None:
    """`cds models bands readmission` reproduces the committed manifest's report from the data."""
    path = need(DATA_DIR / "diabetes130" / "diabetic_data.csv.gz", "Diabetes 130-US")
    model = _model("readmission")
    bands, report = model_task("readmission").measure_bands(model, path)
    assert bands == model.manifest.risk_bands
    assert report == model.manifest.band_report


SITE = {
    "sepsis": {
        "measured_on": "go-live silent run, 2026-10, 1,204 ICU stays",
        "bands": [
            {"name": "low", "lower": 0.0, "ppv": 0.004, "sensitivity": 1.0},
            {"name": "high", "lower": 0.03, "ppv": 0.08, "sensitivity": 0.7},
            {"name": "very-high", "lower": 0.12, "ppv": 0.33, "sensitivity": 0.2},
        ],
    }
}


def test_a_site_sets_its_bands_from_its_go_live_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_RISK_BANDS", json.dumps(SITE))
    settings = Settings(_env_file=None)
    model = _model("sepsis")
    model.with_site_bands(site_bands(settings, model))
    assert [(b.name, b.level) for b in model.bands.bands] == [
        ("low", BELOW),
        ("high", ALERT),
        ("very-high", INTERRUPT),
    ]
    assert model.band(0.2) == "very-high" and model.bands.measured_on.startswith("this site: go-live")
    monkeypatch.setenv("CDS_CRITICAL_PPV", "0.4")  # the site's own interrupt target
    stricter = site_bands(Settings(_env_file=None), model)
    assert stricter.named("very-high").level == ALERT  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bands",
    [
        [{"name": "high", "lower": 0.0}],  # the first band must be low, from 0
        [{"name": "low", "lower": 0.0}, {"name": "high", "lower": 0.0}],  # bounds must increase
        [{"name": "low", "lower": 0.0}, {"name": "high", "lower": 1.5}],
        [{"name": "low", "lower": 0.0}, {"name": "urgent", "lower": 0.1}],  # words the cards know
        [{"name": "low", "lower": 0.0, "ppv": 2}],
        [
            {"name": "low", "lower": 0.0, "sensitivity": 0.5},
            {"name": "high", "lower": 0.1, "sensitivity": 0.9},
        ],
    ],
)
def test_site_bands_that_make_no_sense_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, bands: list[dict[str, object]]
) -> None:
    monkeypatch.setenv("CDS_RISK_BANDS", json.dumps({"sepsis": {"measured_on": "x", "bands": bands}}))
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_site_bands_for_a_model_the_server_does_not_serve_stop_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CDS_RISK_BANDS", json.dumps({"sepsis-v9": SITE["sepsis"]}))
    with pytest.raises(ValueError, match="does not serve"):
        load_models(Settings(_env_file=None))
