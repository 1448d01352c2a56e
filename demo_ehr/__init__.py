"""A demo EHR for tests, benchmarks and the demo: PhysioNet stays as FHIR, served over loopback."""

from __future__ import annotations

from .diabetes_fhir import DischargeResources, discharge_to_fhir
from .ehr_identity import EhrIdentity, EhrJwtAuth, endpoint_audience
from .fhir_server import DemoFhirServer
from .hook_requests import discharge_hook_request, patient_view_request, searchset
from .loopback import LoopbackServer, free_port, serve_in_thread, wait_until_healthy
from .physionet_export import ICU_START, set_a_export_resources, write_set_a_export
from .physionet_fhir import StayResources, icu_start_for_hour, stay_to_fhir
from .smart_launcher import DEFAULT_LAUNCHER_DIR, SmartLauncher, launch_code, launcher_missing, start_launcher
from .web import DemoPatient, demo_ehr_web, feedback_item, markdown_html

__all__ = [
    "DEFAULT_LAUNCHER_DIR",
    "DemoFhirServer",
    "DemoPatient",
    "DischargeResources",
    "EhrIdentity",
    "EhrJwtAuth",
    "ICU_START",
    "LoopbackServer",
    "SmartLauncher",
    "StayResources",
    "demo_ehr_web",
    "discharge_hook_request",
    "discharge_to_fhir",
    "endpoint_audience",
    "feedback_item",
    "free_port",
    "icu_start_for_hour",
    "launch_code",
    "launcher_missing",
    "markdown_html",
    "patient_view_request",
    "searchset",
    "serve_in_thread",
    "set_a_export_resources",
    "start_launcher",
    "stay_to_fhir",
    "wait_until_healthy",
    "write_set_a_export",
]
