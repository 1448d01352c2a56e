"""Table -> FHIR (in the varied shapes real EHRs send) -> canonical table is the identity on set A.

Tolerance: values sent in the canonical unit come back bit-exact; values sent in another unit
(converted with full float precision by the demo converter) come back within 1e-9 relative /
1e-9 absolute, the round-off of x / factor * factor. Static columns (age, sex, unit, HospAdmTime)
are exact after the shared de-identifying normalisation (whole years capped at 90, 0.01 h).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from demo_ehr import stay_to_fhir
from fhir_mappings import (
    CLINICAL_VARIABLES,
    PatientRecord,
    Pseudonymizer,
    physionet_to_table,
    to_canonical,
    validate_resources,
)

pytestmark = pytest.mark.data

PATIENTS = 1000
PSEUDO = Pseudonymizer(b"round-trip-key-0123456789")
ICU_START = datetime(2026, 2, 3, 4, 0, tzinfo=UTC)


def _round_trip(
    rows: pd.DataFrame, seed: int, digits: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    stay = stay_to_fhir(rows, icu_start=ICU_START, shapes=seed, significant_digits=digits)
    last = int(rows["ICULOS"].max())
    record = PatientRecord(
        stay.patient_id, stay.patient, stay.encounter, stay.observations, {stay.location["id"]: stay.location}
    )
    mapped = to_canonical(
        record, as_of=ICU_START + timedelta(hours=last - 1, minutes=45), pseudonymizer=PSEUDO
    )
    expected = physionet_to_table(rows).table
    assert mapped.current_hour == last
    got = mapped.table.values[expected.iculos - 1]
    before = mapped.table.values[: int(expected.iculos[0]) - 1, : len(CLINICAL_VARIABLES)]
    assert np.isnan(before).all(), "values appeared in hours before the stay's first row"
    return got, expected.values, mapped.report.as_dict()


def test_table_to_fhir_to_table_is_the_identity(set_a: pd.DataFrame) -> None:
    ids = np.sort(set_a["patient"].unique())
    picked = np.random.default_rng(2019).choice(ids, PATIENTS, replace=False)
    frame = set_a[set_a["patient"].isin(picked)]
    compared = skipped = 0
    for pid, rows in frame.groupby("patient", sort=True):
        got, expected, report = _round_trip(rows.reset_index(drop=True), seed=int(pid))
        np.testing.assert_allclose(
            got, expected, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=f"patient {pid}"
        )
        assert not report["unit_errors"] and not report["unmapped_codes"], (pid, report)
        compared += 1
        skipped += sum(report["skipped"].values())
    assert compared == PATIENTS
    assert skipped > 0  # the decoys were sent, and refused


def test_round_trip_with_lab_rounding_stays_within_the_last_printed_digit(set_a: pd.DataFrame) -> None:
    """Values sent in another unit rounded to 4 significant digits, as a lab system prints them.

    Tolerance: half a unit of the 4th digit of the value as sent, i.e. relative 5e-4 for every
    multiplicative conversion; temperature (offset conversions from [degF] and K) within 0.05 Cel.
    """
    ids = np.sort(set_a["patient"].unique())
    picked = np.random.default_rng(7).choice(ids, 200, replace=False)
    frame = set_a[set_a["patient"].isin(picked)]
    temp = CLINICAL_VARIABLES.index("Temp")
    rounded = 0
    for pid, rows in frame.groupby("patient", sort=True):
        got, expected, report = _round_trip(rows.reset_index(drop=True), seed=int(pid), digits=4)
        assert not report["unit_errors"] and not report["unmapped_codes"], (pid, report)
        others = [i for i in range(len(CLINICAL_VARIABLES)) if i != temp]
        np.testing.assert_allclose(
            got[:, others], expected[:, others], rtol=5e-4, atol=0, equal_nan=True, err_msg=f"patient {pid}"
        )
        np.testing.assert_allclose(
            got[:, temp],
            expected[:, temp],
            rtol=0,
            atol=0.05 + 1e-9,
            equal_nan=True,
            err_msg=f"patient {pid}",
        )
        both = ~np.isnan(expected[:, : len(CLINICAL_VARIABLES)])
        rounded += int(
            (got[:, : len(CLINICAL_VARIABLES)][both] != expected[:, : len(CLINICAL_VARIABLES)][both]).sum()
        )
    assert rounded > 0  # rounding really happened, and stayed within the stated tolerance


def test_varied_shapes_are_valid_fhir_and_really_vary(set_a: pd.DataFrame) -> None:
    pid = int(set_a["patient"].iloc[0])
    rows = set_a[set_a["patient"] == pid].reset_index(drop=True)
    stay = stay_to_fhir(rows, icu_start=ICU_START, shapes=7)
    assert validate_resources(stay.all()) == []
    observations = stay.observations
    times = {k for o in observations for k in ("effectiveDateTime", "effectivePeriod", "issued") if k in o}
    assert times == {"effectiveDateTime", "effectivePeriod", "issued"}
    statuses = {o["status"] for o in observations}
    assert "final" in statuses and statuses - {"final", "amended", "corrected"}
    units = {(o.get("valueQuantity") or {}).get("unit") for o in observations}
    assert len(units) > len(
        {o.get("valueQuantity", {}).get("code") for o in stay_to_fhir(rows, icu_start=ICU_START).observations}
    )
