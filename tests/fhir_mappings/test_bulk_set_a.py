"""Set A -> FHIR Bulk Data NDJSON -> `read_export` gives back set A: SepsisLabel exactly (from the
sepsis Conditions, by PhysioNet's rule and the service's ICU hour), the 40 columns as the training
path builds them (`physionet_to_table`, which the training loader feeds to the features), and the
very table the hook path (`to_canonical` on the same resources) builds for each stay.

Tolerance: the plain export sends every value in its canonical unit, so values come back exactly;
the untidy export (ICU stays as their own Encounter, varied units and shapes) within 1e-9
relative, the round-off of a unit conversion and back (as in test_round_trip.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from demo_ehr import set_a_export_resources, write_set_a_export
from fhir_mappings import (
    CANONICAL_COLUMNS,
    PatientRecord,
    Pseudonymizer,
    build_features,
    parse_datetime,
    physionet_to_table,
    read_export,
    sepsis_feature_spec,
    to_canonical,
)
from fhir_mappings.table import CanonicalTable

pytestmark = pytest.mark.data

PSEUDO = Pseudonymizer(b"bulk-set-a-key-0123456789")
COLUMNS = list(CANONICAL_COLUMNS)


def _pick(set_a: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    by_patient = set_a.groupby("patient")
    septic = by_patient["SepsisLabel"].max()
    late = by_patient["ICULOS"].min() > 1
    no_admission = by_patient["HospAdmTime"].first().isna()
    picks = set(rng.choice(septic.index, 300, replace=False).tolist())
    picks |= set(rng.choice(septic[septic == 1].index, 150, replace=False).tolist())
    picks |= set(rng.choice(late[late].index, 60, replace=False).tolist())
    picks |= set(no_admission[no_admission].index.tolist())  # set A has one such stay
    return set_a[set_a["patient"].isin(picks)]


def _by_set_a_patient(frame: pd.DataFrame, patients: np.ndarray) -> dict[int, pd.DataFrame]:
    back = {PSEUDO.pseudonym("Patient", f"physionet-{int(p)}"): int(p) for p in patients}
    return {back[person]: rows.set_index("ICULOS") for person, rows in frame.groupby("person")}


@pytest.mark.parametrize("untidy", [False, True], ids=["plain", "icu-encounter-and-shapes"])
def test_set_a_export_reads_back_as_set_a(set_a: pd.DataFrame, tmp_path: Path, untidy: bool) -> None:
    subset = _pick(set_a, seed=16 + untidy)
    write_set_a_export(subset, tmp_path, gzip=True, icu_as_child=untidy, shapes=untidy, observation_files=3)
    frame, report = read_export(tmp_path, pseudonymizer=PSEUDO)
    patients = subset["patient"].unique()
    assert report.stays == len(patients) and not report.stays_skipped
    assert not report.observations.unmapped_codes and not report.observations.unit_errors
    got = _by_set_a_patient(frame, patients)
    assert len(got) == len(patients)
    tolerance = {"rtol": 1e-9, "atol": 1e-9} if untidy else {"rtol": 0, "atol": 0}
    septic = 0
    for pid, rows in subset.groupby("patient"):
        mine = got[int(pid)]
        hours = rows["ICULOS"].to_numpy(dtype=int)
        assert mine.index.tolist() == list(range(1, hours.max() + 1))  # ICU hour 1 to the last
        np.testing.assert_array_equal(
            mine.loc[hours, "SepsisLabel"].to_numpy(),
            rows["SepsisLabel"].to_numpy(),
            err_msg=f"patient {pid}",
        )
        expected = physionet_to_table(rows).table
        np.testing.assert_allclose(
            mine.loc[expected.iculos, COLUMNS].to_numpy(float),
            expected.values,
            equal_nan=True,
            err_msg=f"patient {pid}",
            **tolerance,
        )
        septic += int(rows["SepsisLabel"].max())
    assert report.septic_stays == septic >= 150


def test_bulk_and_hook_paths_build_the_same_table_and_features(set_a: pd.DataFrame, tmp_path: Path) -> None:
    """The same resources: streamed through `read_export`, and given to the hook's `to_canonical`
    at the end of each stay. One mapping: identical tables, hence identical features."""
    ids = np.sort(set_a["patient"].unique())
    subset = set_a[set_a["patient"].isin(np.random.default_rng(3).choice(ids, 80, replace=False))]
    write_set_a_export(subset, tmp_path, shapes=True)
    frame, _ = read_export(tmp_path, pseudonymizer=PSEUDO)
    got = _by_set_a_patient(frame, subset["patient"].unique())

    resources: dict[str, dict[str, list[dict]]] = {}
    locations = {}
    for kind, resource in set_a_export_resources(subset, shapes=True):
        if kind == "Location":
            locations[resource["id"]] = resource
            continue
        pid = resource["id"] if kind == "Patient" else resource["subject"]["reference"].split("/")[1]
        resources.setdefault(pid, {}).setdefault(kind, []).append(resource)
    spec = sepsis_feature_spec()
    for pid, stay in resources.items():
        encounter = stay["Encounter"][0]
        as_of = encounter["location"][0]["period"]["end"]
        record = PatientRecord(pid, stay["Patient"][0], encounter, stay["Observation"], locations)
        hook = to_canonical(record, as_of=parse_datetime(as_of, "end"), pseudonymizer=PSEUDO)
        mine = got[int(pid.removeprefix("physionet-"))]
        np.testing.assert_array_equal(mine[COLUMNS].to_numpy(float), hook.table.values, err_msg=pid)
        bulk_table = CanonicalTable.from_frame(mine.reset_index())
        np.testing.assert_array_equal(
            build_features(bulk_table, spec), build_features(hook.table, spec), err_msg=pid
        )
    assert len(resources) == 80
