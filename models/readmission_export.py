"""A FHIR Bulk export as the readmission model's data: the discharges the `readmission-risk` hook
would have scored, with their 30-day outcome (fhir_mappings.read_discharge_export, generic profile).

The patient and encounter keys are pseudonyms under the export's own key (`datasets.export_key`),
so adapt, the gate and evaluate re-derive the same ids and the same site split; they stay in memory
(a lineage keeps a hash of the id set, never an id). Subgroups come from the Patient resource
(US Core race, sex, age at discharge), in the Diabetes 130-US file's words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fhir_mappings import DischargeExportReport, DischargeTable, Pseudonymizer, read_discharge_export

from .datasets import export_key
from .errors import DatasetError

__all__ = ["EXPORT_COHORT", "ReadmissionExport", "read_readmission_export"]

EXPORT_COHORT = (
    "Cohort: every finished inpatient stay with a discharge time, mapped at its discharge by the hook's "
    "own mapping (resources recorded by then only); discharges ending in death or hospice left out; "
    "readmitted = the patient's next inpatient Encounter starts within 30 days of discharge."
)


@dataclass(frozen=True)
class ReadmissionExport:
    table: DischargeTable
    label: np.ndarray  # int8, 1 = readmitted within 30 days
    frame: pd.DataFrame  # race, gender, age (band text): the subgroups, in the Diabetes 130 words
    report: DischargeExportReport


def _age_band(age: int | None) -> str:
    return "?" if age is None else f"[{age // 10 * 10}-{age // 10 * 10 + 10})"


def read_readmission_export(path: Path | str) -> ReadmissionExport:
    """The export's discharges with an outcome; a DatasetError when there is none."""
    found, report = read_discharge_export(path, pseudonymizer=Pseudonymizer(export_key(path)))
    if not found:
        why = (
            ", ".join(f"{k} {v}" for k, v in sorted(report.left_out.items()))
            or "no finished inpatient Encounter"
        )
        raise DatasetError(f"the export at {path} gave no discharge with a readmission outcome ({why})")
    table = DischargeTable.concat(d.mapped.table for d in found)
    frame = pd.DataFrame(
        {
            "race": [d.race for d in found],
            "gender": [d.sex for d in found],
            "age": [_age_band(d.age) for d in found],
        }
    )
    return ReadmissionExport(table, np.array([d.readmitted for d in found], dtype=np.int8), frame, report)
