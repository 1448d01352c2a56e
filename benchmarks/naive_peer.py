#!/usr/bin/env python
"""The naive peer of benchmarks/bench_hook.py: the sepsis hook as a first FastAPI version would
write it, to measure ours against in the same run (issue 18).

Per call: the body parsed by Starlette (`await request.json()`, the standard library), the EHR's
ES384 JWT verified with joserfc against the JWKS fetched once at start (`iss`, `aud`, `exp`),
every prefetch resource validated with fhir.resources, the latest value of each variable by a
plain loop over the Observations (LOINC codes from our code table, no units, no windows: every
other feature missing), the same XGBoost model, a cached `shap.TreeExplainer`, the card and a
RiskAssessment validated with fhir.resources, JSONResponse. Nothing is recorded. Loopback only;
a benchmark tool, not part of the product. Usage (bench_hook.py starts it):
    .venv/bin/python -m benchmarks.naive_peer --port 8123 --jwks-url URL --issuer ISS --aud URL
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from datetime import UTC, datetime

import httpx
import numpy as np
import shap
import uvicorn
import xgboost as xgb
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.riskassessment import RiskAssessment
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_mappings import default_code_table, sepsis_feature_spec
from models import ModelRegistry

SERVICE = "/cds-services/sepsis-risk"


def create_app(*, jwks_url: str, issuer: str, aud: str) -> FastAPI:
    spec = sepsis_feature_spec()
    artifact = ModelRegistry().load("sepsis", spec)
    booster = artifact.booster
    booster.set_param({"nthread": 1})
    explainer = shap.TreeExplainer(booster)  # built once: the "cached" explainer
    keys = KeySet.import_key_set(httpx.get(jwks_url, timeout=5).json())
    loinc = {}
    for row in default_code_table().rows:
        if row.system == "http://loinc.org":
            loinc.setdefault(row.code, row.variable)
    last_column = {f.variable: j for j, f in enumerate(spec.features) if f.op == "last"}
    static_column = {f.variable: j for j, f in enumerate(spec.features) if f.op == "static"}
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(SERVICE)
    async def sepsis(request: Request) -> JSONResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, keys, algorithms=["ES384"]).claims
        except Exception as exc:  # noqa: BLE001 - any bad token is a 401 here
            raise HTTPException(401) from exc
        if claims.get("iss") != issuer or claims.get("aud") != aud or claims.get("exp", 0) < time.time():
            raise HTTPException(401)
        body = await request.json()
        observations = []
        for value in (body.get("prefetch") or {}).values():
            resources = (
                [e["resource"] for e in value.get("entry", [])]
                if value.get("resourceType") == "Bundle"
                else [value]
            )
            for resource in resources:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
                if resource["resourceType"] == "Observation":
                    observations.append(resource)
        latest: dict[str, tuple[str, float]] = {}
        for obs in observations:
            for coding in obs.get("code", {}).get("coding", []):
                variable = loinc.get(coding.get("code"))
                quantity = obs.get("valueQuantity")
                if variable and quantity and "value" in quantity:
                    when = obs.get("effectiveDateTime", "")
                    if variable not in latest or when >= latest[variable][0]:
                        latest[variable] = (when, float(quantity["value"]))
        row = np.full((1, len(spec)), np.nan, dtype=np.float32)
        for variable, (_, value) in latest.items():
            if variable in last_column:
                row[0, last_column[variable]] = value
        patient = body["prefetch"].get("patient") or {}
        if patient.get("birthDate") and "Age" in static_column:
            row[0, static_column["Age"]] = datetime.now(UTC).year - int(patient["birthDate"][:4])
        margin = float(booster.predict(xgb.DMatrix(row, missing=np.nan), output_margin=True)[0])
        probability = 1 / (1 + math.exp(-margin))
        values = explainer.shap_values(row)[0]
        top = sorted(range(len(spec)), key=lambda j: -abs(values[j]))[:5]
        card_uuid = str(uuid.uuid4())
        risk = {
            "resourceType": "RiskAssessment",
            "id": card_uuid,
            "status": "final",
            "subject": {"reference": f"Patient/{body['context']['patientId']}"},
            "occurrenceDateTime": datetime.now(UTC).isoformat(),
            "prediction": [{"probabilityDecimal": probability}],
            "extension": [
                {"url": f"urn:shap:{spec.names[j]}", "valueDecimal": round(float(values[j]), 6)} for j in top
            ],
        }
        RiskAssessment.model_validate(risk)
        card = {
            "uuid": card_uuid,
            "summary": f"Sepsis risk {probability:.0%}",
            "indicator": "warning" if probability > 0.1 else "info",
            "source": {"label": "Sepsis risk (naive)"},
            "detail": "\n".join(f"- {spec.names[j]}: {values[j]:+.2f}" for j in top),
        }
        return JSONResponse({"cards": [card]})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--aud", required=True)
    args = parser.parse_args()
    app = create_app(jwks_url=args.jwks_url, issuer=args.issuer, aud=args.aud)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
