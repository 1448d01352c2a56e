"""FHIR R4 resources -> de-identified canonical clinical table -> model features.

Pure: no network, no files beyond the packaged code tables, no clock. Imports none of our
other packages.
"""

from __future__ import annotations

from .bundle import SearchPage, next_link, read_search_page
from .codes import CodeRow, CodeTable, default_code_table
from .deid import AGE_CAP, Pseudonymizer, age_in_years
from .errors import CDSError, InvalidResourceError, MappingError, NotFHIRError, UnitError
from .clinical_scores import SCORE_INPUTS, mews, news2, qsofa, shock_index, sirs, sofa_partial
from .features import (
    CLOCK_FEATURES,
    FEATURE_CODE_VERSION,
    SCORE_SERIES,
    Feature,
    FeatureSpec,
    build_features,
    sepsis_feature_spec,
)
from .fhir_to_table import MappedStay, PatientRecord, to_canonical
from .observations import MappingReport, Measurement, measurements_from_observation, observation_time
from .profiles import GENERIC, VendorProfile
from .resources import ensure_resource, parse_date, parse_datetime, reference_id
from .stay import INPATIENT_CLASSES, IcuClock, icu_clock, select_encounter
from .table import CanonicalTable
from .tabular import PHYSIONET_COLUMNS, TabularTable, physionet_to_table
from .units import Conversion, UnitTable, default_unit_table
from .variables import (
    CANONICAL_COLUMNS,
    CLINICAL_VARIABLES,
    LAB_VARIABLES,
    STATIC_VARIABLES,
    VARIABLES,
    VITAL_VARIABLES,
    Variable,
    variable,
)
from .writeback import build_provenance, build_risk_assessment, provenance_id

__all__ = [
    "AGE_CAP",
    "CANONICAL_COLUMNS",
    "CDSError",
    "CLINICAL_VARIABLES",
    "CLOCK_FEATURES",
    "CanonicalTable",
    "CodeRow",
    "CodeTable",
    "Conversion",
    "FEATURE_CODE_VERSION",
    "Feature",
    "FeatureSpec",
    "GENERIC",
    "INPATIENT_CLASSES",
    "IcuClock",
    "InvalidResourceError",
    "LAB_VARIABLES",
    "MappedStay",
    "MappingError",
    "MappingReport",
    "Measurement",
    "NotFHIRError",
    "PHYSIONET_COLUMNS",
    "PatientRecord",
    "Pseudonymizer",
    "SCORE_INPUTS",
    "SCORE_SERIES",
    "STATIC_VARIABLES",
    "SearchPage",
    "TabularTable",
    "UnitError",
    "UnitTable",
    "VARIABLES",
    "VITAL_VARIABLES",
    "Variable",
    "VendorProfile",
    "age_in_years",
    "build_features",
    "build_provenance",
    "build_risk_assessment",
    "default_code_table",
    "default_unit_table",
    "ensure_resource",
    "icu_clock",
    "measurements_from_observation",
    "mews",
    "news2",
    "next_link",
    "observation_time",
    "parse_date",
    "parse_datetime",
    "physionet_to_table",
    "provenance_id",
    "qsofa",
    "read_search_page",
    "reference_id",
    "select_encounter",
    "sepsis_feature_spec",
    "shock_index",
    "sirs",
    "sofa_partial",
    "to_canonical",
    "variable",
]
