"""The canonical hourly table: the one shape that both FHIR and training files are turned into.

One row per patient per ICU hour (ICULOS, 1-based, consecutive within a patient); columns are
`CANONICAL_COLUMNS` in canonical units, NaN where nothing was measured in that hour. Patients
are contiguous blocks. Identities are pseudonyms (FHIR) or the dataset's own de-identified ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import MappingError
from .variables import CANONICAL_COLUMNS

__all__ = ["CanonicalTable"]

_COLUMN_INDEX = {name: i for i, name in enumerate(CANONICAL_COLUMNS)}


@dataclass(frozen=True, eq=False)
class CanonicalTable:
    patient: np.ndarray  # (n,) patient key per row
    iculos: np.ndarray  # (n,) int32 ICU hour, 1-based
    values: np.ndarray  # (n, len(CANONICAL_COLUMNS)) float64

    def __post_init__(self) -> None:
        n = len(self.patient)
        if self.iculos.shape != (n,) or self.values.shape != (n, len(CANONICAL_COLUMNS)):
            raise MappingError("canonical table arrays have inconsistent shapes")
        if n:
            starts = self.group_starts_mask()
            steps = np.diff(self.iculos)
            if np.any(steps[~starts[1:]] != 1):
                raise MappingError("ICULOS must increase by one hour within each patient")
            if len(np.unique(self.patient[starts])) != int(starts.sum()):
                raise MappingError("each patient's rows must be contiguous")

    def __len__(self) -> int:
        return len(self.patient)

    @staticmethod
    def column_index(name: str) -> int:
        return _COLUMN_INDEX[name]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, _COLUMN_INDEX[name]]

    def group_starts_mask(self) -> np.ndarray:
        """True on the first row of each patient."""
        p = self.patient
        mask = np.ones(len(p), dtype=bool)
        if len(p) > 1:
            mask[1:] = p[1:] != p[:-1]
        return mask

    def group_start_index(self) -> np.ndarray:
        """For every row, the index of its patient's first row."""
        mask = self.group_starts_mask()
        return np.maximum.accumulate(np.where(mask, np.arange(len(mask)), 0))

    def patients(self) -> np.ndarray:
        firsts: np.ndarray = self.patient[self.group_starts_mask()]
        return firsts

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.values, columns=list(CANONICAL_COLUMNS))
        frame.insert(0, "ICULOS", self.iculos)
        frame.insert(0, "patient", self.patient)
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CanonicalTable:
        """From a frame with `patient`, `ICULOS` and the canonical columns (missing ones are NaN)."""
        values = np.full((len(frame), len(CANONICAL_COLUMNS)), np.nan)
        for name, i in _COLUMN_INDEX.items():
            if name in frame:
                values[:, i] = frame[name].to_numpy(dtype=float, na_value=np.nan)
        return cls(
            patient=frame["patient"].to_numpy(),
            iculos=frame["ICULOS"].to_numpy(dtype=np.int32),
            values=values,
        )
