"""Hand-written FHIR R4 payloads in the shapes Epic, Oracle Health (Cerner) and MEDITECH send,
each value with the variable and canonical value a reader expects (or the refusal it expects).

Shapes follow the vendors' public sandboxes and documentation: Cerner event codes (code set 72,
tenant in the system URL) first in `code.coding` with LOINC after them, sometimes twice; unit text
such as `DegC` or `x10(6)/mcL` beside the UCUM code; Epic flowsheet-row codings beside LOINC, unit
spellings like "mmHg", "bpm", "breaths/minute", FiO2 in percent, `K/mm3`, creatinine in umol/L,
lowercase `meq/L`, Epic's own Encounter.class system and a planned "Preadmission" encounter;
MEDITECH results as `valueString`, bundles without a Patient. Used by the tests and by
`benchmarks/vendor_figures.py`, which prints the per-vendor figures and writes the bundles as files
for `cds map --bundle`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_mappings import PROFILES, MappingReport, measurements_from_observation

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SNOMED = "http://snomed.info/sct"
CERNER_TENANT_A = "ec2458f2-1e24-41c8-b71b-0e701af7583d"
CERNER_TENANT_B = "0b8a0111-e8e6-4c26-a91c-5069cbc6b1ca"
EPIC_FLOWSHEET = "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679"
EPIC_SITE_FLOWSHEET = "urn:oid:1.2.840.114350.1.13.283.2.7.2.707679"  # another Epic customer
EPIC_LAB = "urn:oid:1.2.840.114350.1.13.0.1.7.2.768282"
EPIC_CLASS = "urn:oid:1.2.840.114350.1.72.1.7.7.10.696784.13260"

AS_OF = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def cerner(tenant: str, code: str, display: str) -> dict[str, Any]:
    return {
        "system": f"https://fhir.cerner.com/{tenant}/codeSet/72",
        "code": code,
        "display": display,
        "userSelected": True,
    }


def loinc(code: str) -> dict[str, Any]:
    return {"system": LOINC, "code": code}


def qty(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value, "unit": unit}
    if code is not None:
        q.update(system=UCUM, code=code)
    return q


@dataclass(frozen=True)
class Refused:
    """A value the reader must refuse, and where the refusal is counted: `skipped:<reason>`,
    `unit_errors:<variable>|<unit>`, `implausible:<variable>` or `unmapped:<system|code>`."""

    where: str


@dataclass
class Case:
    resource: dict[str, Any]
    expected: list[tuple[str, float]] | Refused


@dataclass
class VendorFixture:
    name: str  # file stem
    vendor: str  # epic | oracle-health | meditech
    profile: str
    cases: list[Case]
    others: list[dict[str, Any]]  # Patient, Encounters, Locations
    stay: str  # "table:<hours>" or the stay_reason map_bundle reports
    hook: str  # what the sepsis hook answers for it: "scored" or a NoCard reason and stay reason
    now: datetime  # the time of the hook call and the end of the mapped table (the last value)
    patient_from: str = "Patient"
    notes: list[str] = field(default_factory=list)

    def bundle(self) -> dict[str, Any]:
        resources = copy.deepcopy([*self.others, *(c.resource for c in self.cases)])
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _obs(
    oid: str,
    coding: list[dict[str, Any]],
    at: datetime,
    *,
    category: str = "vital-signs",
    subject: str,
    value: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": coding, **({"text": coding[0]["display"]} if coding[0].get("display") else {})},
        "subject": {"reference": subject},
        "effectiveDateTime": at.isoformat().replace("+00:00", "Z"),
    }
    if value is not None:
        resource["valueQuantity"] = value
    resource.update(extra)
    return resource


def _patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1961-04-02"}


# --- Oracle Health (Cerner Millennium) ---------------------------------------------------------------


def oracle_health_icu() -> VendorFixture:
    """An ICU stay: vitals with event codes first and LOINC after (the 703501 systolic case), one
    tenant's codes and another's, labs, two impossible units the sandbox really sends."""
    pid, t0 = "12724066", AS_OF - timedelta(hours=30)
    s = f"Patient/{pid}"
    a, b = CERNER_TENANT_A, CERNER_TENANT_B
    at = [t0 + timedelta(hours=h) for h in range(31)]
    cases = [
        # Systolic with its event code first: the value lost (as HR) before; SBP now.
        Case(
            _obs(
                "M-1",
                [cerner(a, "703501", "Systolic Blood Pressure"), loinc("8480-6")],
                at[2],
                subject=s,
                value=qty(128, "mmHg", "mm[Hg]"),
            ),
            [("SBP", 128.0)],
        ),
        Case(
            _obs(
                "M-2",
                [cerner(a, "703516", "Diastolic Blood Pressure"), loinc("8462-4")],
                at[2],
                subject=s,
                value=qty(71, "mmHg", "mm[Hg]"),
            ),
            [("DBP", 71.0)],
        ),
        # The BP panel of the sandbox: SNOMED + LOINC panel, components coded twice in LOINC.
        Case(
            _obs(
                "BP-3",
                [{"system": SNOMED, "code": "75367002"}, loinc("85354-9")],
                at[5],
                subject=s,
                component=[
                    {
                        "code": {
                            "coding": [
                                cerner(b, "703501", "Systolic Blood Pressure"),
                                loinc("8480-6"),
                                loinc("8480-6"),
                            ]
                        },
                        "valueQuantity": qty(142, "mmHg", "mm[Hg]"),
                    },
                    {
                        "code": {
                            "coding": [
                                cerner(b, "703516", "Diastolic Blood Pressure"),
                                loinc("8462-4"),
                                loinc("8462-4"),
                            ]
                        },
                        "valueQuantity": qty(88, "mmHg", "mm[Hg]"),
                    },
                ],
            ),
            [("SBP", 142.0), ("DBP", 88.0)],
        ),
        Case(
            _obs(
                "M-4",
                [cerner(a, "703306", "Mean Arterial Pressure, Cuff"), loinc("8478-0")],
                at[5],
                subject=s,
                value=qty(106, "mmHg", "mm[Hg]"),
            ),
            [("MAP", 106.0)],
        ),
        Case(
            _obs(
                "M-5",
                [cerner(b, "703558", "Temperature Oral"), loinc("8331-1"), loinc("8331-1")],
                at[6],
                subject=s,
                value=qty(38.4, "DegC", "Cel"),
            ),
            [("Temp", 38.4)],
        ),
        Case(
            _obs(
                "M-6",
                [cerner(a, "7935038", "Heart Rate"), loinc("8867-4")],
                at[6],
                subject=s,
                value=qty(112, "bpm", "/min"),
            ),
            [("HR", 112.0)],
        ),
        Case(
            _obs(
                "M-7",
                [cerner(a, "703540", "Respiratory Rate"), loinc("9279-1")],
                at[6],
                subject=s,
                value=qty(24, "br/min", "/min"),
            ),
            [("Resp", 24.0)],
        ),
        Case(
            _obs(
                "M-8",
                [cerner(a, "8238766", "Oxygen Saturation"), loinc("59408-5")],
                at[6],
                subject=s,
                value=qty(93, "%", "%"),
            ),
            [("O2Sat", 93.0)],
        ),
        # Event code alone (no LOINC), in a tenant the table never named: matched across tenants.
        Case(
            _obs(
                "M-9",
                [cerner(b, "703501", "Systolic Blood Pressure")],
                at[20],
                subject=s,
                value=qty(97, "mmHg", "mm[Hg]"),
            ),
            [("SBP", 97.0)],
        ),
        Case(
            _obs(
                "M-10",
                [cerner("f0a1b2c3-0000-4000-8000-000000000001", "7935038", "Heart Rate")],
                at[20],
                subject=s,
                value=qty(121, "bpm", "/min"),
            ),
            [("HR", 121.0)],
        ),
        Case(
            _obs(
                "M-11",
                [cerner(b, "8713424", "Temperature")],
                at[21],
                subject=s,
                value=qty(101.3, "DegF", "[degF]"),
            ),
            [("Temp", 38.5)],
        ),
        # Labs: event code first, LOINC after; the unverified lab event code is never needed.
        Case(
            _obs(
                "M-12",
                [cerner(a, "21704910", "Potassium Level"), loinc("2823-3")],
                at[8],
                category="laboratory",
                subject=s,
                value=qty(3.1, "mmol/L", "mmol/L"),
            ),
            [("Potassium", 3.1)],
        ),
        Case(
            _obs(
                "M-13",
                [cerner(a, "21704910", "Potassium Level"), loinc("77142-8")],
                at[20],
                category="laboratory",
                subject=s,
                value=qty(3.4, "mEq/L", "meq/L"),
            ),
            [("Potassium", 3.4)],
        ),
        Case(
            _obs(
                "M-14",
                [cerner(a, "2700655", "Glucose Fasting"), loinc("1558-6")],
                at[8],
                category="laboratory",
                subject=s,
                value=qty(141, "mg/dL", "mg/dL"),
            ),
            [("Glucose", 141.0)],
        ),
        Case(
            _obs(
                "M-15",
                [cerner(a, "4218692", "WBC"), loinc("6690-2")],
                at[8],
                category="laboratory",
                subject=s,
                value=qty(14.2, "x10(3)/mcL", "10*3/uL"),
            ),
            [("WBC", 14.2)],
        ),
        Case(
            _obs(
                "M-16",
                [cerner(a, "2700001", "Lactic Acid Lvl"), loinc("2524-7")],
                at[9],
                category="laboratory",
                subject=s,
                value=qty(4.1, "mmol/L", "mmol/L"),
            ),
            [("Lactate", 4.1)],
        ),
        Case(
            _obs(
                "M-17",
                [cerner(a, "2700002", "Creatinine Lvl"), loinc("2160-0")],
                at[9],
                category="laboratory",
                subject=s,
                value=qty(1.9, "mg/dL", "mg/dL"),
            ),
            [("Creatinine", 1.9)],
        ),
        # What the sandbox really sends and must be refused: WBC in 10*6/uL, haemoglobin in %.
        Case(
            _obs(
                "M-18",
                [cerner(b, "4218774", "Instr WBC"), loinc("6690-2")],
                at[9],
                category="laboratory",
                subject=s,
                value=qty(6, "x10(6)/mcL", "10*6/uL"),
            ),
            Refused("unit_errors:WBC|10*6/uL"),
        ),
        Case(
            _obs(
                "M-19",
                [cerner(b, "4218696", "Hgb"), loinc("718-7")],
                at[9],
                category="laboratory",
                subject=s,
                value=qty(24, "%", "%"),
            ),
            Refused("unit_errors:Hgb|%"),
        ),
        # A text result (chief complaint): not a number, never echoed.
        Case(
            _obs(
                "M-20",
                [cerner(b, "704668", "Chief Complaint"), loinc("8661-1")],
                at[1],
                category="exam",
                subject=s,
                valueString="Pain in left leg after falling.",
            ),
            Refused(f"unmapped:https://fhir.cerner.com/{b}/codeSet/72|704668"),
        ),
    ]
    others = [
        _patient(pid),
        {"resourceType": "Location", "id": "32216049", "name": "MICU", "type": [{"text": "Nurse Unit"}]},
        {
            "resourceType": "Encounter",
            "id": "97939518",
            "status": "in-progress",
            "class": {"system": V3_ACT, "code": "IMP", "display": "inpatient encounter"},
            "subject": {"reference": s},
            "period": {"start": (t0 - timedelta(hours=6)).isoformat()},
            "location": [
                {
                    "location": {"reference": "Location/32216049"},
                    "status": "active",
                    "period": {"start": t0.isoformat()},
                }
            ],
        },
    ]
    return VendorFixture(
        "oracle-health-icu", "oracle-health", "oracle-health", cases, others, "table:21", "scored", at[21]
    )


def oracle_health_outpatient() -> VendorFixture:
    """An ongoing outpatient visit without a period (class in Cerner's own code set 71): the map
    crashed on it; now it prints its report and says why there is no table."""
    pid = "12742400"
    s = f"Patient/{pid}"
    at = AS_OF - timedelta(hours=1)
    cases = [
        Case(
            _obs(
                "M-31",
                [cerner(CERNER_TENANT_A, "703501", "Systolic Blood Pressure"), loinc("8480-6")],
                at,
                subject=s,
                value=qty(131, "mmHg", "mm[Hg]"),
            ),
            [("SBP", 131.0)],
        ),
        Case(
            _obs(
                "M-32",
                [cerner(CERNER_TENANT_A, "7935038", "Heart Rate"), loinc("8867-4")],
                at,
                subject=s,
                value=qty(76, "bpm", "/min"),
            ),
            [("HR", 76.0)],
        ),
    ]
    others = [
        _patient(pid),
        {
            "resourceType": "Encounter",
            "id": "97953477",
            "status": "in-progress",
            "class": {
                "system": f"https://fhir.cerner.com/{CERNER_TENANT_A}/codeSet/71",
                "code": "309309",
                "display": "Outpatient",
            },
            "subject": {"reference": s},
        },
    ]
    return VendorFixture(
        "oracle-health-outpatient",
        "oracle-health",
        "oracle-health",
        cases,
        others,
        "no-icu-clock",
        "not-applicable:no-icu-clock",
        at,
    )


# --- Epic ----------------------------------------------------------------------------------------------


def _epic(
    row: str, display: str, code: str | None = None, system: str = EPIC_FLOWSHEET
) -> list[dict[str, Any]]:
    coding = [{"system": system, "code": row, "display": display}]
    if code is not None:
        coding.append({"system": LOINC, "code": code, "display": display})
    return coding


def epic_icu() -> VendorFixture:
    """An Epic ICU stay beside a planned Preadmission (status planned, no end) and a finished
    hospital outpatient visit; Epic class codes, never IMP; flowsheet codings beside LOINC."""
    pid = "erXuFYUfucBZaryVksYEcMg3"
    s = f"Patient/{pid}"
    t0 = AS_OF - timedelta(hours=40)
    at = [t0 + timedelta(hours=h) for h in range(41)]
    cases = [
        Case(
            _obs("eVit1", _epic("8", "Pulse", "8867-4"), at[3], subject=s, value=qty(104, "bpm", "/min")),
            [("HR", 104.0)],
        ),
        Case(
            _obs(
                "eVit2",
                _epic("9", "Resp", "9279-1"),
                at[3],
                subject=s,
                value=qty(22, "breaths/minute", "/min"),
            ),
            [("Resp", 22.0)],
        ),
        Case(
            _obs("eVit3", _epic("6", "Temp", "8310-5"), at[3], subject=s, value=qty(38.9, "degC", "Cel")),
            [("Temp", 38.9)],
        ),
        Case(
            _obs(
                "eVit4", _epic("6", "Temp", "8310-5"), at[10], subject=s, value=qty(101.8, "degF", "[degF]")
            ),
            [("Temp", 38.777778)],
        ),
        Case(
            _obs("eVit5", _epic("10", "SpO2", "59408-5"), at[3], subject=s, value=qty(91, "%", "%")),
            [("O2Sat", 91.0)],
        ),
        Case(
            _obs(
                "eVit6",
                _epic("5", "BP", "85354-9"),
                at[3],
                subject=s,
                component=[
                    {"code": {"coding": [loinc("8480-6")]}, "valueQuantity": qty(96, "mmHg", "mm[Hg]")},
                    {"code": {"coding": [loinc("8462-4")]}, "valueQuantity": qty(58, "mmHg", "mm[Hg]")},
                ],
            ),
            [("SBP", 96.0), ("DBP", 58.0)],
        ),
        Case(
            _obs("eVit7", _epic("301550", "FiO2 (%)", "3150-0"), at[4], subject=s, value=qty(21, "%", "%")),
            [("FiO2", 0.21)],
        ),
        # Another Epic customer's flowsheet OID (customer 283, environment 2), pulse without LOINC.
        Case(
            _obs(
                "eVit8",
                _epic("8", "Pulse", system=EPIC_SITE_FLOWSHEET),
                at[30],
                subject=s,
                value=qty(118, "bpm", "/min"),
            ),
            [("HR", 118.0)],
        ),
        # Epic's sandbox writes vitals with a bare value: the code fixes the unit (heart rate /min).
        Case(
            _obs("eVit9", _epic("8", "Heart Rate", "8867-4"), at[31], subject=s, value={"value": 75}),
            [("HR", 75.0)],
        ),
        Case(
            _obs("eVit11", _epic("9", "Resp", "9279-1"), at[31], subject=s, value=qty(26, "breaths/minute")),
            [("Resp", 26.0)],
        ),
        # Labs: Epic lab component OID beside LOINC, the units Epic sites print.
        Case(
            _obs(
                "eLab1",
                _epic("1558", "WBC", "6690-2", EPIC_LAB),
                at[5],
                category="laboratory",
                subject=s,
                value=qty(15.1, "K/mm3"),
            ),
            [("WBC", 15.1)],
        ),
        Case(
            _obs(
                "eLab2",
                _epic("1526", "CREATININE", "2160-0", EPIC_LAB),
                at[5],
                category="laboratory",
                subject=s,
                value=qty(168, "umol/L", "umol/L"),
            ),
            [("Creatinine", 1.900416)],
        ),
        Case(
            _obs(
                "eLab3",
                _epic("1520", "POTASSIUM", "2823-3", EPIC_LAB),
                at[5],
                category="laboratory",
                subject=s,
                value=qty(5.2, "meq/L"),
            ),
            [("Potassium", 5.2)],
        ),
        Case(
            _obs(
                "eLab4",
                _epic("1533", "LACTATE", "2524-7", EPIC_LAB),
                at[6],
                category="laboratory",
                subject=s,
                value=qty(3.3, "mmol/L", "mmol/L"),
            ),
            [("Lactate", 3.3)],
        ),
        Case(
            _obs(
                "eLab5",
                _epic("1540", "PLATELETS", "777-3", EPIC_LAB),
                at[6],
                category="laboratory",
                subject=s,
                value=qty(96, "K/uL"),
            ),
            [("Platelets", 96.0)],
        ),
        # Impossible units: refused, never converted.
        Case(
            _obs(
                "eLab6",
                _epic("1520", "POTASSIUM", "2823-3", EPIC_LAB),
                at[7],
                category="laboratory",
                subject=s,
                value=qty(4.0, "g/dL", "g/dL"),
            ),
            Refused("unit_errors:Potassium|g/dL"),
        ),
        Case(
            _obs(
                "eLab7",
                _epic("1541", "HEMOGLOBIN", "718-7", EPIC_LAB),
                at[7],
                category="laboratory",
                subject=s,
                value=qty(9.1, "umol/L", "umol/L"),
            ),
            Refused("unit_errors:Hgb|umol/L"),
        ),
        Case(
            _obs(
                "eLab8",
                _epic("1558", "WBC", "6690-2", EPIC_LAB),
                at[7],
                category="laboratory",
                subject=s,
                value=qty(12.0, "10*3/mL", "10*3/mL"),
            ),
            Refused("unit_errors:WBC|10*3/mL"),
        ),
        # An unverified flowsheet row alone (Temp row 6, no LOINC): not applied, reported.
        Case(
            _obs("eVit10", _epic("6", "Temp"), at[32], subject=s, value=qty(37.2, "degC", "Cel")),
            Refused(f"unmapped:{EPIC_FLOWSHEET}|6"),
        ),
    ]
    others = [
        _patient(pid),
        {
            "resourceType": "Location",
            "id": "e4W4rmGe9QzuGm2Dy4NBqVc0KDe6yvUVsBT3n5J8aFrk3",
            "name": "EMH MICU",
        },
        {
            "resourceType": "Encounter",
            "id": "eIcuStay3",
            "status": "in-progress",
            "class": {"system": EPIC_CLASS, "code": "1", "display": "Inpatient"},
            "subject": {"reference": s},
            "period": {"start": (t0 - timedelta(hours=10)).isoformat()},
            "location": [
                {
                    "location": {
                        "reference": "Location/e4W4rmGe9QzuGm2Dy4NBqVc0KDe6yvUVsBT3n5J8aFrk3",
                        "display": "EMH MICU",
                    },
                    "period": {"start": t0.isoformat()},
                }
            ],
        },
        {
            "resourceType": "Encounter",
            "id": "ePreAdmit7",
            "status": "planned",
            "class": {"system": EPIC_CLASS, "code": "9", "display": "Preadmission"},
            "subject": {"reference": s},
            "period": {"start": "2023-02-11T14:00:00Z"},
        },
        {
            "resourceType": "Encounter",
            "id": "eHov2",
            "status": "finished",
            "class": {"system": EPIC_CLASS, "code": "4", "display": "HOV"},
            "subject": {"reference": s},
            "period": {"start": "2026-01-12T15:00:00Z", "end": "2026-01-12T15:40:00Z"},
        },
    ]
    return VendorFixture("epic-icu", "epic", "epic", cases, others, "table:32", "scored", at[32])


def epic_preadmission_only() -> VendorFixture:
    """Only a planned Preadmission (no end, three years back) and an outpatient visit: no stay (it
    became a 25,299-hour ICU clock before)."""
    pid = "eq081-VQEgP8drUUqCWzHfw3"
    s = f"Patient/{pid}"
    cases = [
        Case(
            _obs(
                "eVit21",
                _epic("8", "Pulse", "8867-4"),
                AS_OF - timedelta(hours=2),
                subject=s,
                value=qty(81, "bpm", "/min"),
            ),
            [("HR", 81.0)],
        ),
    ]
    others = [
        _patient(pid),
        {
            "resourceType": "Encounter",
            "id": "ePreAdmit9",
            "status": "planned",
            "class": {"system": EPIC_CLASS, "code": "9", "display": "Preadmission"},
            "subject": {"reference": s},
            "period": {"start": "2023-03-20T09:00:00Z"},
        },
        {
            "resourceType": "Encounter",
            "id": "eAppt5",
            "status": "in-progress",
            "class": {"system": EPIC_CLASS, "code": "5", "display": "Appointment"},
            "subject": {"reference": s},
            "period": {"start": (AS_OF - timedelta(hours=3)).isoformat()},
        },
    ]
    return VendorFixture(
        "epic-preadmission-only",
        "epic",
        "epic",
        cases,
        others,
        "no-stay",
        "not-applicable",
        AS_OF - timedelta(hours=2),
    )


# --- MEDITECH (Expanse) -------------------------------------------------------------------------------


def meditech_long_stay() -> VendorFixture:
    """A bundle without a Patient; an inpatient stay of 301 days without an ICU location (a
    7,233-hour clock before); results as valueString."""
    s = "Patient/b3a6c1d0-7e4f-4a8e-9d61-6c1f0e2b9a44"
    admitted = AS_OF - timedelta(days=301, hours=9)
    at = AS_OF - timedelta(hours=4)
    cases = [
        Case(
            _obs("mt-1", [loinc("4544-3")], at, category="laboratory", subject=s, valueString="45.0 %"),
            [("Hct", 45.0)],
        ),
        Case(
            _obs("mt-2", [loinc("718-7")], at, category="laboratory", subject=s, valueString="15.0 gm/L"),
            [("Hgb", 1.5)],
        ),
        Case(
            _obs("mt-3", [loinc("2823-3")], at, category="laboratory", subject=s, valueString="4.0"),
            [("Potassium", 4.0)],
        ),
        Case(
            _obs("mt-4", [loinc("10839-9")], at, category="laboratory", subject=s, valueString="<0.01 ng/mL"),
            Refused("skipped:comparator"),
        ),
        Case(
            _obs(
                "mt-5",
                [loinc("2823-3")],
                at,
                category="laboratory",
                subject=s,
                valueString="HEMOLYZED - REDRAW",
            ),
            Refused("skipped:string-not-a-number"),
        ),
        Case(
            _obs("mt-6", [loinc("2160-0")], at, category="laboratory", subject=s, valueString="1.1"),
            Refused("unit_errors:Creatinine|<none>"),
        ),  # mg/dL or umol/L: the code does not say
        Case(_obs("mt-7", [loinc("8867-4")], at, subject=s, value=qty(88, "/min", "/min")), [("HR", 88.0)]),
    ]
    others = [
        {
            "resourceType": "Encounter",
            "id": "mt-enc-1",
            "status": "in-progress",
            "class": {"system": V3_ACT, "code": "IMP", "display": "inpatient encounter"},
            "subject": {"reference": s},
            "period": {"start": admitted.isoformat()},
        }
    ]
    return VendorFixture(
        "meditech-long-stay",
        "meditech",
        "meditech",
        cases,
        others,
        "icu-clock-too-long",
        "not-applicable:icu-clock-too-long",
        at,
        patient_from="Encounter.subject",
    )


def meditech_icu_no_patient() -> VendorFixture:
    """A bundle without a Patient whose stay is an ordinary ICU stay: the patient comes from the
    Encounter's subject, and an Observation of another patient in the bundle is counted, not used."""
    s = "Patient/0d6a9f2e-3b41-4c55-8e0a-5a9e2c7d1f63"
    t0 = AS_OF - timedelta(hours=20)
    cases = [
        Case(
            _obs(
                "mt-11", [loinc("8867-4")], t0 + timedelta(hours=2), subject=s, value=qty(97, "/min", "/min")
            ),
            [("HR", 97.0)],
        ),
        Case(
            _obs(
                "mt-12",
                [loinc("8480-6")],
                t0 + timedelta(hours=2),
                subject=s,
                value=qty(102, "mm[Hg]", "mm[Hg]"),
            ),
            [("SBP", 102.0)],
        ),
        Case(
            _obs("mt-13", [loinc("9279-1")], t0 + timedelta(hours=2), subject=s, valueString="18"),
            [("Resp", 18.0)],
        ),
        Case(
            _obs(
                "mt-14",
                [loinc("2524-7")],
                t0 + timedelta(hours=3),
                category="laboratory",
                subject=s,
                valueString="2.6 mmol/L",
            ),
            [("Lactate", 2.6)],
        ),
        Case(
            _obs(
                "mt-15",
                [loinc("2345-7")],
                t0 + timedelta(hours=3),
                category="laboratory",
                subject=s,
                valueString="182 mg/dL",
            ),
            [("Glucose", 182.0)],
        ),
    ]
    stranger = _obs(
        "mt-99",
        [loinc("8867-4")],
        t0 + timedelta(hours=4),
        subject="Patient/someone-else",
        value=qty(60, "/min", "/min"),
    )
    others = [
        {"resourceType": "Location", "id": "mt-loc-icu", "name": "Medical Intensive Care Unit (MICU)"},
        {
            "resourceType": "Encounter",
            "id": "mt-enc-2",
            "status": "in-progress",
            "class": {"system": V3_ACT, "code": "IMP"},
            "subject": {"reference": s},
            "period": {"start": (t0 - timedelta(hours=5)).isoformat()},
            "location": [
                {"location": {"reference": "Location/mt-loc-icu"}, "period": {"start": t0.isoformat()}}
            ],
        },
        stranger,
    ]
    return VendorFixture(
        "meditech-icu-no-patient",
        "meditech",
        "meditech",
        cases,
        others,
        "table:3",
        "scored",
        t0 + timedelta(hours=3),
        patient_from="Encounter.subject",
        notes=["mt-99 is another patient's: skipped:other-patient"],
    )


FIXTURES = (
    oracle_health_icu,
    oracle_health_outpatient,
    epic_icu,
    epic_preadmission_only,
    meditech_long_stay,
    meditech_icu_no_patient,
)


def all_fixtures() -> list[VendorFixture]:
    return [make() for make in FIXTURES]


def _refusal(report: MappingReport) -> str | None:
    """Where a refused value was counted, as vendor_payloads.Refused spells it."""
    places = [
        *(f"skipped:{k}" for k in report.skipped),
        *(f"unit_errors:{k}" for k in report.unit_errors),
        *(f"implausible:{k}" for k in report.implausible),
        *(f"unmapped:{k}" for k in report.unmapped_codes),
    ]
    return places[0] if len(places) == 1 else None


def check_value(fixture: VendorFixture, case_index: int) -> str:
    """ "right", "refused-right" or a description of what went wrong, for one value of a fixture."""
    case = fixture.cases[case_index]
    report = MappingReport()
    got = measurements_from_observation(case.resource, PROFILES[fixture.profile], report)
    if isinstance(case.expected, Refused):
        if got:
            return f"mapped {[(m.variable, m.value) for m in got]}, expected refusal {case.expected.where}"
        return (
            "refused-right" if _refusal(report) == case.expected.where else f"refused as {report.as_dict()}"
        )
    found = sorted((m.variable, round(m.value, 6)) for m in got)
    wanted = sorted((v, round(x, 6)) for v, x in case.expected)
    return "right" if found == wanted else f"got {found}, expected {wanted}"
