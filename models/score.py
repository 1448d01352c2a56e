"""A loaded model that scores feature rows: calibrated probability, risk band, SHAP explanation.

Pure given a loaded booster. SHAP values are XGBoost's exact TreeSHAP (`pred_contribs`) in
log-odds: contributions plus the base value equal the raw margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from fhir_mappings import FeatureSpec

from .bands import BELOW, CRITICAL_PPV, RiskBands
from .manifest import ModelManifest
from .registry import LoadedArtifact

__all__ = ["Contribution", "Explanation", "RiskModel", "manifest_bands"]


def manifest_bands(manifest: ModelManifest, critical_ppv: float | None = None) -> RiskBands:
    """The manifest's bands, each with the PPV and sensitivity its validation data measured."""
    report = manifest.band_report
    entries = []
    for name, lower in (manifest.risk_bands or {"low": 0.0}).items():
        stats = report.stats(name) if report is not None else None
        entries.append(
            (name, float(lower), stats.ppv if stats else None, stats.sensitivity if stats else None)
        )
    return RiskBands.build(
        entries,
        threshold=manifest.threshold,
        measured_on=report.measured_on if report is not None else "not measured",
        critical_ppv=critical_ppv
        if critical_ppv is not None
        else (report.critical_ppv if report else CRITICAL_PPV),
    )


@dataclass(frozen=True, slots=True)
class Contribution:
    feature: str
    label: str
    unit: str
    value: float | None  # the feature's value, None when missing
    shap: float  # log-odds


@dataclass(frozen=True)
class Explanation:
    base_value: float
    margin: float
    contributions: tuple[Contribution, ...]  # every feature, in spec order

    def top(self, k: int, *, min_abs: float = 0.0) -> list[Contribution]:
        ranked = sorted(self.contributions, key=lambda c: (-abs(c.shap), c.feature))
        return [c for c in ranked[:k] if abs(c.shap) > min_abs]


class RiskModel:
    def __init__(
        self, artifact: LoadedArtifact, spec: FeatureSpec, *, device: str = "cpu", nthread: int = 0
    ) -> None:
        self.manifest: ModelManifest = artifact.manifest
        self.spec = spec
        self.booster = artifact.booster
        params: dict[str, object] = {"device": device}
        if nthread:
            params["nthread"] = nthread
        # The explanation's DMatrix gets the same thread count: built with every core's OpenMP
        # threads, one row's TreeSHAP took ~16 ms instead of ~0.7 ms on a busy 2-core machine.
        self._nthread = nthread or -1
        self.booster.set_param(params)
        cal = self.manifest.calibration
        self._cal = (
            (np.asarray(cal.x, dtype=np.float64), np.asarray(cal.y, dtype=np.float64))
            if cal.method != "none"
            else None
        )
        self._names = tuple((f.name, f.label, f.unit) for f in spec.features)
        self.bands = manifest_bands(self.manifest)

    def with_site_bands(self, bands: RiskBands) -> None:
        """Serve with a site's bands (from its go-live report) instead of the manifest's."""
        self.bands = bands

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    def margin(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.booster.inplace_predict(features, predict_type="margin", missing=np.nan), dtype=np.float64
        )

    def calibrate(self, raw_probability: np.ndarray) -> np.ndarray:
        if self._cal is None:
            return raw_probability
        x, y = self._cal
        calibrated: np.ndarray = np.interp(raw_probability, x, y)
        return calibrated

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, one per row."""
        raw = 1.0 / (1.0 + np.exp(-self.margin(features)))
        return self.calibrate(raw)

    def band(self, probability: float) -> str:
        """The highest risk band whose lower bound the probability reaches."""
        return self.bands.band(probability).name

    def band_level(self, band: str) -> str:
        """BELOW, ALERT or INTERRUPT (models.bands): what the band asks of the clinician."""
        found = self.bands.named(band)
        return found.level if found is not None else BELOW

    def explain(self, row: np.ndarray) -> Explanation:
        """TreeSHAP for one feature row (shape (n_features,) or (1, n_features))."""
        x = np.asarray(row, dtype=np.float32).reshape(1, -1)
        dmatrix = xgb.DMatrix(x, missing=np.nan, nthread=self._nthread)
        return self.explanation_of(x[0], self.booster.predict(dmatrix, pred_contribs=True)[0])

    def explanation_of(self, row: np.ndarray, contribs: np.ndarray) -> Explanation:
        """The Explanation of one feature row from its TreeSHAP values (float32, base value last:
        one row of `pred_contribs`), with the values as the model read them (float32), so a row
        of the sweep's batch SHAP gives what `explain` gives a hook call."""
        shap = contribs.tolist()  # Python floats at once: ~250 numpy scalar reads cost ~1 ms
        values = np.asarray(row, dtype=np.float32).reshape(-1).tolist()
        out = tuple(
            Contribution(
                feature=name, label=label, unit=unit, value=None if value != value else value, shap=shap[j]
            )
            for j, ((name, label, unit), value) in enumerate(zip(self._names, values, strict=True))
        )
        return Explanation(base_value=shap[-1], margin=float(contribs.sum()), contributions=out)
