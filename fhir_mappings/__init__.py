"""FHIR R4 resources -> de-identified canonical clinical table -> model features.

Pure: no network, no files beyond the packaged code tables, no clock. Imports none of our
other packages.
"""

from __future__ import annotations

from .bundle import SearchPage, next_link, read_search_page
from .codes import CodeRow, CodeTable, default_code_table
from .deid import AGE_CAP, Pseudonymizer, age_in_years
from .diabetes130 import (
    A1C_BANDS,
    DIABETES130_REQUIRED,
    EXCLUDED_DISPOSITIONS,
    GLUCOSE_BANDS,
    age_band,
    diabetes130_to_table,
    readmission_cohort,
    readmitted_within_30_days,
)
from .diagnoses import (
    CHARLSON_WEIGHTS,
    DIAGNOSIS_GROUPS,
    ICD9,
    ICD10,
    SNOMED,
    DiagnosisCoder,
    charlson_score,
    default_diagnosis_coder,
)
from .discharge_fhir import A1C_CODES, GLUCOSE_CODES, RXNORM, DischargeRecord, MappedDischarge, discharge_to_table
from .discharge_table import (
    ADMISSION_SOURCES,
    ADMISSION_TYPES,
    DISCHARGE_COLUMNS,
    DISCHARGE_GROUPS,
    DRUG_COLUMNS,
    DRUG_STATUSES,
    DischargeTable,
    DrugRow,
    EncounterCodes,
    default_encounter_codes,
    diabetes_drugs,
)
from .errors import CDSError, InvalidResourceError, MappingError, NotFHIRError, UnitError
from .features import FEATURE_CODE_VERSION, Feature, FeatureSpec, build_features, sepsis_feature_spec
from .fhir_to_table import MappedStay, PatientRecord, to_canonical
from .observations import MappingReport, Measurement, measurements_from_observation, observation_time
from .profiles import GENERIC, VendorProfile
from .readmission_features import (
    READMISSION_FEATURE_VERSION,
    build_readmission_features,
    charlson_index,
    lace_points,
    readmission_feature_spec,
)
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
    "A1C_BANDS",
    "A1C_CODES",
    "ADMISSION_SOURCES",
    "ADMISSION_TYPES",
    "AGE_CAP",
    "CANONICAL_COLUMNS",
    "CDSError",
    "CHARLSON_WEIGHTS",
    "CLINICAL_VARIABLES",
    "CanonicalTable",
    "CodeRow",
    "CodeTable",
    "Conversion",
    "DIABETES130_REQUIRED",
    "DIAGNOSIS_GROUPS",
    "DISCHARGE_COLUMNS",
    "DISCHARGE_GROUPS",
    "DRUG_COLUMNS",
    "DRUG_STATUSES",
    "DiagnosisCoder",
    "DischargeRecord",
    "DischargeTable",
    "DrugRow",
    "EXCLUDED_DISPOSITIONS",
    "EncounterCodes",
    "FEATURE_CODE_VERSION",
    "Feature",
    "FeatureSpec",
    "GENERIC",
    "GLUCOSE_BANDS",
    "GLUCOSE_CODES",
    "ICD10",
    "ICD9",
    "INPATIENT_CLASSES",
    "IcuClock",
    "InvalidResourceError",
    "LAB_VARIABLES",
    "MappedDischarge",
    "MappedStay",
    "MappingError",
    "MappingReport",
    "Measurement",
    "NotFHIRError",
    "PHYSIONET_COLUMNS",
    "PatientRecord",
    "Pseudonymizer",
    "READMISSION_FEATURE_VERSION",
    "RXNORM",
    "SNOMED",
    "STATIC_VARIABLES",
    "SearchPage",
    "TabularTable",
    "UnitError",
    "UnitTable",
    "VARIABLES",
    "VITAL_VARIABLES",
    "Variable",
    "VendorProfile",
    "age_band",
    "age_in_years",
    "build_features",
    "build_provenance",
    "build_readmission_features",
    "build_risk_assessment",
    "charlson_index",
    "charlson_score",
    "default_code_table",
    "default_diagnosis_coder",
    "default_encounter_codes",
    "default_unit_table",
    "diabetes130_to_table",
    "diabetes_drugs",
    "discharge_to_table",
    "ensure_resource",
    "icu_clock",
    "lace_points",
    "measurements_from_observation",
    "next_link",
    "observation_time",
    "parse_date",
    "parse_datetime",
    "physionet_to_table",
    "provenance_id",
    "read_search_page",
    "readmission_cohort",
    "readmission_feature_spec",
    "readmitted_within_30_days",
    "reference_id",
    "select_encounter",
    "sepsis_feature_spec",
    "to_canonical",
    "variable",
]
