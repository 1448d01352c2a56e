"""The demo a newcomer clicks through, on loopback, with authentication on.

Starts the demo EHR's FHIR server (ICU stays as FHIR: PhysioNet set A patients when
../shared/data is there, synthetic stays otherwise; discharges as FHIR: Diabetes 130-US
discharges when the data is there, a hand-made one otherwise), SMART's reference launcher in front of it as
the EHR's authorization server (when ../shared/tools/smart-launcher and node are there), the
EHR's JWT signing keys, our CDS server trusting that EHR (in this process only: `cds serve`
stays secure by default, with no issuer trusted), and the demo EHR's web page. Then: open the
page, pick a patient or a discharge, see the card, send a decision as feedback, click
"Explain this score".
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

# The demo EHR is demo and test support, not part of the installed product: run from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds import Settings, TrustedIssuer, create_app
from cds.server import uvicorn_options
from cds.settings import SmartEhr
from demo_ehr import (
    DemoFhirServer,
    DemoPatient,
    EhrIdentity,
    demo_ehr_web,
    discharge_to_fhir,
    icu_start_for_hour,
    launch_code,
    launcher_missing,
    serve_in_thread,
    start_launcher,
    stay_to_fhir,
)
from models import read_diabetes130
from testkit.readmission_rows import row as discharge_row

ROOT = Path(__file__).resolve().parents[1]


def synthetic(patient: int, hours: int, septic: bool) -> pd.DataFrame:
    nan = math.nan
    rows = [
        {
            "patient": patient,
            "ICULOS": h,
            "HR": 88 + (1.1 * h if septic else 0),
            "O2Sat": 96 - (h / 12 if septic else 0),
            "Temp": (38.3 if septic else 37.0) if h % 4 == 0 else nan,
            "SBP": 118 - (h / 2 if septic else 0),
            "DBP": 64,
            "MAP": 80 - (h / 4 if septic else 0),
            "Resp": 18 + (h / 5 if septic else 0),
            "Lactate": (2.0 + h / 15 if septic else 1.1) if h % 8 == 0 else nan,
            "WBC": (14.2 if septic else 8.1) if h % 12 == 0 else nan,
            "Creatinine": (1.6 if septic else 0.9) if h % 12 == 0 else nan,
            "Age": 71.4 if septic else 58.0,
            "Gender": 1 if septic else 0,
            "Unit1": 1,
            "Unit2": 0,
            "HospAdmTime": -12.5,
        }
        for h in range(1, hours + 1)
    ]
    return pd.DataFrame(rows)


def handmade_discharge() -> dict[str, object]:
    """A discharge in the Diabetes 130-US layout, for a checkout without the dataset: an older man
    with heart failure and two admissions in the past year, discharged to a nursing facility (the
    tests' hand-made row, with its own ids and no serum glucose)."""
    return discharge_row(
        encounter_id=990001, patient_nbr=770001, max_glu_serum="None", **{"glyburide-metformin": "No"}
    )


def demo_discharges(data_dir: Path, now: datetime) -> list[DemoPatient]:
    """Diabetes 130-US discharges (first stays of their patients, discharged alive and not to
    hospice, as the model's cohort): two readmitted within 30 days after earlier admissions, one
    not readmitted."""
    path = data_dir / "diabetes130" / "diabetic_data.csv.gz"
    chosen: list[tuple[str, dict[str, object]]] = []
    if path.exists():
        frame = read_diabetes130(path).drop_duplicates("patient_nbr")
        frame = frame[frame["discharge_disposition_id"].isin([1, 3, 6])]
        readmitted = frame[(frame["readmitted"] == "<30") & (frame["number_inpatient"] >= 2)].head(2)
        not_readmitted = frame[(frame["readmitted"] == "NO") & (frame["number_inpatient"] == 0)].head(1)
        for _, r in [*readmitted.iterrows(), *not_readmitted.iterrows()]:
            outcome = "readmitted within 30 days" if r["readmitted"] == "<30" else "not readmitted"
            label = f"Diabetes 130-US discharge {r['encounter_id']} ({outcome}), {r['time_in_hospital']} days"
            chosen.append((label, r.to_dict()))
    else:
        chosen.append(
            ("Hand-made discharge: heart failure, 2 admissions in the past year", handmade_discharge())
        )
    return [DemoPatient(label, discharge_to_fhir(row, discharged_at=now)) for label, row in chosen]


def demo_patients(data_dir: Path, now: datetime) -> list[DemoPatient]:
    frames: list[tuple[str, pd.DataFrame]] = []
    set_a = data_dir / "physionet2019" / "setA.parquet"
    if set_a.exists():
        table = pd.read_parquet(set_a)
        septic = table.groupby("patient")["SepsisLabel"].max()
        chosen = list(septic[septic == 1].index[:2]) + list(septic[septic == 0].index[:2])
        for pid in chosen:
            rows = table[table["patient"] == pid].sort_values("ICULOS").head(48)
            label = "sepsis later in the stay" if septic[pid] else "no sepsis"
            frames.append(
                (f"PhysioNet set A patient {pid} ({label}), ICU hour {int(rows['ICULOS'].max())}", rows)
            )
    frames += [
        ("Synthetic patient: worsening over 30 ICU hours", synthetic(900001, 30, True)),
        ("Synthetic patient: stable over 30 ICU hours", synthetic(900002, 30, False)),
    ]
    patients = []
    for label, rows in frames:
        hours = int(rows["ICULOS"].max())
        stay = stay_to_fhir(
            rows.drop(columns=["SepsisLabel"], errors="ignore"),
            icu_start=icu_start_for_hour(now, hours),
            up_to_hour=hours,
        )
        patients.append(DemoPatient(label, stay))
    return patients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("CDS_PORT", 8000)), help="our CDS server"
    )
    parser.add_argument("--ehr-port", type=int, default=8080, help="the demo EHR's web page")
    parser.add_argument("--var-dir", type=Path, default=ROOT / "var" / "demo")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CDS_DATA_DIR", ROOT / ".." / "shared" / "data"))
    )
    parser.add_argument("--once", action="store_true", help="start, print the URLs and stop (a smoke test)")
    args = parser.parse_args()
    started = time.monotonic()
    args.var_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    patients = demo_patients(args.data_dir, now) + demo_discharges(args.data_dir, now)
    fhir = DemoFhirServer(page_size=500)
    for patient in patients:
        fhir.add(patient.stay.all())
    servers = [fhir_server := serve_in_thread(fhir.app())]
    launcher = None
    if (why := launcher_missing()) is None:
        launcher = start_launcher(fhir_server.url, args.var_dir / "launcher.log")
    else:
        print(f"note: {why}; cards are shown, the app cannot be launched", file=sys.stderr)
    fhir_base = (
        launcher.iss if launcher else fhir_server.url
    )  # what the EHR names as fhirServer (and SMART iss)
    identity = EhrIdentity(issuer="http://127.0.0.1/demo-ehr")
    servers.append(jwks := serve_in_thread(identity.app()))
    identity.jwks_url = f"{jwks.url}/.well-known/jwks.json"
    ehr_origin = f"http://127.0.0.1:{args.ehr_port}"
    cds_url = f"http://127.0.0.1:{args.port}"
    settings = Settings(
        port=args.port,
        public_url=cds_url,
        var_dir=args.var_dir,
        data_dir=args.data_dir,
        auth_issuers=(
            TrustedIssuer(iss=identity.issuer, jwks_url=identity.jwks_url, fhir_servers=(fhir_base,)),
        ),
        smart_ehrs=(SmartEhr(iss=launcher.iss, client_id="cds-explain", frame_origins=(ehr_origin,)),)
        if launcher
        else (),
    )
    servers.append(
        serve_in_thread(create_app(settings), port=args.port, **uvicorn_options(settings, in_process=True))
    )

    def launch(patient: DemoPatient, link_url: str) -> str | None:
        if launcher is None:
            return None
        code = launch_code(
            patient=patient.stay.patient_id,
            provider="demo-clinician",
            encounter=str(patient.stay.encounter["id"]),
        )
        return f"{link_url}&launch={code}&iss={launcher.iss}"

    web = demo_ehr_web(patients, cds_url=cds_url, identity=identity, fhir_server=fhir_base, launch=launch)
    servers.append(serve_in_thread(web, port=args.ehr_port))
    print(f"\nDemo EHR: {ehr_origin}/  (ready in {time.monotonic() - started:.1f} s)", flush=True)
    print(f"CDS service: {cds_url}/cds-services (JWT from the demo EHR only)", flush=True)
    if launcher:
        print(f"SMART authorization server (reference launcher): {launcher.url}", flush=True)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too stops the launcher (a node process) on the way out

    signal.signal(signal.SIGTERM, stop)
    try:
        while not args.once:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for server in reversed(servers):
            server.stop()
        if launcher:
            launcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
