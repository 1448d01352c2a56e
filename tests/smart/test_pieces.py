"""The SMART app's pieces on their own: where the card comes from, fhirUser forms, scopes for v1
and v2 EHRs, id_token checks against a real JWKS over loopback HTTP, settings validation, the
single-use launch store, the waterfall and its sums."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from cds import Settings
from cds.settings import SmartEhr
from cds.smart import card_from_context, relative_user
from cds.smart.errors import BadIdToken
from cds.smart.explain import card_view, waterfall_svg
from cds.smart.flows import Flow, FlowStore, RedisKV, Session, SessionStore, SharedKV, SqliteKV
from cds.smart.oauth import SmartConfiguration, TokenResponse, scopes_for, verify_id_token
from cds.smart.pages import _drivers_table, content_security_policy
from demo_ehr import serve_in_thread

CARD = "0b3f6c1e-8a4d-4f4e-9a51-2f7f7d2c1a10"
ISS = "https://ehr.example.org/fhir"


def test_the_card_comes_from_app_context_then_fhir_context_then_our_parameter() -> None:
    hint = "11111111-2222-4333-8444-555555555555"
    assert (
        card_from_context({"appContext": json.dumps({"cardUuid": CARD, "serviceId": "sepsis-risk"})}, hint)
        == CARD
    )
    assert card_from_context({"appContext": {"cardUuid": CARD.upper()}}, hint) == CARD
    assert (
        card_from_context(
            {"fhirContext": [{"reference": "Encounter/e1"}, {"reference": f"RiskAssessment/{CARD}"}]}, hint
        )
        == CARD
    )
    assert card_from_context({"fhirContext": [{"type": "RiskAssessment", "id": CARD}]}, None) == CARD
    assert card_from_context({"appContext": "not json, not a uuid"}, hint) == hint
    assert card_from_context({}, "../../etc/passwd") is None


def test_fhir_user_may_be_absolute_or_relative() -> None:
    assert relative_user("Practitioner/dr-1", ISS) == "Practitioner/dr-1"
    assert relative_user(f"{ISS}/Practitioner/dr-1", ISS) == "Practitioner/dr-1"
    assert relative_user("https://other.example/fhir/PractitionerRole/r9", ISS) == "PractitionerRole/r9"
    assert relative_user("Observation/o1", ISS) is None and relative_user(None, ISS) is None


def config(capabilities: tuple[str, ...] = (), scopes: tuple[str, ...] = ()) -> SmartConfiguration:
    return SmartConfiguration(
        ISS, f"{ISS}/authorize", f"{ISS}/token", None, frozenset(capabilities), frozenset(scopes), time.time()
    )


def test_minimal_scopes_in_v2_form_unless_the_ehr_offers_only_v1() -> None:
    v2 = "launch openid fhirUser patient/Patient.rs patient/Observation.rs patient/Encounter.rs"
    assert scopes_for(config(("permission-v1", "permission-v2")), ehr_launch=True) == v2
    assert scopes_for(config(("permission-v1",)), ehr_launch=True) == v2.replace(".rs", ".read")
    assert scopes_for(config(scopes=("patient/*.read", "launch")), ehr_launch=False).startswith(
        "launch/patient openid"
    )
    assert scopes_for(config(scopes=("patient/*.read",)), ehr_launch=False).endswith("patient/Encounter.read")
    assert scopes_for(config(), ehr_launch=True) == v2
    assert scopes_for(config(), ehr_launch=True, online_access=True) == v2 + " online_access"


@pytest.fixture(scope="module")
def ehr_key() -> Iterator[tuple[RSAKey, str]]:
    key = RSAKey.generate_key(2048, parameters={"kid": "ehr-1"})
    keys = {"keys": [{**key.as_dict(private=False), "alg": "RS256"}]}
    with serve_in_thread(Starlette(routes=[Route("/jwks", lambda r: JSONResponse(keys))])) as server:
        yield key, f"{server.url}/jwks"


def id_token(key: RSAKey, **claims: object) -> str:
    now = int(time.time())
    body = {
        "iss": ISS,
        "aud": "app",
        "exp": now + 300,
        "iat": now,
        "nonce": "n-1",
        "fhirUser": "Practitioner/dr-1",
        **claims,
    }
    return jwt.encode({"alg": "RS256", "kid": "ehr-1"}, {k: v for k, v in body.items() if v is not None}, key)


@pytest.mark.parametrize(
    "claims, ok",
    [
        ({}, True),
        ({"aud": "another-app"}, False),
        ({"iss": "https://impostor.example/fhir"}, False),
        ({"exp": int(time.time()) - 600}, False),
        ({"nonce": "from-another-launch"}, False),
        ({"nonce": None}, False),
    ],
    ids=["valid", "wrong-audience", "wrong-issuer", "expired", "wrong-nonce", "no-nonce"],
)
def test_id_token_checks(ehr_key: tuple[RSAKey, str], claims: dict, ok: bool) -> None:
    key, url = ehr_key
    ehr = SmartEhr(iss=ISS, client_id="app", jwks_url=url)

    async def check(token: str) -> dict:
        async with httpx.AsyncClient() as http:
            return await verify_id_token(http, ehr, config(), token, nonce="n-1", timeout_s=5)

    token = id_token(key, **claims)
    if ok:
        assert asyncio.run(check(token))["fhirUser"] == "Practitioner/dr-1"
    else:
        with pytest.raises(BadIdToken):
            asyncio.run(check(token))


def test_an_id_token_signed_by_another_key_is_refused(ehr_key: tuple[RSAKey, str]) -> None:
    forged = id_token(RSAKey.generate_key(2048, parameters={"kid": "ehr-1"}))
    ehr = SmartEhr(iss=ISS, client_id="app", jwks_url=ehr_key[1])

    async def check() -> None:
        async with httpx.AsyncClient() as http:
            await verify_id_token(http, ehr, config(), forged, nonce="n-1", timeout_s=5)

    with pytest.raises(BadIdToken, match="signature"):
        asyncio.run(check())


def test_smart_ehr_settings_are_validated_at_start(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="client_secret_basic needs client_secret"):
        SmartEhr(iss=ISS, client_id="a", client_auth="client_secret_basic")
    with pytest.raises(ValidationError, match="private_key_jwt needs"):
        SmartEhr(iss=ISS, client_id="a", client_auth="private_key_jwt")
    with pytest.raises(ValidationError, match="origins"):
        SmartEhr(iss=ISS, client_id="a", frame_origins=("https://ehr.example.org/path",))
    with pytest.raises(ValidationError, match="absolute"):
        SmartEhr(iss="ehr.example.org", client_id="a")
    raw = json.dumps([{"iss": ISS + "/", "client_id": "a", "frame_origins": ["https://ehr.example.org"]}])
    monkeypatch.setenv("CDS_SMART_EHRS", raw)
    settings = Settings(var_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    assert settings.smart_ehr(ISS) is not None and settings.smart_ehr("https://other.example/fhir") is None
    assert "hunter2" not in repr(
        SmartEhr(iss=ISS, client_id="a", client_auth="client_secret_basic", client_secret="hunter2")
    )


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_a_launch_state_is_single_use_expires_and_is_shared_by_workers(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two workers (two stores on one backend): a launch started by one is taken by the other, once."""
    if backend == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")

    async def run() -> None:
        def kv() -> SharedKV:
            if backend == "redis":
                return RedisKV(url, prefix=prefix, timeout_s=1.0)
            return SqliteKV(tmp_path / "smart.sqlite3")

        one, two = kv(), kv()
        worker_a, worker_b = FlowStore(one, ttl_s=60), FlowStore(two, ttl_s=60)
        flow = Flow(
            ISS, config(), "verifier", "nonce", "http://127.0.0.1/cb", ehr_launch=True, card_hint=None
        )
        state = await worker_a.start(flow)
        assert await worker_b.take(state + "x") == (None, "unknown")
        assert await worker_b.take(state) == (flow, "ok")
        assert await worker_a.take(state) == (None, "replayed")
        old = FlowStore(one, ttl_s=0.0)
        assert (await old.take(await old.start(flow)))[1] == "expired"
        assert await worker_a.use_code("c") and not await worker_b.use_code("c")
        # What the store holds: digests and ciphertext, never the PKCE verifier or a token.
        session = Session(
            ISS,
            config(),
            TokenResponse("AT-secret", None, "s", "RT-secret", None, {}),
            "p1",
            None,
            CARD,
            "Practitioner/dr-1",
        )
        sessions_a, sessions_b = SessionStore(one), SessionStore(two)
        handle = await sessions_a.open(session)
        seen = await sessions_b.get(handle)
        assert (
            seen is not None and seen.token.access_token == "AT-secret" and seen.user == "Practitioner/dr-1"
        )
        seen.recorded = "agreed"
        await sessions_b.save(seen)
        back = await sessions_a.get(handle)
        assert back is not None and back.recorded == "agreed"  # worker A sees worker B's change
        assert await sessions_a.get(handle + "x") is None
        if backend == "embedded":
            raw = (tmp_path / "smart.sqlite3").read_bytes() + (tmp_path / "smart.sqlite3-wal").read_bytes()
            assert b"AT-secret" not in raw and b"RT-secret" not in raw and b"verifier" not in raw
            assert handle.encode() not in raw and state.encode() not in raw
        for store in (one, two):
            await store.close()

    asyncio.run(run())


def test_frame_ancestors_name_only_the_configured_ehr_origins() -> None:
    csp = content_security_policy(["https://ehr.example.org"])
    assert "frame-ancestors 'self' https://ehr.example.org" in csp
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp


def risk_assessment() -> dict:
    ext = "http://cds-ml.org/fhir/StructureDefinition"
    parts = [
        ("Lactate__last", 0.8, 3.1),
        ("Lactate__delta_prev", 0.1, 0.4),
        ("HR__last", 0.3, 118.0),
        ("WBC__hours_since", -0.2, 20.0),
    ]
    return {
        "resourceType": "RiskAssessment",
        "id": CARD,
        "status": "final",
        "occurrenceDateTime": "2026-11-30T10:00:00+00:00",
        "subject": {"identifier": {"system": "x", "value": "pa-1"}},
        "method": {"coding": [{"system": "m", "code": "sepsis", "version": "2"}]},
        "prediction": [{"probabilityDecimal": 0.071, "qualitativeRisk": {"coding": [{"code": "high"}]}}],
        "extension": [
            {"url": f"{ext}/shap-base-value", "valueDecimal": -3.9},
            {"url": f"{ext}/icu-hour", "valueInteger": 30},
            *(
                {
                    "url": f"{ext}/shap-contribution",
                    "extension": [
                        {"url": "feature", "valueString": f},
                        {"url": "shap", "valueDecimal": s},
                        {"url": "value", "valueDecimal": v},
                    ],
                }
                for f, s, v in parts
            ),
            {"url": f"{ext}/shap-other", "valueDecimal": 0.05},
        ],
    }


def test_contributions_are_grouped_by_clinical_variable_and_still_add_up() -> None:
    labels = {
        "Lactate__last": ("Lactate", "mmol/L"),
        "HR__last": ("Heart rate", "/min"),
        "WBC__hours_since": ("WBC: hours since measured", "h"),
    }
    view = card_view(CARD, "sepsis-risk", risk_assessment(), labels)
    assert [d.label for d in view.drivers] == ["Lactate", "Heart rate", "WBC"]
    # WBC's latest value was not recorded with this (older) record: the page says that, not "see below".
    assert not view.drivers[2].value_known and view.drivers[2].measured
    table = _drivers_table(view)
    assert "measured 20 h ago; latest value not recorded with this card" in table
    assert "see the exact contributions" not in table and "3.1 mmol/L" in table
    assert (
        view.drivers[0].shap == pytest.approx(0.9)
        and view.drivers[0].value == 3.1
        and view.drivers[0].unit == "mmol/L"
    )
    assert view.margin == pytest.approx(-3.9 + 0.8 + 0.1 + 0.3 - 0.2 + 0.05)
    svg = waterfall_svg(view).decode()
    assert svg.lstrip().startswith("<?xml") and "Lactate" in svg and "Heart rate" in svg
