"""Drift and data quality from live traffic, over real HTTP: three EHRs (each its own JWT issuer
and JWKS server) send real set A stays as FHIR; one sends lactate in mg/dL labelled mmol/L, one
has a heart-rate feed that stopped six hours before the call. The drift report must flag exactly
those two, with the right feature, and stay quiet on the third."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from cds import Settings
from cds.settings import TrustedIssuer
from demo_ehr import (
    EhrIdentity,
    EhrJwtAuth,
    icu_start_for_hour,
    patient_view_request,
    serve_in_thread,
    stay_to_fhir,
)
from models import development_split, psi, reference_from
from testkit.helpers import serve_cds
from testkit.metrics import ALLOWED_LABELS, samples

MG_DL_PER_MMOL_L = 9.01  # lactate
CALLS_PER_EHR = 150
QUIET, LACTATE, HR_STOPPED = (
    "https://quiet.example.org",
    "https://lactate.example.org",
    "https://hr.example.org",
)


# --- pure: the reference and PSI -------------------------------------------------------------


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(1.5, 0.5, size=(20_000, 1))
    train[rng.random(20_000) < 0.3] = np.nan
    ref = reference_from(train, rng.random(20_000), ["Lactate__last"], source="test").features[0]
    edges = np.asarray(ref.edges)
    from models import bin_counts

    same = rng.normal(1.5, 0.5, 150)
    same[rng.random(150) < 0.3] = np.nan
    shifted = same * MG_DL_PER_MMOL_L
    stopped = np.full(150, np.nan)
    assert psi(ref.fractions, bin_counts(edges, same)) < 0.1
    assert psi(ref.fractions, bin_counts(edges, shifted)) > 1.0
    assert psi(ref.fractions, bin_counts(edges, stopped)) > 1.0
    assert abs(ref.missing - 0.3) < 0.02 and len(ref.fractions) == len(ref.edges) + 2


def test_the_committed_models_carry_a_reference_for_every_feature() -> None:
    from models import ModelRegistry

    registry = ModelRegistry()
    for name in ("sepsis", "readmission"):
        manifest = registry.manifest(name)
        assert manifest.reference is not None, name
        assert [f.name for f in manifest.reference.features] == manifest.feature_names
        for f in (*manifest.reference.features, manifest.reference.score):
            assert abs(sum(f.fractions) - 1) < 1e-3 and len(f.fractions) == len(f.edges) + 2


@pytest.fixture(scope="module")
def sepsis_model() -> Any:
    from fhir_mappings import sepsis_feature_spec
    from models import ModelRegistry, RiskModel

    spec = sepsis_feature_spec()
    return RiskModel(ModelRegistry().load("sepsis", spec), spec)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_two_workers_tallies_add_up_in_the_shared_store_and_bin_as_the_reference(
    store: str, sepsis_model: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two monitors (two workers) observe rows and flush into one store: the summary's counts are
    the sum, and each feature's live bins are exactly `bin_counts` of the values against its edges."""
    import asyncio

    from cds.drift import DriftThresholds, RedisDriftBackend, SqliteDriftBackend
    from models import bin_counts

    def backend() -> Any:
        if store == "sqlite":
            return SqliteDriftBackend(tmp_path / "drift.sqlite3")
        return RedisDriftBackend(
            request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix")
        )

    from cds.drift import DriftMonitor

    rng = np.random.default_rng(7)
    reference = sepsis_model.manifest.reference
    names = [f.name for f in reference.features]
    rows = np.stack(
        [rng.choice(np.asarray(f.edges + [np.nan, 1e6, -1e6]), size=40) for f in reference.features], 1
    )
    for flag in ("Unit1", "Unit2"):  # no ICU unit named: one tally per worker and bucket
        rows[:, names.index(flag)] = np.nan
    clock = [1_800_000_000.0]
    workers = [
        DriftMonitor({"sepsis": sepsis_model}, backend(), issuers=[QUIET], clock=lambda: clock[0])
        for _ in (0, 1)
    ]
    for i, row in enumerate(rows):
        workers[i % 2].observe(
            sepsis_model, QUIET, row, 0.01, {"observations": 10, "unit_errors": {"Lactate|mg/dL": 1}}
        )

    async def flush_and_read() -> dict[str, Any]:
        for w in workers:
            await w.flush()
        found = await workers[0].summary(clock[0] - 3600, DriftThresholds(min_calls=0))
        by_bucket = await workers[0].backend.read(clock[0] - 3600)
        totals = await workers[1].backend.read(clock[0] - 3600, by_bucket=False)
        [(key, fields)] = totals.items()
        assert key[3] == 0 and fields == {k: v for k, v in next(iter(by_bucket.values())).items()}
        claims = [await w.backend.claim("evaluate:test", 60) for w in (*workers, *workers)]
        assert claims == [True, False, False, False]  # one evaluator per round
        for w in workers:
            await w.backend.close()
        return found

    summary = asyncio.run(flush_and_read())
    judged = summary["models"][0]["issuers"][QUIET]
    assert judged["scored"] == judged["calls"] == len(rows)
    assert judged["quality"]["observations"] == 10 * len(rows)
    assert judged["quality"]["by_unit"] == [{"key": "Lactate|mg/dL", "count": len(rows), "share": 0.1}]
    live = {f["feature"]: f["live"] for f in judged["features"]}
    for i, f in enumerate(reference.features):
        expected = bin_counts(np.asarray(f.edges), rows[:, i]) / len(rows)
        assert np.allclose(live[names[i]], np.round(expected, 4)), names[i]


# --- over HTTP -------------------------------------------------------------------------------


def _rows(set_a: pd.DataFrame, n: int, seed: int) -> list[tuple[pd.DataFrame, int]]:
    """`n` hours drawn uniformly from the held-out test patients' rows (what the reference holds)."""
    test_ids = development_split(set_a["patient"].to_numpy(), 2019)[1]
    held = set_a[set_a["patient"].isin(test_ids)]
    picks = held.sample(n=n, random_state=seed)
    by_patient = {pid: rows.reset_index(drop=True) for pid, rows in held.groupby("patient")}
    return [(by_patient[pid], int(hour)) for pid, hour in zip(picks["patient"], picks["ICULOS"], strict=True)]


def _shift(rows: pd.DataFrame, hour: int, how: str) -> pd.DataFrame:
    rows = rows.copy()
    if how == "lactate":
        rows["Lactate"] = rows["Lactate"] * MG_DL_PER_MMOL_L  # mg/dL values, still labelled mmol/L
    elif how == "hr-stopped":
        rows.loc[rows["ICULOS"] > hour - 6, "HR"] = np.nan  # the monitor feed stopped 6 h ago
    return rows


@pytest.fixture(scope="module")
def identities() -> Iterator[dict[str, EhrIdentity]]:
    found: dict[str, EhrIdentity] = {}
    with (
        serve_in_thread((quiet := EhrIdentity(issuer=QUIET)).app()) as a,
        serve_in_thread((lactate := EhrIdentity(issuer=LACTATE)).app()) as b,
        serve_in_thread((hr := EhrIdentity(issuer=HR_STOPPED)).app()) as c,
    ):
        for identity, server in ((quiet, a), (lactate, b), (hr, c)):
            identity.jwks_url = f"{server.url}/.well-known/jwks.json"
            found[identity.issuer] = identity
        yield found


@pytest.fixture(scope="module")
def traffic(
    set_a: pd.DataFrame, identities: dict[str, EhrIdentity], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    var_dir = tmp_path_factory.mktemp("drift") / "var"
    settings = Settings(
        var_dir=var_dir,
        pseudonym_key="test-key-0123456789abcdef",
        auth_issuers=tuple(TrustedIssuer(iss=i.issuer, jwks_url=i.jwks_url) for i in identities.values()),
        drift_evaluate_s=0.5,
        drift_flush_s=0.5,
        drift_bucket_s=10,  # fine buckets: the report's timeline shows each EHR's traffic in turn
    )
    plan = {QUIET: "none", LACTATE: "lactate", HR_STOPPED: "hr-stopped"}
    answered = {iss: 0 for iss in plan}
    started = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    with serve_cds(settings) as server:
        for seed, (iss, how) in enumerate(plan.items()):
            with httpx.Client(base_url=server.url, timeout=20, auth=EhrJwtAuth(identities[iss])) as client:
                for rows, hour in _rows(set_a, CALLS_PER_EHR, seed=100 + seed):
                    stay = stay_to_fhir(
                        _shift(rows, hour, how),
                        icu_start=icu_start_for_hour(datetime.now(UTC), hour),
                        up_to_hour=hour,
                    )
                    response = client.post("/cds-services/sepsis-risk", json=patient_view_request(stay))
                    assert response.status_code == 200, response.text
                    answered[iss] += bool(response.json()["cards"])
        report = httpx.get(f"{server.url}/drift", params={"since": "2h"}).json()
        metrics = ""
        for _ in range(50):  # the drift gauges are set by the background loop (every 0.5 s here)
            metrics = httpx.get(f"{server.url}/metrics").text
            if "cds_drift_warning" in metrics:
                break
            time.sleep(0.2)
        ready = httpx.get(f"{server.url}/readyz")
    yield {
        "report": report,
        "metrics": metrics,
        "answered": answered,
        "var_dir": var_dir,
        "settings": settings,
        "ready": ready,
        "started": started,
    }


def _sepsis(report: dict[str, Any]) -> dict[str, Any]:
    [entry] = [m for m in report["models"] if m["model"] == "sepsis"]
    return entry


@pytest.mark.data
def test_the_report_flags_the_mislabelled_lactate_and_the_stopped_feed_and_nothing_else(
    traffic: dict[str, Any],
) -> None:
    entry = _sepsis(traffic["report"])
    issuers = entry["issuers"]
    assert set(issuers) == {QUIET, LACTATE, HR_STOPPED}
    assert all(issuers[i]["scored"] >= 0.9 * CALLS_PER_EHR for i in (QUIET, LACTATE))

    quiet = issuers[QUIET]
    assert quiet["judged"] and not quiet["warning"], quiet["warnings"]
    assert quiet["features_over_threshold"] == 0 and quiet["score"]["psi"] < 0.2

    lactate = issuers[LACTATE]
    assert lactate["warning"]
    top = lactate["features"][0]
    assert top["feature"] == "Lactate__last" and top["psi"] > 1.0, lactate["features"][:3]
    assert any("Lactate__last PSI" in w for w in lactate["warnings"])
    # only lactate's own features moved
    assert all(f["feature"].startswith("Lactate") for f in lactate["features"] if f["psi"] >= 0.2)

    hr = issuers[HR_STOPPED]
    assert hr["warning"]
    moved = {f["feature"] for f in hr["features"] if f["psi"] >= 0.2}
    # HR's own features and the scores computed from HR (shock index = HR / SBP, SIRS)
    assert moved and all(name.startswith(("HR__", "shock_index__", "sirs__")) for name in moved), moved
    assert sum(name.startswith("HR__") for name in moved) >= 3
    assert "HR__hours_since" in moved or any("HR" in w and "missing" in w for w in hr["warnings"])

    warned = {w["issuer"] for w in traffic["report"]["warnings"]}
    assert warned == {LACTATE, HR_STOPPED}


@pytest.mark.data
def test_the_warning_state_is_in_metrics_by_configured_issuer_and_nothing_about_patients(
    traffic: dict[str, Any],
) -> None:
    found = samples(traffic["metrics"])
    warning = {labels["issuer"]: v for name, labels, v in found if name == "cds_drift_warning"}
    assert warning == {QUIET: 0.0, LACTATE: 1.0, HR_STOPPED: 1.0}
    fhir_issuers = {labels.get("issuer") for name, labels, _ in found if name.startswith("cds_")}
    assert fhir_issuers <= {None, QUIET, LACTATE, HR_STOPPED}
    for name, labels, _ in found:
        assert set(labels) <= ALLOWED_LABELS, (name, labels)
        for value in labels.values():
            assert "physionet" not in value and "Patient" not in value and "Practitioner" not in value
    serving = [
        (labels["model"], labels["version"]) for name, labels, v in found if name == "cds_model_serving"
    ]
    assert ("sepsis", "2") in serving


@pytest.mark.data
def test_readyz_with_warm_jwks_and_the_html_report_from_the_cli(
    traffic: dict[str, Any], tmp_path: Path
) -> None:
    assert traffic["ready"].status_code == 200, traffic["ready"].text
    assert traffic["ready"].json()["checks"] == {"models": "ok", "store": "ok", "jwks": "ok"}
    out = tmp_path / "drift.html"
    env = {"CDS_VAR_DIR": str(traffic["var_dir"]), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "drift", "report", "--since", traffic["started"], "--out", str(out),
         "--json", str(tmp_path / "drift.json")],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert page.count("<svg") >= 5 and "Lactate__last" in page and LACTATE in page
    assert "<script" not in page and "http-equiv" not in page and "By ICU unit" in page
    assert not any(f'src="{p}' in page or f"href='{p}" in page for p in ("http", "//"))
    data = json.loads((tmp_path / "drift.json").read_text())
    assert {w["issuer"] for w in data["warnings"]} == {LACTATE, HR_STOPPED}, [
        w for w in data["warnings"] if w["issuer"] not in (LACTATE, HR_STOPPED)
    ]
    # CDS_DRIFT_SCREENSHOT=docs/drift-report.png keeps the picture (the one in docs/ is made so).
    shot = Path(os.environ.get("CDS_DRIFT_SCREENSHOT") or tmp_path / "drift.png")
    if _screenshot(out, shot):
        assert shot.stat().st_size > 10_000


def _screenshot(page: Path, target: Path) -> bool:
    """Headless chromium's picture of the report, when chromium is installed (docs/drift-report.png)."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        return False
    done = subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={target}", "--window-size=1200,2600", page.as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    return done.returncode == 0 and target.exists()


@pytest.mark.data
@pytest.mark.parametrize("name", ["readmission", "sepsis"])
def test_cds_drift_reference_reproduces_the_committed_manifest(
    name: str, set_a_path: Path, tmp_path: Path
) -> None:
    """The committed references were written by `cds drift reference`: run again on a copy of the
    registry, it writes the same manifest bytes and leaves the model file as it was."""
    import shutil

    from models import DEFAULT_REGISTRY, ModelRegistry

    registry = tmp_path / "artifacts"
    shutil.copytree(DEFAULT_REGISTRY, registry)
    version = ModelRegistry().active_version(name)
    folder = registry / name / version
    committed = (folder / "manifest.json").read_bytes()
    model = (folder / "model.ubj").read_bytes()
    (folder / "manifest.json").write_text(
        ModelRegistry().manifest(name).model_copy(update={"reference": None}).model_dump_json(indent=2) + "\n"
    )
    env = {**os.environ, "CDS_MODEL_DIR": str(registry), "CDS_DATA_DIR": str(set_a_path.parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "cds.cli", "drift", "reference", name],
        capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (folder / "manifest.json").read_bytes() == committed
    assert (folder / "model.ubj").read_bytes() == model


@pytest.mark.data
def test_the_report_also_breaks_the_traffic_down_by_icu_unit(
    traffic: dict[str, Any], set_a: pd.DataFrame
) -> None:
    """Per ICU unit of the scored row (Unit1 = MICU, Unit2 = SICU; set A leaves some unnamed), all
    issuers together: the units add up to the whole traffic, and the lactate mislabelled by one
    EHR shows in the unit where most of that EHR's lactate values were."""
    entry = _sepsis(traffic["report"])
    units = entry["icu_units"]
    assert {"MICU", "SICU"} <= set(units) <= {"MICU", "SICU", "unknown"}
    assert sum(u["scored"] for u in units.values()) == entry["all"]["scored"]
    assert sum(u["calls"] for u in units.values()) == entry["all"]["calls"]
    lactate = {
        unit: next(f["psi"] for f in units[unit]["features"] if f["feature"] == "Lactate__last")
        for unit in ("MICU", "SICU")
    }
    assert max(lactate.values()) > 0.2, lactate  # diluted by the two other EHRs' patients
    metrics_text = traffic["metrics"]
    assert "@MICU" not in metrics_text and "@SICU" not in metrics_text  # issuer labels stay issuers
