"""FHIR R4 resources -> de-identified canonical clinical table -> model features.

Pure: no network, no files beyond the packaged code tables, no clock. Imports none of our
other packages.
"""

from __future__ import annotations

from .bundle import SearchPage, next_link, read_search_page
from .bundle_map import NO_ROW, BundleMapping, UnmappedCode, bundle_entries, map_bundle, unmapped_reason
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
from .observations import (
    MappingReport,
    Measurement,
    measurements_from_observation,
    observation_time,
    safe_token,
    scan_observation,
)
from .profiles import EPIC, GENERIC, ORACLE_HEALTH, PROFILES, VendorProfile, observation_queries, select_profile
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
from .validation import ValidationIssue, validate_resource, validate_resources
from .writeback import build_provenance, build_risk_assessment, provenance_id

__all__ = [
    "AGE_CAP",
    "BundleMapping",
    "CANONICAL_COLUMNS",
    "CDSError",
    "CLINICAL_VARIABLES",
    "CLOCK_FEATURES",
    "CanonicalTable",
    "CodeRow",
    "CodeTable",
    "Conversion",
    "EPIC",
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
    "NO_ROW",
    "NotFHIRError",
    "ORACLE_HEALTH",
    "PHYSIONET_COLUMNS",
    "PROFILES",
    "PatientRecord",
    "Pseudonymizer",
    "SCORE_INPUTS",
    "SCORE_SERIES",
    "STATIC_VARIABLES",
    "SearchPage",
    "TabularTable",
    "UnitError",
    "UnitTable",
    "UnmappedCode",
    "VARIABLES",
    "VITAL_VARIABLES",
    "ValidationIssue",
    "Variable",
    "VendorProfile",
    "age_in_years",
    "build_features",
    "build_provenance",
    "build_risk_assessment",
    "bundle_entries",
    "default_code_table",
    "default_unit_table",
    "ensure_resource",
    "icu_clock",
    "map_bundle",
    "measurements_from_observation",
    "mews",
    "news2",
    "next_link",
    "observation_queries",
    "observation_time",
    "parse_date",
    "parse_datetime",
    "physionet_to_table",
    "provenance_id",
    "qsofa",
    "read_search_page",
    "reference_id",
    "safe_token",
    "scan_observation",
    "select_encounter",
    "select_profile",
    "sepsis_feature_spec",
    "shock_index",
    "sirs",
    "sofa_partial",
    "to_canonical",
    "unmapped_reason",
    "validate_resource",
    "validate_resources",
    "variable",
]
